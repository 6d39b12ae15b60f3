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


def test_the_source_file_list_is_let_go_once_units_are_handed_out(tmp_path, monkeypatch):
    """A run must not keep every input's SourceFile to its end (memory grew with file count):
    while the units run, none of the planned SourceFile objects is alive any more."""
    import gc
    import weakref

    import dicomsafe.batchrun as br
    import dicomsafe.pipeline as pl
    from batch_corpus import SECRET
    from dicomsafe.corpus import build_ct_series
    from dicomsafe.pipeline import RunSettings
    from dicomsafe.profiles import load_profile

    build_ct_series(tmp_path / "src", 6, rows=16, cols=16, patients=2)
    refs: list = []
    plan = pl.plan_units

    def recording_plan(src):
        units, others = plan(src)
        refs.extend(weakref.ref(sf) for u in units for sf in u.files)
        return units, others

    alive: list[int] = []
    unit_fn = br.deid_unit

    def checking_unit(job, ctx):
        gc.collect()
        alive.append(sum(r() is not None for r in refs))
        return unit_fn(job, ctx)

    monkeypatch.setattr(pl, "plan_units", recording_plan)
    monkeypatch.setattr(br, "deid_unit", checking_unit)
    rep = br.run_deidentify(RunSettings(src=tmp_path / "src", dst=tmp_path / "dst", profile=load_profile("basic"),
                                        secret=SECRET, quarantine=tmp_path / "q", quiet=True), jobs=1)
    assert rep.counts["written"] == 6
    assert len(refs) == 6 and alive and set(alive) == {0}
