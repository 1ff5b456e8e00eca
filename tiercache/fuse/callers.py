"""Who makes the current FUSE request: the process (thread group) behind it, and whether it is being killed
by a signal. The write tier tells the writer's own close(2) from a forked or exec'd child's by the first, and
publishes nothing for a writer that was killed before it closed its file by the second."""

from __future__ import annotations

from .calls import fuse


def _request_pid() -> int:
    return int(fuse.fuse_get_context()[2])


def caller() -> int | None:
    """The thread group id (process id) of the current request's sender; None if unknown (another pid
    namespace)."""
    pid = _request_pid()
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return pid


def caller_killed() -> bool:
    """True if the current request's sender is exiting because of a signal (SIGKILL, an unhandled SIGTERM,
    a crash): the kernel closes its files for it, the program did not."""
    pid = _request_pid()
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        flags, exit_code = int(fields[6]), int(fields[49])  # fields 9 (flags) and 52 (exit_code) of proc(5)
    except (OSError, ValueError, IndexError):
        return False
    return bool(flags & _PF_EXITING) and bool(exit_code & 0x7F)


_PF_EXITING = 0x00000004
