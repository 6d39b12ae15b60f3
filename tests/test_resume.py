"""Parallel, resumable de-identification: kill -9 then --resume equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batch_corpus import SECRET, build_tree, tree_bytes
from dicomsafe.batchrun import run_deidentify
from dicomsafe.errors import ConfigError, LockedError
from dicomsafe.lock import DestinationLock
from dicomsafe.pipeline import RunSettings
from dicomsafe.profiles import load_profile

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def _settings(src, dst, q, profile="basic"):
    return RunSettings(src=Path(src), dst=Path(dst), profile=load_profile(profile), secret=SECRET,
                       quarantine=Path(q), quiet=True)


RUNNER = """
import sys
from pathlib import Path
from dicomsafe.batchrun import run_deidentify
from dicomsafe.errors import Interrupted
from dicomsafe.pipeline import RunSettings
from dicomsafe.profiles import load_profile
if __name__ == "__main__":
    s = RunSettings(src=Path({src!r}), dst=Path({dst!r}), profile=load_profile("basic"),
                    secret=bytes(range(32)), quarantine=Path({q!r}), quiet=True)
    try:
        rep = run_deidentify(s, jobs={jobs!r}, resume={resume!r})
    except Interrupted:
        sys.exit(130)
    sys.exit(0)
"""


def _start(tmp_path, src, dst, q, resume=False, jobs=2):
    script = tmp_path / f"runner_{int(time.time() * 1e6)}.py"
    script.write_text(RUNNER.format(src=str(src), dst=str(dst), q=str(q), resume=resume, jobs=jobs))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _units_done(dst) -> int:
    db = dst / ".dicomsafe" / "ledger.sqlite"
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM units").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _wait_units(p, dst, n):
    while _units_done(dst) < n:
        assert p.poll() is None, p.stderr.read()
        time.sleep(0.05)


def _no_temp_files(dst: Path):
    leftovers = [p for p in dst.rglob("*") if p.name.endswith(".tmp") or "staging" in p.parts]
    assert leftovers == []


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    tree = build_tree(base / "src", patients=4, studies=6, files=10)  # 240 DICOM + 1 text file
    ref = base / "ref"
    rep = run_deidentify(_settings(base / "src", ref, base / "q-ref"), jobs=2)
    assert rep.counts == {"inputs": 241, "written": 240, "quarantined": 0, "skipped": 1}
    return base, tree, ref, json.loads((ref / ".dicomsafe" / "report.json").read_text())


@pytest.mark.parametrize("jobs", [1, 2])  # 1: the committer thread beside the only worker
def test_kill_9_then_resume_is_byte_identical(corpus, tmp_path, jobs):
    base, tree, ref, ref_report = corpus
    dst = tmp_path / "dst"
    p = _start(tmp_path, base / "src", dst, tmp_path / "q", jobs=jobs)
    _wait_units(p, dst, 4)
    os.killpg(p.pid, signal.SIGKILL)  # the whole job: coordinator and workers, like the OOM killer
    p.wait(timeout=60)
    done_before = _units_done(dst)
    assert 4 <= done_before < 24, "the kill must land in the middle of the run"
    before = {q: q.stat().st_ino for q in dst.rglob("*.dcm")}

    rep = run_deidentify(_settings(base / "src", dst, tmp_path / "q"), jobs=2, resume=True)

    assert tree_bytes(dst) == tree_bytes(ref)
    assert rep.counts == ref_report["counts"]
    got = json.loads((dst / ".dicomsafe" / "report.json").read_text())
    assert sorted((f["id"], f["outcome"]) for f in got["files"]) == \
        sorted((f["id"], f["outcome"]) for f in ref_report["files"])
    assert len(got["files"]) == 241
    _no_temp_files(dst)
    # units finished before the kill were skipped, not redone: same inode (never replaced)
    kept = [q for q, ino in before.items() if q.exists() and q.stat().st_ino == ino]
    assert len(kept) >= 10 * 4 - 10  # at least the recorded units' files (minus one in-flight unit)
    assert _units_done(dst) == 24


def test_resume_redoes_a_unit_whose_output_was_damaged(corpus, tmp_path):
    base, tree, ref, _ = corpus
    dst = tmp_path / "dst"
    run_deidentify(_settings(base / "src", dst, tmp_path / "q"), jobs=1)
    victim = sorted(dst.rglob("*.dcm"))[5]
    good = victim.read_bytes()
    victim.write_bytes(good[:-10] + b"0123456789")
    other = sorted(dst.rglob("*.dcm"))[-1]
    other_ino = other.stat().st_ino
    run_deidentify(_settings(base / "src", dst, tmp_path / "q"), jobs=1, resume=True)
    assert victim.read_bytes() == good
    assert other.stat().st_ino == other_ino or other.parent == victim.parent
    assert tree_bytes(dst) == tree_bytes(ref)


@pytest.mark.parametrize("jobs", [1, 2])
def test_sigterm_stops_with_130_and_resume_completes(corpus, tmp_path, jobs):
    base, tree, ref, ref_report = corpus
    dst = tmp_path / "dst"
    p = _start(tmp_path, base / "src", dst, tmp_path / "q", jobs=jobs)
    _wait_units(p, dst, 3)
    os.killpg(p.pid, signal.SIGTERM)  # like systemctl stop: every process of the job gets it
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    _no_temp_files(dst)
    audit_lines = (dst / ".dicomsafe" / "audit.jsonl").read_text().splitlines()
    assert json.loads(audit_lines[-1])["status"] == "interrupted"
    rep = run_deidentify(_settings(base / "src", dst, tmp_path / "q"), jobs=2, resume=True)
    assert tree_bytes(dst) == tree_bytes(ref)
    assert rep.counts == ref_report["counts"]


def test_second_run_on_same_destination_refuses(corpus, tmp_path):
    base, *_ = corpus
    dst = tmp_path / "dst"
    with DestinationLock(dst):
        with pytest.raises(LockedError, match="another dicomsafe run is using this destination"):
            run_deidentify(_settings(base / "src", dst, tmp_path / "q"), jobs=1)


def test_resume_with_other_profile_is_refused(corpus, tmp_path):
    base, *_ = corpus
    dst = tmp_path / "dst"
    run_deidentify(_settings(base / "src", dst, tmp_path / "q"), jobs=1)
    other = _settings(base / "src", dst, tmp_path / "q")
    other.profile = load_profile("basic", ("retain-patient-characteristics",))
    with pytest.raises(ConfigError, match="same profile"):
        run_deidentify(other, jobs=1, resume=True)


def test_dask_local_cluster_gives_the_same_tree(corpus, tmp_path):
    distributed = pytest.importorskip("distributed")
    base, tree, ref, ref_report = corpus
    dst = tmp_path / "dask"
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        rep = run_deidentify(_settings(base / "src", dst, tmp_path / "q"), executor="dask",
                             scheduler=cluster.scheduler_address)
    assert rep.counts == ref_report["counts"]
    assert tree_bytes(dst) == tree_bytes(ref)


def test_parallel_run_matches_the_single_process_pipeline_on_the_hostile_corpus(tmp_path):
    from dicomsafe.corpus import build_corpus
    from dicomsafe.pipeline import deidentify_tree

    build_corpus(tmp_path / "src", seed=2, patients=2)
    ref = deidentify_tree(_settings(tmp_path / "src", tmp_path / "ref", tmp_path / "q1"))
    par = run_deidentify(_settings(tmp_path / "src", tmp_path / "par", tmp_path / "q2"), jobs=2)
    assert par.counts == ref.counts and par.reasons == ref.reasons
    assert sorted((f["id"], f["outcome"], f["reason"]) for f in par.files) == \
        sorted((f["id"], f["outcome"], f["reason"]) for f in ref.files)
    assert tree_bytes(tmp_path / "par") == tree_bytes(tmp_path / "ref")
    # the operator-side quarantine holds the same files
    assert sorted(p.name for p in (tmp_path / "q1").iterdir()) == sorted(p.name for p in (tmp_path / "q2").iterdir())


def test_big_study_is_split_into_parts_and_resumes_per_part(tmp_path, monkeypatch):
    import dicomsafe.batchrun as br
    from batch_corpus import Tree, add_study
    from dicomsafe.pipeline import deidentify_tree

    monkeypatch.setattr(br, "UNIT_MAX_FILES", 4)
    tree = Tree(tmp_path / "src")
    add_study(tree, 0, 0, 10)
    ref = deidentify_tree(_settings(tmp_path / "src", tmp_path / "ref", tmp_path / "q1"))
    dst = tmp_path / "dst"
    rep = run_deidentify(_settings(tmp_path / "src", dst, tmp_path / "q2"), jobs=2)
    assert rep.counts == ref.counts
    assert tree_bytes(dst) == tree_bytes(tmp_path / "ref")
    db = sqlite3.connect(dst / ".dicomsafe" / "ledger.sqlite")
    keys = sorted(r[0] for r in db.execute("SELECT unit FROM units"))
    db.close()
    assert len(keys) == 3 and [k[-5:] for k in keys] == ["-0000", "-0001", "-0002"]
    outs = sorted(p for p in dst.rglob("*.dcm"))
    victim = outs[0]
    victim.unlink()
    inodes = {p: p.stat().st_ino for p in outs[1:]}
    run_deidentify(_settings(tmp_path / "src", dst, tmp_path / "q2"), jobs=1, resume=True)
    assert tree_bytes(dst) == tree_bytes(tmp_path / "ref")
    same = sum(1 for p, ino in inodes.items() if p.stat().st_ino == ino)
    assert 10 - 1 - 4 <= same < 9  # only the damaged part (≤ 4 files) was redone


def _fsize_100k():
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


def test_disk_full_stops_the_run_and_resume_completes(tmp_path):
    from dicomsafe.corpus import build_ct_series

    build_ct_series(tmp_path / "src", 12, rows=256, cols=256, patients=3)  # ~130 KB files
    ref = tmp_path / "ref"
    run_deidentify(_settings(tmp_path / "src", ref, tmp_path / "q0"), jobs=1)
    dst = tmp_path / "dst"
    script = tmp_path / "runner_full.py"
    script.write_text(RUNNER.format(src=str(tmp_path / "src"), dst=str(dst), q=str(tmp_path / "q"), resume=False, jobs=2)
                      .replace("    except Interrupted:", "    except Exception as e:\n        print(type(e).__name__)"
                               "\n        sys.exit(4)\n    except Interrupted:"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                       preexec_fn=_fsize_100k, timeout=300)
    assert r.returncode == 4 and r.stdout.strip() == "OutputError", r.stderr
    assert not [p for p in dst.rglob("*.dcm")]  # nothing half-written became a final file
    _no_temp_files(dst)
    rep = run_deidentify(_settings(tmp_path / "src", dst, tmp_path / "q"), jobs=2, resume=True)
    assert rep.counts["written"] == 12 and rep.counts["quarantined"] == 0
    assert tree_bytes(dst) == tree_bytes(ref)


def test_duplicate_sop_instance_is_reported_the_same_way_as_the_pipeline(tmp_path, monkeypatch):
    import dicomsafe.batchrun as br
    import pydicom
    from batch_corpus import Tree, add_study
    from dicomsafe.pipeline import deidentify_tree

    monkeypatch.setattr(br, "UNIT_MAX_FILES", 2)
    tree = Tree(tmp_path / "src")
    folder = Path(add_study(tree, 0, 0, 7))
    ds = pydicom.dcmread(folder / "img0000.dcm")
    ds.InstanceNumber = 99  # same SOP Instance UID, other content
    ds.save_as(folder / "zzz-duplicate.dcm", enforce_file_format=True)
    ref = deidentify_tree(_settings(tmp_path / "src", tmp_path / "ref", tmp_path / "q0"))
    assert ref.reasons.get("duplicate-sop-instance") == 1
    for i in range(2):
        dst = tmp_path / f"par{i}"
        rep = run_deidentify(_settings(tmp_path / "src", dst, tmp_path / f"q{i + 1}"), jobs=2)
        assert rep.reasons == ref.reasons
        assert sorted((f["id"], f["outcome"], f["reason"]) for f in rep.files) == \
            sorted((f["id"], f["outcome"], f["reason"]) for f in ref.files)
        assert tree_bytes(dst) == tree_bytes(tmp_path / "ref")


@pytest.mark.slow
def test_issue6_acceptance_kill_9_in_a_1000_file_two_job_run(tmp_path):
    """Issue 6 acceptance at full size: ~1,000 files, kill -9, --resume, byte-identical tree."""
    from dicomsafe.corpus import build_ct_series

    build_ct_series(tmp_path / "src", 1000, rows=64, cols=64, patients=12)
    ref = tmp_path / "ref"
    ref_rep = run_deidentify(_settings(tmp_path / "src", ref, tmp_path / "q0"), jobs=2)
    assert ref_rep.counts["written"] == 1000
    dst = tmp_path / "dst"
    p = _start(tmp_path, tmp_path / "src", dst, tmp_path / "q")
    _wait_units(p, dst, 3)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=60)
    assert _units_done(dst) < 12 * 2  # 12 studies of ~84 files, in 64-file parts
    rep = run_deidentify(_settings(tmp_path / "src", dst, tmp_path / "q"), jobs=2, resume=True)
    assert rep.counts == ref_rep.counts
    assert len(rep.files) == 1000
    assert tree_bytes(dst) == tree_bytes(ref)
    _no_temp_files(dst)
