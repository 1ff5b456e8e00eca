"""``tiercache profile`` (record the files a run reads, for ``warm --from-profile``) and ``tiercache listing``
(export a bucket listing once, for ``mount --listing``): subcommands of the ``tiercache`` command."""

from __future__ import annotations

import argparse
import os
import sys

from .cli_registry import command, mount_of
from .errors import ConfigError


def _profile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("start", "save", "stop", "status"),
                   help="start recording; save FILE (and go on, or --stop); stop (discard); status")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("file", metavar="FILE", nargs="?", help="where save writes the profile")
    p.add_argument("--stop", action="store_true", help="with save: stop recording too")


@command("profile", "record which files a run reads, in order, for warm --from-profile elsewhere", _profile_args)
def cmd_profile(args: argparse.Namespace) -> int:
    from .profiles import write_profile

    if args.action == "save" and not args.file:
        raise ConfigError("profile save MOUNTPOINT FILE: name the file to write")
    if args.action != "save" and args.file:
        raise ConfigError(f"profile {args.action} takes no FILE")
    mount = mount_of(args.mountpoint)
    reply = mount.client().request("profile", action=args.action, stop=args.stop)
    if args.action == "start":
        sys.stderr.write(f"tiercache: recording the files read in {mount.mountpoint} "
                         f"(save with: tiercache profile save {mount.mountpoint} FILE)\n")
    elif args.action == "save":
        write_profile(args.file, reply["paths"], reply.get("source") or "")
        still = "stopped" if not reply.get("recording") else "still recording"
        sys.stderr.write(f"tiercache: profile of {len(reply['paths']):,} file(s) ({reply['reads']:,} reads) "
                         f"written to {args.file}; {still}\n")
    elif args.action == "stop":
        sys.stderr.write(f"tiercache: stopped recording in {mount.mountpoint} "
                         f"({len(reply.get('paths') or []):,} file(s) read, not saved)\n")
    else:
        state = f"recording, {reply['reads']:,} reads so far" if reply.get("recording") else "not recording"
        sys.stdout.write(f"{mount.mountpoint}: {state}\n")
    return 0


def _listing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("export",), help="export: LIST SOURCE once and write FILE")
    p.add_argument("source", metavar="SOURCE", help="s3://BUCKET[/PREFIX] or file:///DIR")
    p.add_argument("file", metavar="FILE", help="the listing file (gzip'd JSON lines)")
    p.add_argument("--endpoint-url", metavar="URL", help="S3-compatible endpoint URL")


@command("listing", "export a bucket listing once, so that mounts start from it (mount --listing) without a LIST",
         _listing_args)
def cmd_listing(args: argparse.Namespace) -> int:
    from .listing import export_listing
    from .store import open_store

    store = open_store(args.source, args.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None)
    try:
        store.check()
        count = export_listing(store, args.source, args.file)
    finally:
        store.close()
    sys.stderr.write(f"tiercache: listing of {args.source}: {count:,} object(s) written to {args.file}\n")
    return 0
