"""Nightly archive: encrypted per-study objects, incremental runs, bit-exact restore, verify.

Real keys (age-keygen and dicomsafe's own), real DICOM files, the real CLI in a subprocess.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from batch_corpus import SECRET, add_study, build_tree, grep_tree, tree_bytes
from dicomsafe import crypto
from dicomsafe.archive import archive_tree, load_catalog, restore, verify_archive
from dicomsafe.errors import LockedError
from dicomsafe.fsutil import write_secret_file
from dicomsafe.lock import DestinationLock
from dicomsafe.pseudonyms import format_secret_file

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args, cwd=None, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "dicomsafe", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, **kw)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    r = _cli("keygen", "-o", d / "key.txt")
    assert r.returncode == 0, r.stderr
    pub = [ln.split(": ", 1)[1] for ln in (d / "key.txt").read_text().splitlines() if "public key" in ln]
    if not pub:  # keygen prints the public key on stderr like age-keygen
        pub = [ln.split(": ", 1)[1] for ln in r.stderr.splitlines() if "ublic key" in ln]
    (d / "recipients.txt").write_text(pub[0].strip() + "\n")
    write_secret_file(d / "secret", format_secret_file(SECRET))
    return d


def _ids(keys):
    return crypto.load_identities(keys / "key.txt")


def _recips(keys):
    return crypto.load_recipients_file(keys / "recipients.txt")


def _dicom_bytes(root: Path) -> dict[str, bytes]:
    return {k: v for k, v in tree_bytes(root, skip_state=False).items() if k.endswith(".dcm")}


def _objects(dst: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(dst).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in (dst / "objects").rglob("*") if p.is_file()}


@pytest.mark.parametrize("fmt", ["aes", "age"])
def test_archive_restore_bit_exact_and_no_phi_in_clear(tmp_path, keys, fmt):
    tree = build_tree(tmp_path / "src", patients=2, studies=2, files=3)
    dst = tmp_path / "archive"
    r = _cli("archive", tmp_path / "src", dst, "-R", keys / "recipients.txt", "--secret-file", keys / "secret",
             "--format", fmt, "--jobs", "2")
    assert r.returncode == 0, r.stderr
    ext = {"aes": "dsa", "age": "age"}[fmt]
    objs = _objects(dst)
    assert len(objs) == 4 and all(o.endswith(f".v1.{ext}") for o in objs)
    assert sorted(p.name for p in (dst / "catalog").iterdir()) == [f"000001.{ext}"]
    # nothing in DST names a patient in clear: not in any path, not in any byte
    needles = tree.phi + tree.study_uids + tree.patient_ids + ["img0000", "study0"]
    assert grep_tree(dst, needles) == []
    for text in (r.stdout, r.stderr):
        assert not [n for n in needles if n in text]

    out = tmp_path / "restored"
    r = _cli("restore", dst, out, "-i", keys / "key.txt")
    assert r.returncode == 0, r.stderr
    assert _dicom_bytes(out) == _dicom_bytes(tmp_path / "src")
    assert len(_dicom_bytes(out)) == 12
    r = _cli("archive", "verify", dst, "-i", keys / "key.txt")
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("age") is None, reason="needs the age CLI")
def test_age_object_opens_with_age_and_holds_only_keyed_member_names(tmp_path, keys):
    tree = build_tree(tmp_path / "src", patients=1, studies=1, files=2, notes=False)
    dst = tmp_path / "archive"
    archive_tree(tmp_path / "src", dst, _recips(keys), SECRET, fmt="age", jobs=1)
    (obj,) = [p for p in (dst / "objects").rglob("*.age")]
    plain = subprocess.run(["age", "-d", "-i", str(keys / "key.txt"), str(obj)], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        names = tar.getnames()
        assert len(names) == 3 and names[-1] == "catalog.json"
        assert all(len(n) == len("0123456789abcdef0123.dcm") for n in names[:-1])
        assert not [n for n in tree.phi if any(n in name for name in names)]
        catalog = tar.extractfile("catalog.json").read().decode()
    # the clear identifiers are there — but only inside the ciphertext
    assert tree.study_uids[0] in catalog and tree.patient_ids[0] in catalog
    assert "ZZTESTNAME000/study0/img0000.dcm" in catalog


def test_incremental_new_patient_leaves_old_objects_untouched(tmp_path, keys):
    src = tmp_path / "src"
    tree = build_tree(src, patients=2, studies=2, files=2)
    dst = tmp_path / "archive"
    rep1 = archive_tree(src, dst, _recips(keys), SECRET, jobs=2)
    assert rep1.counts["archived_studies"] == 4
    before = _objects(dst)
    time.sleep(0.01)
    add_study(tree, 7, 0, 2)  # one new patient with one study
    rep2 = archive_tree(src, dst, _recips(keys), SECRET, jobs=2)
    assert rep2.counts["archived_studies"] == 1 and rep2.counts["unchanged_studies"] == 4
    after = _objects(dst)
    assert set(after) - set(before) and len(set(after) - set(before)) == 1
    for name, stamp in before.items():
        assert after[name] == stamp  # same inode, same mtime: never rewritten
    assert len(list((dst / "catalog").iterdir())) == 2
    # a third run with no change writes nothing at all
    rep3 = archive_tree(src, dst, _recips(keys), SECRET, jobs=1)
    assert rep3.counts["archived_studies"] == 0 and rep3.catalog_segment is None
    assert _objects(dst) == after
    restore(dst, tmp_path / "out", _ids(keys))
    assert _dicom_bytes(tmp_path / "out") == _dicom_bytes(src)


def test_changed_study_gets_a_new_version_and_retention_prunes_the_old(tmp_path, keys):
    src = tmp_path / "src"
    tree = build_tree(src, patients=1, studies=2, files=2, notes=False)
    dst = tmp_path / "archive"
    archive_tree(src, dst, _recips(keys), SECRET)
    before = _objects(dst)
    add_study(tree, 0, 1, 1, start=2)  # the second study gains an instance
    rep = archive_tree(src, dst, _recips(keys), SECRET, retention_days=0)
    assert rep.counts["archived_studies"] == 1
    after = _objects(dst)
    new = set(after) - set(before)
    assert len(new) == 1 and ".v2." in new.pop()
    assert all(after[k] == v for k, v in before.items())  # v1 still there, untouched
    assert verify_archive(dst, _ids(keys)).ok
    restore(dst, tmp_path / "out", _ids(keys))
    assert _dicom_bytes(tmp_path / "out") == _dicom_bytes(src)
    # retention: the superseded v1 goes once it is older than the limit; v2 and the other stay
    old = [dst / k for k in before if any(k.split("/")[-1].split(".")[0] in n for n in after if ".v2." in n)]
    assert len(old) == 1
    past = time.time() - 3 * 86400
    os.utime(old[0], (past, past))
    rep = archive_tree(src, dst, _recips(keys), SECRET, retention_days=1)
    assert rep.counts["pruned_objects"] == 1 and not old[0].exists()
    assert len(_objects(dst)) == 2
    assert verify_archive(dst, _ids(keys)).ok


def test_restore_filters(tmp_path, keys):
    src = tmp_path / "src"
    tree = build_tree(src, patients=2, studies=2, files=1, notes=False)
    dst = tmp_path / "archive"
    archive_tree(src, dst, _recips(keys), SECRET)
    r = restore(dst, tmp_path / "a", _ids(keys), studies=[tree.study_uids[0]])
    assert (r.studies, r.files) == (1, 1)
    r = restore(dst, tmp_path / "b", _ids(keys), patients=[tree.patient_ids[1]])
    assert r.studies == 2 and all(k.startswith("ZZTESTNAME001/") for k in _dicom_bytes(tmp_path / "b"))
    r = restore(dst, tmp_path / "c", _ids(keys), since="2020-02-01")  # study 1 of each patient: Feb 2020
    assert r.studies == 2 and all("/study1/" in k for k in _dicom_bytes(tmp_path / "c"))
    res = _cli("restore", dst, tmp_path / "d", "-i", keys / "key.txt", "--study", "1.2.3.4")
    assert res.returncode == 1 and not (tmp_path / "d").exists()


def test_verify_detects_tampering_and_missing_objects(tmp_path, keys):
    src = tmp_path / "src"
    build_tree(src, patients=1, studies=2, files=2, notes=False)
    dst = tmp_path / "archive"
    archive_tree(src, dst, _recips(keys), SECRET)
    objs = sorted((dst / "objects").rglob("*.dsa"))
    data = bytearray(objs[0].read_bytes())
    data[len(data) // 2] ^= 0x01
    objs[0].write_bytes(bytes(data))
    r = _cli("archive", "verify", dst, "-i", keys / "key.txt")
    assert r.returncode == 1
    assert objs[0].name.split(".")[0] in r.stderr and "Traceback" not in r.stderr
    objs[1].unlink()
    rep = verify_archive(dst, _ids(keys))
    assert len(rep.problems) == 2
    assert any("missing" in p["problem"] for p in rep.problems)
    # restoring: the intact study comes back, the broken ones are named, exit code 3
    build_tree(tmp_path / "src2", patients=1, studies=3, files=1, notes=False)
    dst2 = tmp_path / "archive2"
    archive_tree(tmp_path / "src2", dst2, _recips(keys), SECRET)
    objs = sorted((dst2 / "objects").rglob("*.dsa"))
    data = bytearray(objs[0].read_bytes())
    data[len(data) // 2] ^= 0x01
    objs[0].write_bytes(bytes(data))
    r = _cli("restore", dst2, tmp_path / "out", "-i", keys / "key.txt")
    assert r.returncode == 3
    assert objs[0].name.split(".")[0] in r.stderr and "2 restored" in r.stderr
    restored = _dicom_bytes(tmp_path / "out")
    original = _dicom_bytes(tmp_path / "src2")
    assert len(restored) == 2 and all(original[k] == v for k, v in restored.items())
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".tmp")]


def test_wrong_identity_is_a_crypto_error(tmp_path, keys):
    src = tmp_path / "src"
    build_tree(src, patients=1, studies=1, files=1, notes=False)
    dst = tmp_path / "archive"
    archive_tree(src, dst, _recips(keys), SECRET)
    assert _cli("keygen", "-o", tmp_path / "other.txt").returncode == 0
    r = _cli("archive", "verify", dst, "-i", tmp_path / "other.txt")
    assert r.returncode == 3, r.stderr
    r = _cli("restore", dst, tmp_path / "out", "-i", tmp_path / "other.txt")
    assert r.returncode == 3


def test_locked_destination_refuses(tmp_path, keys):
    src = tmp_path / "src"
    build_tree(src, patients=1, studies=1, files=1, notes=False)
    dst = tmp_path / "archive"
    with DestinationLock(dst):
        with pytest.raises(LockedError):
            archive_tree(src, dst, _recips(keys), SECRET)
        r = _cli("archive", src, dst, "-R", keys / "recipients.txt", "--secret-file", keys / "secret")
        assert r.returncode == 4
        assert "another dicomsafe run is using this destination" in r.stderr


def test_config_file_drives_the_nightly_run(tmp_path, keys):
    src = tmp_path / "src"
    build_tree(src, patients=1, studies=2, files=1, notes=False)
    cfg = tmp_path / "nightly.toml"
    cfg.write_text(f'source = "src"\ndestination = "archive"\nrecipients_file = "{keys / "recipients.txt"}"\n'
                   f'secret_file = "{keys / "secret"}"\njobs = 2\n[archive]\nformat = "age"\n')
    r = _cli("archive", "--config", cfg, cwd="/")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "archive" / "objects").rglob("*.age"))) == 2
    cfg.write_text('source = "src"\n[archive]\nformat = "zip"\n')
    r = _cli("archive", "--config", cfg)
    assert r.returncode == 2 and "nightly.toml:3" in r.stderr


def test_kill_9_mid_archive_then_rerun_completes(tmp_path, keys):
    src = tmp_path / "src"
    build_tree(src, patients=3, studies=4, files=4, notes=False)
    dst = tmp_path / "archive"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "dicomsafe", "archive", str(src), str(dst), "-R",
                          str(keys / "recipients.txt"), "--secret-file", str(keys / "secret"), "--jobs", "2"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    while len(list((dst / "objects").rglob("*.dsa"))) < 2 if (dst / "objects").exists() else True:
        assert p.poll() is None, p.stderr.read()
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=60)
    assert not (dst / "catalog").exists() or len(list((dst / "objects").rglob("*.dsa"))) < 12
    rep = archive_tree(src, dst, _recips(keys), SECRET, jobs=2)
    assert rep.counts["archived_studies"] + rep.counts["unchanged_studies"] == 12
    assert not [q for q in dst.rglob("*") if q.name.endswith(".tmp")]
    v = verify_archive(dst, _ids(keys))
    assert v.ok and v.objects >= 12, v.problems
    restore(dst, tmp_path / "out", _ids(keys))
    assert _dicom_bytes(tmp_path / "out") == _dicom_bytes(src)
    assert len(latest := {e["study_key"] for e in load_catalog(dst, _ids(keys))}) == 12, latest


def test_hostile_corpus_archive_has_no_planted_phi_and_restores_every_dicom(tmp_path, keys):
    from dicomsafe.corpus import build_corpus, find_planted

    corpus = build_corpus(tmp_path / "src", seed=3, patients=3)
    dst = tmp_path / "archive"
    r = _cli("archive", tmp_path / "src", dst, "-R", keys / "recipients.txt", "--secret-file", keys / "secret",
             "--jobs", "2")
    assert r.returncode == 0, r.stderr
    assert find_planted(corpus, dst) == []
    assert find_planted(corpus, tmp_path / "empty", text=r.stdout + r.stderr) == []
    rep = verify_archive(dst, _ids(keys))
    assert rep.ok, rep.problems
    out = tmp_path / "out"
    restore(dst, out, _ids(keys))
    restored = tree_bytes(out, skip_state=False)
    original = tree_bytes(tmp_path / "src", skip_state=False)
    assert restored and all(original[k] == v for k, v in restored.items())
    # every input is either restored bit-exact or was one of the non-DICOM files the archive skips
    skipped = json_report(dst)["counts"]["skipped"]
    assert len(restored) + skipped == len(original)


def json_report(dst):
    import json

    return json.loads((dst / ".dicomsafe" / "archive-report.json").read_text())


def test_deidentify_mode_archives_clean_copies_incrementally(tmp_path, keys):
    src = tmp_path / "src"
    tree = build_tree(src, patients=1, studies=2, files=2)
    dst = tmp_path / "archive"
    args = ["archive", src, dst, "-R", keys / "recipients.txt", "--secret-file", keys / "secret",
            "--deidentify", "--profile", "basic", "--quarantine", tmp_path / "q", "--jobs", "2"]
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    before = _objects(dst)
    assert len(before) == 2
    out = tmp_path / "out"
    restore(dst, out, _ids(keys))
    restored = _dicom_bytes(out)
    assert len(restored) == 4
    assert grep_tree(out, tree.phi + tree.study_uids) == []  # de-identified copies, not originals
    # rebuilt from scratch next run, but identical bytes: nothing rewritten
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    assert _objects(dst) == before


def test_sigterm_mid_archive_exits_130_catalogues_what_is_done_and_resumes(tmp_path, keys):
    src = tmp_path / "src"
    build_tree(src, patients=4, studies=5, files=3, notes=False)
    dst = tmp_path / "archive"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "-m", "dicomsafe", "archive", str(src), str(dst), "-R",
                          str(keys / "recipients.txt"), "--secret-file", str(keys / "secret"), "--jobs", "2"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    while len(list((dst / "objects").rglob("*.dsa"))) < 2 if (dst / "objects").exists() else True:
        assert p.poll() is None, p.stderr.read()
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGTERM)  # as systemd stops a service: the whole group
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    done = len(list((dst / "objects").rglob("*.dsa")))
    assert 2 <= done < 20
    catalogued = {e["study_key"] for e in load_catalog(dst, _ids(keys))}
    assert len(catalogued) == done  # everything finished before the stop is in the catalog
    rep = archive_tree(src, dst, _recips(keys), SECRET, jobs=2)
    assert rep.counts["unchanged_studies"] == done and rep.counts["archived_studies"] == 20 - done
    assert verify_archive(dst, _ids(keys)).ok
    import json
    last = json.loads((dst / ".dicomsafe" / "audit.jsonl").read_text().splitlines()[-2])
    assert last["status"] == "interrupted"


def _small_fsize_limit():
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_disk_full_stops_cleanly_with_4_and_next_run_completes(tmp_path, keys, jobs):
    src = tmp_path / "src"
    build_tree(src, patients=1, studies=3, files=6, notes=False)  # objects of ~235 KB each
    dst = tmp_path / "archive"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "dicomsafe", "archive", str(src), str(dst), "-R",
                        str(keys / "recipients.txt"), "--secret-file", str(keys / "secret"), "--jobs", jobs],
                       env=env, capture_output=True, text=True, preexec_fn=_small_fsize_limit)
    assert r.returncode == 4, r.stderr
    assert "Traceback" not in r.stderr
    assert not [p for p in dst.rglob("*") if p.is_file() and "objects" in p.parts]  # nothing half-written
    rep = archive_tree(src, dst, _recips(keys), SECRET, jobs=2)  # "space freed": the run completes
    assert rep.counts["archived_studies"] == 3
    assert verify_archive(dst, _ids(keys)).ok


def test_dask_local_cluster_archives_the_same_objects(tmp_path, keys):
    distributed = pytest.importorskip("distributed")
    src = tmp_path / "src"
    build_tree(src, patients=2, studies=2, files=2, notes=False)
    archive_tree(src, tmp_path / "pool", _recips(keys), SECRET, jobs=2)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        rep = archive_tree(src, tmp_path / "dask", _recips(keys), SECRET, executor="dask",
                           scheduler=cluster.scheduler_address)
    assert rep.counts["archived_studies"] == 4
    assert set(_objects(tmp_path / "dask")) == set(_objects(tmp_path / "pool"))
    restore(tmp_path / "dask", tmp_path / "out", _ids(keys))
    assert _dicom_bytes(tmp_path / "out") == _dicom_bytes(src)


def test_odd_file_names_restore_to_the_same_bytes_and_names(tmp_path, keys):
    src = tmp_path / "src"
    tree = build_tree(src, patients=1, studies=1, files=1, notes=False)
    (only,) = list(src.rglob("*.dcm"))
    data = only.read_bytes()
    odd = [b"caf\xe9 latin1.dcm", "name with spaces ZZTESTNAME000.dcm".encode(), b"new\nline.dcm",
           "ünïcødé.dcm".encode()]
    for name in odd:
        with open(os.path.join(os.fsencode(only.parent), name), "wb") as fh:
            fh.write(data)  # same study (same StudyInstanceUID), other names
    dst = tmp_path / "archive"
    archive_tree(src, dst, _recips(keys), SECRET)
    assert grep_tree(dst, tree.phi + ["latin1", "spaces", "line"]) == []
    out = tmp_path / "out"
    restore(dst, out, _ids(keys))
    restored = {os.path.relpath(os.path.join(d, f), os.fsencode(out))
                for d, _, fs in os.walk(os.fsencode(out)) for f in fs}
    original = {os.path.relpath(os.path.join(d, f), os.fsencode(src))
                for d, _, fs in os.walk(os.fsencode(src)) for f in fs}
    assert restored == original and len(original) == 5
    for rel in original:
        assert open(os.path.join(os.fsencode(out), rel), "rb").read() == \
            open(os.path.join(os.fsencode(src), rel), "rb").read()


def test_files_that_leave_the_source_stay_restorable_and_are_never_pruned(tmp_path, keys):
    src = tmp_path / "src"
    tree = build_tree(src, patients=1, studies=1, files=3, notes=False)
    dst = tmp_path / "archive"
    archive_tree(src, dst, _recips(keys), SECRET)
    original = _dicom_bytes(src)
    gone = sorted(src.rglob("*.dcm"))[0]
    gone.unlink()  # the source ages a file out
    rep = archive_tree(src, dst, _recips(keys), SECRET)
    assert rep.counts["archived_studies"] == 0 and rep.counts["unchanged_studies"] == 1  # not a change
    add_study(tree, 0, 0, 1, start=3)  # later the study gains an instance: new version without `gone`
    rep = archive_tree(src, dst, _recips(keys), SECRET)
    assert rep.counts["archived_studies"] == 1
    (v1,) = [p for p in (dst / "objects").rglob("*.v1.dsa")]
    past = time.time() - 10 * 86400
    os.utime(v1, (past, past))
    rep = archive_tree(src, dst, _recips(keys), SECRET, retention_days=1)
    assert rep.counts["pruned_objects"] == 0 and v1.exists()  # v1 holds the only copy of `gone`
    out = tmp_path / "out"
    r = restore(dst, out, _ids(keys))
    restored = _dicom_bytes(out)
    assert r.studies == 1 and len(restored) == 4
    assert all(original[k] == restored[k] for k in original)  # including the file that left
    assert verify_archive(dst, _ids(keys)).ok


def test_verify_detects_a_removed_or_replayed_catalog_segment(tmp_path, keys):
    src = tmp_path / "src"
    tree = build_tree(src, patients=1, studies=1, files=1, notes=False)
    dst = tmp_path / "archive"
    for i in range(3):  # three runs that each archive something: three segments
        add_study(tree, 5 + i, 0, 1)
        archive_tree(src, dst, _recips(keys), SECRET)
    segs = sorted((dst / "catalog").iterdir())
    assert [p.name for p in segs] == ["000001.dsa", "000002.dsa", "000003.dsa"]
    assert verify_archive(dst, _ids(keys)).ok
    saved = segs[1].read_bytes()
    segs[1].write_bytes(segs[0].read_bytes())  # replay segment 1 under the name of segment 2
    rep = verify_archive(dst, _ids(keys))
    assert any("replayed" in p["problem"] for p in rep.problems)
    segs[1].unlink()
    rep = verify_archive(dst, _ids(keys))
    assert any("000002..000002 missing" in p["problem"] for p in rep.problems)
    r = _cli("archive", "verify", dst, "-i", keys / "key.txt")
    assert r.returncode == 1 and "missing" in r.stderr
    segs[1].write_bytes(saved)
    assert verify_archive(dst, _ids(keys)).ok


def test_deidentify_mode_refuses_a_quarantine_inside_the_archive(tmp_path, keys):
    src = tmp_path / "src"
    build_tree(src, patients=1, studies=1, files=1, notes=False)
    dst = tmp_path / "archive"
    r = _cli("archive", src, dst, "-R", keys / "recipients.txt", "--secret-file", keys / "secret",
             "--deidentify", "--quarantine", dst / "q")
    assert r.returncode == 2 and "quarantine" in r.stderr
    assert not (dst / "q").exists()


def test_an_archive_report_that_cannot_be_written_fails_the_run(tmp_path, keys):
    """archive-report.json used to be written under contextlib.suppress: a run whose report could
    not be written exited 0 and left the previous run's report in place for monitoring to read."""
    import json

    from dicomsafe.errors import OutputError

    src = tmp_path / "src"
    build_tree(src, patients=1, studies=1, files=2)
    dst = tmp_path / "archive"
    archive_tree(src, dst, _recips(keys), SECRET, jobs=1)
    report = dst / ".dicomsafe" / "archive-report.json"
    report.unlink()
    report.mkdir()  # cannot be replaced by a file
    with pytest.raises(OutputError, match="directory"):
        archive_tree(src, dst, _recips(keys), SECRET, jobs=1)
    last = json.loads((dst / ".dicomsafe" / "audit.jsonl").read_text().splitlines()[-1])
    assert last["status"] == "failed"
