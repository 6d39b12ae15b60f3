"""batchrun.Committer: units are fsynced and committed on their own thread, in order, and a
failure stops committing and reaches the coordinator."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from dicomsafe.batchrun import Committer
from dicomsafe.deidentify import FileResult
from dicomsafe.errors import OutputError
from dicomsafe.executors import UnitFailure


def _unit(tmp_path: Path, name: str, n: int = 3, missing: bool = False) -> list:
    results = []
    for i in range(n):
        staged = tmp_path / f"{name}-{i}.dcm"
        if not missing:
            staged.write_bytes(b"x" * 1000)
        results.append((FileResult(file_id=f"{name}-{i}", outcome="written", staged=str(staged)), "d", 1000))
    return results


def test_units_are_committed_in_the_order_given_on_another_thread(tmp_path):
    seen: list[tuple[str, str, bool]] = []

    def commit(job, results):
        seen.append((job, threading.current_thread().name, all(Path(r.staged).exists() for r, _, _ in results)))

    c = Committer(commit, sync=True, depth=2)
    for i in range(10):
        c.put(f"u{i}", _unit(tmp_path, f"u{i}"))
    c.close()
    assert [job for job, _, _ in seen] == [f"u{i}" for i in range(10)]
    assert {thread for _, thread, _ in seen} == {"dicomsafe-committer"}
    assert all(ok for _, _, ok in seen)


def test_a_unit_that_cannot_be_synced_is_not_committed_nor_anything_after_it(tmp_path):
    seen: list[str] = []
    c = Committer(lambda job, results: seen.append(job), sync=True)
    c.put("first", _unit(tmp_path, "a"))
    c.put("unsynced", _unit(tmp_path, "b", missing=True))  # fsync cannot open the staged file
    c.put("after", _unit(tmp_path, "c"))
    with pytest.raises(OutputError, match="cannot flush staged outputs"):
        c.close()
    assert seen == ["first"]
    with pytest.raises(OutputError):  # raised again to whoever asks: the run must not go on
        c.put("later", _unit(tmp_path, "d"))


def test_a_failed_commit_is_raised_and_stops_later_commits(tmp_path):
    seen: list[str] = []

    def commit(job, results):
        if job == "bad":
            raise OutputError("cannot commit output file (No space left on device)")
        seen.append(job)

    c = Committer(commit, sync=False)
    for job in ("one", "bad", "two", "three"):
        try:
            c.put(job, _unit(tmp_path, job))
        except OutputError:
            break  # the coordinator stops at the first put that reports it
    with pytest.raises(OutputError, match="No space left"):
        c.close()
    assert seen == ["one"]
    c.close(raise_error=False)  # what a finally clause calls: no second raise, no hang


def test_failed_units_are_committed_without_syncing(tmp_path):
    seen: list[object] = []
    c = Committer(lambda job, results: seen.append(results), sync=True)
    c.put("failed", UnitFailure("ValueError"))
    c.close()
    assert seen == [UnitFailure("ValueError")]
