"""Where a mount's options come from, lowest to highest precedence:

    1. built-in defaults (``MountSpec``'s);
    2. the config file: ``$TIERCACHE_CONFIG``, else ``$XDG_CONFIG_HOME/tiercache/config.toml``
       (``~/.config/tiercache/config.toml``), else ``/etc/tiercache/config.toml`` — the first that exists;
       its top-level keys apply to every mount, a ``[source."s3://bucket/prefix"]`` table to that source only;
    3. ``TIERCACHE_*`` environment variables (``TIERCACHE_RAM=8G``, ``TIERCACHE_SSD_SIZE=500G``, ...);
    4. command-line flags (``tiercache mount --ram 8G``), or the ``-o`` options of ``mount.tiercache`` / fstab.

Option names are MountSpec's fields (``ram``, ``ssd``, ``ssd_size``, ``write_dir``, ``mode``, ``endpoint_url``,
``block_size``, ``metadata_ttl``, ``threads``, ``write_limit``, ``allow_other``, ``nonempty``, ``log_level``,
``drain_timeout``, ``metrics_port``, ...); ``-`` and ``_`` are the same. Every bad value or unknown name is one
ConfigError naming where it came from.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

ENV_PREFIX = "TIERCACHE_"
_NOT_OPTIONS = {"source", "mountpoint"}
# mount(8) / fstab options that concern mount(8) itself or generic VFS flags, not tiercache: accepted, unused
IGNORED = {"defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group", "nofail", "_netdev", "rw",
           "suid", "nosuid", "dev", "nodev", "exec", "noexec", "async", "sync", "atime", "noatime", "relatime",
           "norelatime", "strictatime", "lazytime", "nodiratime", "diratime", "silent", "loud"}
IGNORED_PREFIXES = ("x-", "comment=", "fsname=", "subtype=", "helper=")


def option_types() -> dict[str, str]:
    """Option name → "bool" | "int" | "float" | "str" (from MountSpec's fields)."""
    from .fuse.mount import MountSpec

    out = {}
    for f in fields(MountSpec):
        if f.name in _NOT_OPTIONS:
            continue
        kind = str(f.type).replace("| None", "").strip()
        out[f.name] = kind if kind in ("bool", "int", "float") else "str"
    return out


def option_defaults() -> dict[str, Any]:
    """MountSpec's built-in defaults."""
    from .fuse.mount import MountSpec

    return {f.name: f.default for f in fields(MountSpec) if f.name not in _NOT_OPTIONS and f.default is not MISSING}


def convert(name: str, value: Any, where: str) -> Any:
    """``value`` as option ``name``'s type; ConfigError naming ``where`` for an unknown name or a bad value."""
    key = name.strip().replace("-", "_").lower()
    types = option_types()
    if key not in types:
        raise ConfigError(f"{where}: unknown option {name!r} (known: {', '.join(sorted(types))})")
    kind = types[key]
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on", ""):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: {name}={value!r} is not true or false")
    if kind in ("int", "float"):
        try:
            number = int(value) if kind == "int" else float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {name}={value!r} is not a number") from None
        return number
    if isinstance(value, bool | dict | list):
        raise ConfigError(f"{where}: {name}={value!r} is not a value (a size, a path, a word)")
    return str(value)


def config_file_path(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The config file in force (see the module docstring), or None."""
    explicit = environ.get(ENV_PREFIX + "CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"{ENV_PREFIX}CONFIG={explicit}: no such file")
        return path
    xdg = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    for path in (Path(xdg).expanduser() / "tiercache" / "config.toml", Path("/etc/tiercache/config.toml")):
        if path.is_file():
            return path
    return None


def file_options(source: str, path: Path | None) -> dict[str, Any]:
    """The config file's options for ``source``: top-level keys, then its ``[source."URL"]`` table."""
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path}: not valid TOML ({exc})") from None
    where = f"config file {path}"
    sources = data.pop("source", {})
    if not isinstance(sources, dict):
        raise ConfigError(f"{where}: 'source' must be a table of [source.\"s3://bucket/prefix\"] sections")
    out = {k.replace("-", "_"): convert(k, v, where) for k, v in data.items()}
    section = sources.get(source) or sources.get(source.rstrip("/")) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: [source.{source!r}] must be a table")
    out.update({k.replace("-", "_"): convert(k, v, f"{where} [source.{source!r}]") for k, v in section.items()})
    return out


def env_options(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Options from ``TIERCACHE_<NAME>`` variables (names of options only; TIERCACHE_HOME etc. are not)."""
    types = option_types()
    out = {}
    for var, value in environ.items():
        if var.startswith(ENV_PREFIX):
            name = var[len(ENV_PREFIX):].lower()
            if name in types:
                out[name] = convert(name, value, f"environment {var}")
    return out


def parse_option_string(text: str, sloppy: bool = False) -> dict[str, Any]:
    """``-o`` options as mount(8) and fstab give them: ``ram=8G,ssd=/nvme/cache,ro,allow_other,_netdev``.

    ``ro`` means ``mode=readonly``; mount(8)'s own options (``defaults``, ``nofail``, ``_netdev``, ``x-*``, ...)
    are accepted and ignored; an unknown one is a ConfigError (ignored too when ``sloppy``, mount -s).
    """
    out: dict[str, Any] = {}
    for item in _split_commas(text):
        item = item.strip()
        if not item or item in IGNORED or item.startswith(IGNORED_PREFIXES):
            continue
        if item == "ro":
            out["mode"] = "readonly"
            continue
        name, sep, value = item.partition("=")
        try:
            out[name.strip().replace("-", "_").lower()] = convert(name, value if sep else True, "mount option")
        except ConfigError:
            if not sloppy:
                raise
    return out


def _split_commas(text: str) -> list[str]:
    r"""Split on commas not escaped with a backslash (``\,`` keeps a comma inside a value)."""
    parts, current, escaped = [], [], False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def resolve(source: str, flags: Mapping[str, Any], environ: Mapping[str, str] = os.environ,
            defaults: bool = True) -> dict[str, Any]:
    """Every option for a mount of ``source``: defaults < config file < environment < ``flags`` (the ones given;
    None values are "not given"). ``defaults=False``: only the options given somewhere."""
    options = option_defaults() if defaults else {}
    options.update(file_options(source, config_file_path(environ)))
    options.update(env_options(environ))
    options.update({k: v for k, v in flags.items() if v is not None})
    return options
