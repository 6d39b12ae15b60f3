"""``--config FILE``: a TOML file holding the settings of a scheduled job.

Why: the nightly command line should be ``dicomsafe archive --config /etc/dicomsafe/nightly.toml``
— no paths of secrets in crontabs or shell history, one reviewed file per job.

Layout: top-level keys apply to every command; an ``[archive]``, ``[export]`` or
``[deidentify]`` table overrides them for that command. Options given on the command line win
over the file. Relative paths are resolved against the config file's directory. Every error is
a :class:`~dicomsafe.errors.ConfigError` naming ``file:line``.

```toml
source = "/srv/pacs-export"
destination = "/srv/archive"
recipients_file = "recipients.txt"
secret_file = "pseudonym.secret"
jobs = 2
format = "aes"
retention_days = 90          # superseded archive object versions older than this are removed

[export]
profile = "research-export"
```
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

COMMANDS = ("archive", "export", "deidentify")

#: key → (type, is_path). Types are checked; paths are resolved against the file's directory.
KEYS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "source": (str, True),
    "destination": (str, True),
    "recipients_file": (str, True),
    "recipients": (list, False),
    "profile": (str, False),
    "options": (list, False),
    "secret_file": (str, True),
    "jobs": (int, False),
    "executor": (str, False),
    "scheduler": (str, False),
    "quarantine": (str, True),
    "report": (str, True),
    "audit_log": (str, True),
    "format": (str, False),
    "retention_days": (int, False),
    "deidentify": (bool, False),
    "quiet": (bool, False),
}

_TYPE_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list of strings"}
_ENUMS = {"format": ("age", "aes"), "executor": ("local", "dask")}


@dataclass(frozen=True)
class Config:
    """The effective settings of one command, from one file."""

    path: Path
    values: dict[str, Any]

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)


def _line_of(text: str, key: str, table: str | None) -> int | None:
    """Best-effort line number of ``key`` (inside ``[table]`` when given); tomllib has none."""
    current: str | None = None
    pat = re.compile(r"^\s*(?:\"?)" + re.escape(key) + r"(?:\"?)\s*=")
    for i, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s*\[\s*([^\]]+?)\s*\]", line)
        if m:
            current = m.group(1).strip('"')
            continue
        if current == table and pat.match(line):
            return i
    if table is not None:
        for i, line in enumerate(text.splitlines(), 1):
            if re.match(r"^\s*\[\s*" + re.escape(table) + r"\s*\]", line):
                return i
    return None


def _err(path: Path, line: int | None, msg: str) -> ConfigError:
    where = f"{path.name}:{line}" if line else path.name
    return ConfigError(f"{where}: {msg}")


def _check(path: Path, text: str, table: str | None, raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if table is None and key in COMMANDS and isinstance(value, dict):
            continue
        line = _line_of(text, key, table)
        if key not in KEYS:
            known = ", ".join(sorted(KEYS))
            raise _err(path, line, f"unknown setting {key!r} (known: {known})")
        typ, is_path = KEYS[key]
        if isinstance(value, bool) and typ is int or not isinstance(value, typ):
            want = _TYPE_NAMES.get(typ, str(typ))
            raise _err(path, line, f"{key} must be {want}")
        if key in _ENUMS and value not in _ENUMS[key]:
            raise _err(path, line, f"{key} must be one of {', '.join(_ENUMS[key])}")
        if key in ("jobs",) and value < 1:
            raise _err(path, line, "jobs must be at least 1")
        if key == "retention_days" and value < 0:
            raise _err(path, line, "retention_days must be 0 (keep forever) or more")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise _err(path, line, f"{key} must be a list of strings")
        if is_path:
            value = str((path.parent / os.path.expanduser(value)).resolve()) if value else value
        out[key] = value
    return out


def load_config(path: str | os.PathLike[str], command: str) -> Config:
    """Read ``path`` and return the settings for ``command`` (top level + its table)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p.name}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p.name}: cannot read config file ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        msg = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(exc))
        line = int(m.group(1)) if m else max(1, len(text.splitlines()))
        raise _err(p, line, f"not valid TOML: {msg}") from None
    for key, value in raw.items():
        if isinstance(value, dict) and key not in COMMANDS:
            raise _err(p, _line_of(text, key, None) or _find_table(text, key), f"unknown table [{key}]")
    values = _check(p, text, None, raw)
    if command in raw:
        values.update(_check(p, text, command, raw[command]))
    return Config(p, values)


def _find_table(text: str, name: str) -> int | None:
    for i, line in enumerate(text.splitlines(), 1):
        if re.match(r"^\s*\[\s*" + re.escape(name) + r"\s*\]", line):
            return i
    return None


def merge(config: Config | None, cli: Mapping[str, Any]) -> dict[str, Any]:
    """Command-line values (not None, not empty) win over the file's."""
    merged: dict[str, Any] = dict(config.values) if config else {}
    for key, value in cli.items():
        if value is None or value == () or value == []:
            merged.setdefault(key, None if value is None else value)
            continue
        merged[key] = value
    return merged
