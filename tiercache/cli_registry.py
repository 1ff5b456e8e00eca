"""The ``tiercache`` command's registry: ``@command`` subcommands, the argument parser, one-line errors.

Each subcommand is two small functions registered with ``@command``: one adds its arguments, one runs it.
The command modules (cli_mount, cli_control, cli_profiles) register here; ``tiercache.cli.main`` runs them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from . import __version__
from .errors import ConfigError
from .mounts import Mount, find_mount

EXIT_ERROR = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"tiercache: error: {message} (see: {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


Runner = Callable[[argparse.Namespace], int | None]
_COMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Runner]] = []


def command(
    name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]
) -> Callable[[Runner], Runner]:
    """Register a subcommand: ``arguments(parser)`` declares its options, the decorated function runs it."""

    def register(run: Runner) -> Runner:
        _COMMANDS.append((name, help, arguments, run))
        return run

    return register


def build_parser() -> argparse.ArgumentParser:
    """The full parser with every registered subcommand."""
    parser = _Parser(prog="tiercache", description="Tiered RAM/SSD/write cache for training data in S3.")
    parser.add_argument("--version", action="version", version=f"tiercache {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, help_text, arguments, run in _COMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text)
        arguments(p)
        p.set_defaults(run=run)
    return parser


def fail(message: str) -> int:
    """Write ``message`` as one ``tiercache: error:`` line on stderr; the exit status of a failure."""
    sys.stderr.write(f"tiercache: error: {' '.join(message.split())}\n")
    return EXIT_ERROR


def mount_of(path: str) -> Mount:
    """The tiercache mount at or above ``path``, or one clear error."""
    if not os.path.lexists(path):
        raise ConfigError(f"{path}: no such file or directory")
    mount = find_mount(path)
    if mount is None:
        raise ConfigError(f"{path} is not inside a tiercache mount")
    return mount
