"""The ``tiercache`` command: mount, unmount, flush, stats (and the control commands built on them).

The subcommands live by job in cli_mount.py (mount, flush, unmount), cli_control.py (stats, warm, evict, pin,
unpin, plan) and cli_profiles.py (profile, listing); cli_registry.py holds ``@command`` and the parser, and
cli_format.py the stats table. Every user error is one line on stderr (``tiercache: error: ...``) and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys

from .cli_format import format_stats
from .cli_registry import EXIT_ERROR, EXIT_USAGE, Runner, build_parser, command, fail
from .errors import TiercacheError
from .mount_command import split_ssd

# importing the command modules registers their subcommands, in this order (the order of --help)
from . import cli_mount, cli_control, cli_profiles  # noqa: E402, F401, I001  # isort: skip

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "Runner", "build_parser", "command", "format_stats", "main"]


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except TiercacheError as exc:
        return fail(str(exc))
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return fail(f"{exc.strerror or exc}{where}")
    except KeyboardInterrupt:
        sys.stderr.write("tiercache: interrupted\n")
        return 130


_split_ssd = split_ssd  # tests and older callers

if __name__ == "__main__":
    sys.exit(main())
