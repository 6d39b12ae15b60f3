"""Research export: de-identify + verify + tar + encrypt; opened with the real age and tar."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from batch_corpus import SECRET, build_tree, grep_tree
from dicomsafe.fsutil import write_secret_file
from dicomsafe.pseudonyms import format_secret_file

ROOT = Path(__file__).resolve().parent.parent
needs_age = pytest.mark.skipif(shutil.which("age") is None or shutil.which("tar") is None,
                               reason="needs the age and tar CLIs")


def _cli(*args, cwd=None, preexec_fn=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "dicomsafe", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, preexec_fn=preexec_fn)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    r = _cli("keygen", "-o", d / "key.txt")
    assert r.returncode == 0, r.stderr
    pub = next(ln.split(": ", 1)[1] for ln in (d / "key.txt").read_text().splitlines() if "public key" in ln)
    (d / "recipients.txt").write_text(pub.strip() + "\n")
    write_secret_file(d / "secret", format_secret_file(SECRET))
    return d


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    d = tmp_path_factory.mktemp("export-src")
    tree = build_tree(d / "src", patients=2, studies=1, files=3)
    (d / "src" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7f")  # truncated
    return d / "src", tree


def _export(tmp_path, keys, src, *extra, preexec_fn=None):
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return _cli("export", src, tmp_path / "exports", "--secret-file", keys / "secret", "-R",
                keys / "recipients.txt", "--quarantine", tmp_path / "q", "--tmp-dir", tmp_path / "tmp",
                "--jobs", "2", *extra, preexec_fn=preexec_fn)


@needs_age
def test_export_opens_with_age_and_tar_into_a_clean_tree(tmp_path, keys, source):
    src, tree = source
    r = _export(tmp_path, keys, src)
    assert r.returncode == 1, r.stderr  # the truncated file was quarantined
    (out,) = list((tmp_path / "exports").glob("export-*.tar.age"))
    assert r.stdout.strip() == str(out)
    assert list((tmp_path / "tmp").iterdir()) == []  # temporary tree removed
    x = tmp_path / "x"
    x.mkdir()
    subprocess.run(f"age -d -i '{keys / 'key.txt'}' '{out}' | tar -x", shell=True, cwd=x, check=True)
    (top,) = list(x.iterdir())
    assert top.name == out.name[: -len(".tar.age")]
    manifest = json.loads((top / "manifest.json").read_text())
    assert manifest["counts"] == {"inputs": 8, "written": 6, "quarantined": 1, "skipped": 1, "files_in_export": 6}
    assert manifest["profile"]["name"] == "basic" and len(manifest["profile"]["hash"]) >= 16
    files = sorted(p for p in top.rglob("*.dcm"))
    assert len(files) == 6 == len(manifest["files"])
    for entry in manifest["files"]:
        data = (top / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["size"]
        ds = pydicom.dcmread(top / entry["path"])
        assert ds.PatientIdentityRemoved == "YES"
    # clean: no planted value anywhere in the extracted tree (bytes or paths) nor in DST
    needles = tree.phi + tree.study_uids + ["img0000", "ZZTESTNAME"]
    assert grep_tree(x, needles) == []
    assert grep_tree(tmp_path / "exports", needles) == []
    assert not [n for n in needles if n in r.stderr + r.stdout]
    audit = (tmp_path / "exports" / ".dicomsafe" / "audit.jsonl").read_text().splitlines()
    rec = json.loads(audit[-1])
    assert rec["event"] == "export" and rec["status"] == "findings"
    assert rec["outputs"]["export"] == out.name
    assert _cli("audit", "verify", tmp_path / "exports" / ".dicomsafe" / "audit.jsonl").returncode == 0


def test_aes_export_decrypts_with_dicomsafe(tmp_path, keys, source):
    src, _ = source
    r = _export(tmp_path, keys, src, "--format", "aes")
    assert r.returncode == 1, r.stderr
    (out,) = list((tmp_path / "exports").glob("export-*.tar.dsa"))
    r = _cli("decrypt", "-i", keys / "key.txt", "-o", tmp_path / "plain.tar", out)
    assert r.returncode == 0, r.stderr
    import tarfile

    with tarfile.open(tmp_path / "plain.tar") as tar:
        names = tar.getnames()
    assert any(n.endswith("/manifest.json") for n in names)
    assert sum(n.endswith(".dcm") for n in names) == 6


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (120_000, 120_000))


def test_failure_while_writing_leaves_no_export_and_no_temp_tree(tmp_path, keys, source):
    src, _ = source
    r = _export(tmp_path, keys, src, preexec_fn=_limit_file_size)  # 6 × ~35 KB: the export cannot be written
    assert r.returncode == 4, r.stderr
    assert "Traceback" not in r.stderr
    assert list((tmp_path / "tmp").iterdir()) == []
    leftovers = [p.name for p in (tmp_path / "exports").iterdir() if p.name != ".dicomsafe"]
    assert leftovers == []
    rec = json.loads((tmp_path / "exports" / ".dicomsafe" / "audit.jsonl").read_text().splitlines()[-1])
    assert rec["status"] == "failed"


def test_missing_recipients_is_a_usage_error(tmp_path, keys, source):
    src, _ = source
    r = _cli("export", src, tmp_path / "exports", "--secret-file", keys / "secret")
    assert r.returncode == 2 and "recipient" in r.stderr


@needs_age
def test_hostile_corpus_export_has_no_planted_phi(tmp_path, keys):
    from dicomsafe.corpus import build_corpus, find_planted

    corpus = build_corpus(tmp_path / "src", seed=5, patients=2)
    r = _export(tmp_path, keys, tmp_path / "src")
    assert r.returncode in (0, 1), r.stderr
    assert find_planted(corpus, tmp_path / "exports", text=r.stdout + r.stderr) == []
    (out,) = list((tmp_path / "exports").glob("export-*.tar.age"))
    x = tmp_path / "x"
    x.mkdir()
    subprocess.run(f"age -d -i '{keys / 'key.txt'}' '{out}' | tar -x", shell=True, cwd=x, check=True)
    assert find_planted(corpus, x) == []
    (top,) = list(x.iterdir())
    manifest = json.loads((top / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["inputs"] == len(corpus.files) == c["written"] + c["quarantined"] + c["skipped"]
    assert c["written"] == c["files_in_export"] >= len(corpus.with_outcome("written")) - 5
    assert list((tmp_path / "tmp").iterdir()) == []


def test_quarantine_or_destination_in_the_wrong_place_is_refused(tmp_path, keys, source):
    src, _ = source
    r = _cli("export", src, tmp_path / "exports", "--secret-file", keys / "secret", "-R",
             keys / "recipients.txt", "--quarantine", tmp_path / "exports" / "q")
    assert r.returncode == 2 and "quarantine" in r.stderr
    r = _cli("export", src, src / "exports", "--secret-file", keys / "secret", "-R", keys / "recipients.txt",
             "--quarantine", tmp_path / "q")
    assert r.returncode == 2 and not (src / "exports").exists()
