"""Making a mount from the command line: ``tiercache mount`` and the ``mount.tiercache`` helper that lets
mount(8) and /etc/fstab mount tiercache like any filesystem::

    mount -t fuse.tiercache s3://bucket/prefix /mnt/data -o ram=8G,ssd=/nvme/cache
    # /etc/fstab
    s3://bucket/prefix  /mnt/data  fuse.tiercache  _netdev,nofail,ram=8G,ssd=/nvme/cache  0 0

mount(8) runs ``/sbin/mount.fuse.tiercache SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`` for type fuse.tiercache:
link it to this helper once (``ln -s "$(command -v mount.tiercache)" /sbin/mount.fuse.tiercache``). Options are
layered as ``mount_options`` says (defaults < config file < TIERCACHE_* < flags or -o); the RAM tier is then
sized to ``--memory-target`` or the cgroup memory limit (``memory``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .config import parse_size
from .errors import ConfigError, TiercacheError
from .memory import cgroup_memory_limit, size_ram
from .mount_options import parse_option_string, resolve


def split_ssd(ssd: str | None, ssd_size: str | None) -> tuple[str | None, str | None]:
    """``--ssd DIR:SIZE`` → (DIR, SIZE) when the part after the last colon is a size."""
    if ssd and ":" in ssd and ssd_size is None:
        head, _, tail = ssd.rpartition(":")
        try:
            parse_size(tail)
        except ConfigError:
            return ssd, ssd_size
        return head, tail
    return ssd, ssd_size


def build_spec(source: str, mountpoint: str, flags: dict[str, Any]) -> Any:
    """The MountSpec for ``source`` at ``mountpoint``: ``flags`` (given ones) over the environment, the config
    file and the defaults."""
    from .fuse.mount import MountSpec

    options = resolve(source, flags)
    options["ssd"], options["ssd_size"] = split_ssd(options.get("ssd"), options.get("ssd_size"))
    given = resolve(source, flags, defaults=False)
    ram, note = size_ram(given.get("ram"), options["ram"], options.get("memory_target"), options["threads"],
                         cgroup_memory_limit())
    if note or options.get("memory_target"):
        options["ram"] = str(ram)
    if note:
        sys.stderr.write(f"tiercache: {note}\n")
    return MountSpec(source=source, mountpoint=mountpoint, **options)


def run_mount(spec: Any, foreground: bool = False) -> int:
    """Mount ``spec``: in the background (returns once the mount is ready) or in this process until unmounted."""
    from .fuse.mount import MountDaemon, exit_now, setup_logging, start_daemon

    config = spec.config()
    if spec.metrics_port is not None:
        from .metrics import parse_listen

        parse_listen(spec.metrics_port)
    if foreground:
        setup_logging(Path(config.cache_dir) / "mount.log", spec.log_level, to_stderr=True)
        exit_now(MountDaemon(spec).run(lambda error: None))
    pid = start_daemon(spec)
    durable = "" if spec.write_dir or config.mode == "readonly" else " (write dir inside the cache dir)"
    sys.stderr.write(f"tiercache: mounted {config.source} at {spec.mountpoint} (pid {pid}, mode {config.mode}"
                     f"{durable}; log {config.cache_dir}/mount.log)\n")
    return 0


def helper_main(argv: list[str] | None = None) -> int:
    """``mount.tiercache SOURCE MOUNTPOINT [-o OPTIONS] [-s] [-f] [-n] [-v] [-t fuse.tiercache]`` (mount(8)'s
    helper convention): one-line errors, exit 0 once mounted."""
    parser = argparse.ArgumentParser(prog="mount.tiercache", description="mount(8) helper for tiercache")
    parser.add_argument("source")
    parser.add_argument("mountpoint")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS")
    parser.add_argument("-s", dest="sloppy", action="store_true", help="ignore unknown options")
    parser.add_argument("-f", dest="fake", action="store_true", help="check everything but do not mount")
    parser.add_argument("-n", dest="no_mtab", action="store_true", help="accepted (there is no mtab to write)")
    parser.add_argument("-v", dest="verbose", action="store_true")
    parser.add_argument("-t", dest="type", help="fuse.tiercache or tiercache")
    parser.add_argument("-N", dest="namespace", help="not supported")
    args = parser.parse_args(argv)
    try:
        if args.namespace:
            raise ConfigError("-N (mount namespaces) is not supported")
        if args.type and args.type not in ("fuse.tiercache", "tiercache"):
            raise ConfigError(f"-t {args.type}: this helper mounts fuse.tiercache")
        flags: dict[str, Any] = {}
        for text in args.options:
            flags.update(parse_option_string(text, sloppy=args.sloppy))
        spec = build_spec(args.source, args.mountpoint, flags)
        if args.verbose or args.fake:
            sys.stderr.write(f"mount.tiercache: {spec.source} at {spec.mountpoint}: {spec.to_json()}\n")
        if args.fake:
            spec.config()
            return 0
        return run_mount(spec)
    except TiercacheError as exc:
        sys.stderr.write(f"mount.tiercache: error: {' '.join(str(exc).split())}\n")
        return 32  # mount(8): mount failure
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        sys.stderr.write(f"mount.tiercache: error: {exc.strerror or exc}{where}\n")
        return 32


if __name__ == "__main__":
    sys.exit(helper_main())
