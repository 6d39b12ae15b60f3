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


# --- write-back and background writes (the encryption fast path) ----------------------------


def _chunks(n: int, size: int = 64 * 1024) -> list[bytes]:
    """Distinct chunks, so any reordering or loss changes the file."""
    return [i.to_bytes(4, "big") * (size // 4) for i in range(n)]


def test_atomic_writer_of_several_writeback_windows_keeps_every_byte(tmp_path):
    from dicomsafe.fsutil import WRITEBACK_WINDOW

    target = tmp_path / "big.bin"
    chunks = _chunks((3 * WRITEBACK_WINDOW) // (64 * 1024) + 5)
    with atomic_writer(target) as fh:
        for c in chunks:
            fh.write(c)
    assert target.read_bytes() == b"".join(chunks)


def test_background_writer_keeps_order_past_its_direct_start(tmp_path):
    from dicomsafe.fsutil import background_writes

    chunks = _chunks(200)  # 12.5 MiB: the first MiB direct, the rest through the thread
    target = tmp_path / "out.bin"
    with open(target, "wb") as fh, background_writes(fh) as out:
        for c in chunks:
            out.write(c)
    assert target.read_bytes() == b"".join(chunks)


def test_background_writer_hands_back_a_disk_full_error():
    """/dev/full fails every write with ENOSPC: the producer must see it, not lose it."""
    import errno
    import threading

    from dicomsafe.fsutil import background_writes

    before = threading.active_count()
    with pytest.raises(OSError) as info:
        with open("/dev/full", "wb", buffering=0) as fh, background_writes(fh, start_after=0) as out:
            for c in _chunks(100):
                out.write(c)
    assert info.value.errno == errno.ENOSPC
    assert threading.active_count() == before  # the writer thread is gone


def test_background_writer_stops_its_thread_when_the_producer_fails(tmp_path):
    import threading

    from dicomsafe.fsutil import background_writes

    before = threading.active_count()
    with pytest.raises(RuntimeError):
        with open(tmp_path / "x", "wb") as fh, background_writes(fh, start_after=0) as out:
            for c in _chunks(40):
                out.write(c)
            raise RuntimeError("producer failed")
    assert threading.active_count() == before


def test_atomic_writer_writes_into_a_fifo_and_leaves_it_a_fifo(tmp_path):
    """A named pipe (like /dev/null or a device) is written to, never renamed over."""
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    with atomic_writer(fifo) as fh:
        fh.write(b"through the pipe")
    reader.join(timeout=10)
    assert got == [b"through the pipe"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]


def test_atomic_writer_refuses_a_directory(tmp_path):
    from dicomsafe.errors import OutputError

    with pytest.raises(OutputError):
        with atomic_writer(tmp_path) as fh:
            fh.write(b"x")
