"""Atomic writes and secret-file permissions, on the real file system."""

import os
import stat

import pytest

from dicomsafe.errors import SecretFileError
from dicomsafe.fsutil import atomic_writer, read_secret_file, write_secret_file


def test_atomic_writer_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as fh:
            fh.write(b"partial")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_writer_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_writer(target) as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_secret_file_is_0600_and_not_overwritten(tmp_path):
    path = tmp_path / "secret"
    write_secret_file(path, b"x" * 32)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(SecretFileError):
        write_secret_file(path, b"y" * 32)
    assert read_secret_file(path) == b"x" * 32


def test_world_readable_secret_is_refused(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(b"k" * 32)
    os.chmod(path, 0o644)
    with pytest.raises(SecretFileError, match="group or others"):
        read_secret_file(path)


def test_lazy_command_map_matches_the_registered_commands():
    from dicomsafe.cli import COMMAND_MODULES, load_all_commands, main

    load_all_commands()
    assert {n: c.callback.__module__.rsplit(".", 1)[1] for n, c in main.commands.items()} == COMMAND_MODULES
