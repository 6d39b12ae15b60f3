"""--config TOML: effective settings per command, and errors that name file:line."""

from __future__ import annotations

import pytest

from dicomsafe.config import load_config, merge
from dicomsafe.errors import ConfigError

GOOD = """\
source = "src"
destination = "/abs/dst"
jobs = 2
secret_file = "keys/secret"

[archive]
format = "aes"
retention_days = 30

[export]
profile = "basic"
format = "age"
"""


def test_sections_override_top_level_and_paths_resolve(tmp_path):
    f = tmp_path / "nightly.toml"
    f.write_text(GOOD)
    a = load_config(f, "archive")
    assert a.get("format") == "aes" and a.get("retention_days") == 30 and a.get("jobs") == 2
    assert a.get("source") == str(tmp_path / "src")
    assert a.get("destination") == "/abs/dst"
    assert a.get("secret_file") == str(tmp_path / "keys" / "secret")
    assert a.get("profile") is None
    e = load_config(f, "export")
    assert e.get("format") == "age" and e.get("profile") == "basic" and e.get("retention_days") is None


def test_command_line_wins(tmp_path):
    f = tmp_path / "n.toml"
    f.write_text(GOOD)
    m = merge(load_config(f, "archive"), {"jobs": 4, "format": None, "recipients": ()})
    assert m["jobs"] == 4 and m["format"] == "aes" and m["recipients"] == ()


@pytest.mark.parametrize(
    "text, line, words",
    [
        ('jobs = "2"\n', 1, "integer"),
        ('source = "a"\n\nfoo = 1\n', 3, "unknown setting"),
        ('source = "a"\n[archive]\nformat = "zip"\n', 3, "one of"),
        ('source = "a"\nsource = "b"\n', 2, "TOML"),
        ('a = [\n', 1, "TOML"),
        ('jobs = 1\n[wat]\na = 1\n', 2, "unknown table"),
        ('jobs = true\n', 1, "integer"),
        ('jobs = 0\n', 1, "at least 1"),
        ('[archive]\nrecipients = ["age1x", 3]\n', 2, "list of strings"),
    ],
)
def test_errors_name_file_and_line(tmp_path, text, line, words):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_config(f, "archive")
    msg = str(ei.value)
    assert msg.startswith(f"bad.toml:{line}:"), msg
    assert words in msg


def test_missing_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", "archive")
