"""Tests for dicomsafe.discover on real trees built in tmp_path (real files, links, FIFOs)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomsafe.discover import SourceFile, WalkStats, classify, discover, group_studies
from dicomsafe.errors import ConfigError


def tf(name: str) -> Path:
    return Path(get_testdata_file(name))


def rels(files: list[SourceFile]) -> list[str]:
    return [f.relpath for f in files]


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A small messy source tree.

    src/
      a/CT_small.dcm            study A
      a/MR_small.dcm            study B
      a/notes.txt               not DICOM
      b/MR copy.dcm             study B again, in another folder, name with a space
      b/empty.dcm               empty
      c/rtplan_truncated.dcm    DICOM, unreadable body
    """
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    (src / "c").mkdir()
    shutil.copyfile(tf("CT_small.dcm"), src / "a" / "CT_small.dcm")
    shutil.copyfile(tf("MR_small.dcm"), src / "a" / "MR_small.dcm")
    (src / "a" / "notes.txt").write_text("just some notes\n")
    ds = pydicom.dcmread(tf("MR_small.dcm"))
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".2"
    ds.save_as(src / "b" / "MR copy.dcm")
    (src / "b" / "empty.dcm").write_bytes(b"")
    shutil.copyfile(tf("rtplan_truncated.dcm"), src / "c" / "rtplan_truncated.dcm")
    return src


def test_basic_walk_sorted_and_stat_fields(tree: Path) -> None:
    files = list(discover(tree))
    assert rels(files) == [
        "a/CT_small.dcm",
        "a/MR_small.dcm",
        "a/notes.txt",
        "b/MR copy.dcm",
        "b/empty.dcm",
        "c/rtplan_truncated.dcm",
    ]
    ct = files[0]
    st = os.stat(tree / "a" / "CT_small.dcm")
    assert ct.path == tree / "a" / "CT_small.dcm"
    assert (ct.size, ct.mtime_ns, ct.dev, ct.ino) == (st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)
    assert ct.regular and ct.aliases == ()


def test_order_is_deterministic_regardless_of_creation_order(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    names = ["z.dcm", "A.dcm", "m/x", "m/a", "B", "a b", "a.b"]
    for root, order in ((one, names), (two, list(reversed(names)))):
        for n in order:
            p = root / n
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(n.encode())
    assert rels(list(discover(one))) == rels(list(discover(two)))
    assert rels(list(discover(one))) == sorted(names, key=os.fsencode)


def test_missing_source_is_config_error_without_path(tmp_path: Path) -> None:
    missing = tmp_path / "PATIENT_DOE_JOHN"
    with pytest.raises(ConfigError) as ei:
        list(discover(missing))
    assert str(ei.value) == "source directory not found"
    assert "DOE" not in str(ei.value)
    f = tmp_path / "PATIENT_FILE"
    f.write_bytes(b"x")
    with pytest.raises(ConfigError) as ei:
        list(discover(f))
    assert "PATIENT" not in str(ei.value)


def test_symlink_out_of_source_not_followed(tmp_path: Path, tree: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copyfile(tf("CT_small.dcm"), outside / "secret.dcm")
    (tree / "link_file.dcm").symlink_to(outside / "secret.dcm")
    (tree / "link_dir").symlink_to(outside)
    (tree / "a" / "up").symlink_to("../..")  # relative link that climbs out of src
    stats = WalkStats()
    files = list(discover(tree, stats=stats))
    assert all("secret" not in f.relpath for f in files)
    assert all(not f.relpath.startswith(("link_", "a/up")) for f in files)
    assert stats.symlinks_outside == 3
    assert len(files) == 6


def test_symlink_loops_survive(tree: Path) -> None:
    (tree / "a" / "loop").symlink_to("..")  # points at src itself: inside, and a loop
    (tree / "b" / "self").symlink_to("self")  # a link to itself: ELOOP
    (tree / "c" / "ping").symlink_to("pong")
    (tree / "c" / "pong").symlink_to("ping")
    stats = WalkStats()
    files = list(discover(tree, stats=stats))
    assert len(files) == 6
    assert stats.symlinks_broken == 3
    assert stats.dirs_revisited >= 1


def test_symlink_to_file_inside_counts_once_under_real_name(tree: Path) -> None:
    (tree / "0first.dcm").symlink_to("a/CT_small.dcm")  # sorts before the real name
    (tree / "zdir").symlink_to("a")  # a symlinked directory inside the tree
    stats = WalkStats()
    files = list(discover(tree, stats=stats))
    assert len(files) == 6
    ct = next(f for f in files if f.relpath.endswith("CT_small.dcm"))
    assert ct.relpath == "a/CT_small.dcm"
    assert "0first.dcm" in ct.aliases
    assert stats.duplicates == 1  # the directory link is skipped as a revisit, not per file
    assert stats.dirs_revisited == 1


def test_symlink_only_path_is_kept(tree: Path, tmp_path: Path) -> None:
    """A file reachable only through an in-tree symlinked directory is found through it."""
    hidden = tree / "c" / "deep"
    hidden.mkdir()
    shutil.copyfile(tf("CT_small.dcm"), hidden / "x.dcm")
    files = list(discover(tree))
    assert "c/deep/x.dcm" in rels(files)


def test_hard_links_count_once(tree: Path) -> None:
    os.link(tree / "a" / "MR_small.dcm", tree / "c" / "hard.dcm")
    stats = WalkStats()
    files = list(discover(tree, stats=stats))
    assert len(files) == 6
    mr = next(f for f in files if f.relpath == "a/MR_small.dcm")
    assert mr.aliases == ("c/hard.dcm",)
    assert stats.duplicates == 1


def test_odd_names(tree: Path) -> None:
    raw_dir = os.fsencode(tree)
    weird = [b"non-utf8-\xff\xfe.dcm", b"new\nline.dcm", b"  spaces  .dcm", b"tab\there"]
    for name in weird:
        with open(os.path.join(raw_dir, b"b", name), "wb") as fh:
            fh.write(tf("CT_small.dcm").read_bytes())
    files = list(discover(tree))
    got = {f.relpath_bytes for f in files}
    for name in weird:
        assert b"b/" + name in got
    for f in files:
        assert f.path.exists()  # the path round-trips to the real file
        f.relpath_text.encode("utf-8")  # always encodable, e.g. for a JSON index
    odd = next(f for f in files if f.relpath_bytes.startswith(b"b/non-utf8"))
    with pytest.raises(UnicodeEncodeError):
        odd.relpath.encode("utf-8")  # why relpath_bytes / relpath_text exist
    assert odd.relpath_text == "b/non-utf8-\\xff\\xfe.dcm"
    assert classify(odd) == "dicom"


def test_state_dir_skipped(tree: Path) -> None:
    state = tree / ".dicomsafe"
    state.mkdir()
    (state / "ledger.sqlite").write_bytes(b"x")
    stats = WalkStats()
    (tree / "sneaky.dcm").symlink_to(".dicomsafe/ledger.sqlite")
    (tree / "sneaky_dir").symlink_to(".dicomsafe")
    found = rels(list(discover(tree, stats=stats)))
    assert not [r for r in found if "ledger" in r or "sneaky" in r]
    assert stats.state_dirs == 1 and stats.excluded == 2


def test_exclude_output_dirs_inside_source(tree: Path) -> None:
    dst = tree / "out"
    (dst / "x").mkdir(parents=True)
    shutil.copyfile(tf("CT_small.dcm"), dst / "x" / "written.dcm")
    (tree / "alias").symlink_to("out")  # a link to the excluded directory is excluded too
    (tree / "alias2.dcm").symlink_to("out/x/written.dcm")  # and a link to a file inside it
    stats = WalkStats()
    files = list(discover(tree, stats=stats, exclude=[dst, tree / "does-not-exist"]))
    assert not [f for f in files if "written" in f.relpath or "alias" in f.relpath]
    assert stats.excluded == 3
    assert len(files) == 6


def test_fifo_is_accounted_as_unreadable(tree: Path) -> None:
    """Tests run as root, so chmod 000 does not make a file unreadable; a FIFO is an input that
    cannot be read as a file (and must not block the walk or the sniff)."""
    os.mkfifo(tree / "b" / "pipe.dcm")
    files = list(discover(tree))
    pipe = next(f for f in files if f.relpath == "b/pipe.dcm")
    assert not pipe.regular
    assert classify(pipe) == "unreadable"
    units, _ = group_studies(files)
    assert pipe in units[-1].files and units[-1].study_uid == ""


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read mode-000 files")
def test_mode_000_file_is_unreadable(tree: Path) -> None:
    p = tree / "a" / "CT_small.dcm"
    p.chmod(0)
    try:
        f = next(f for f in discover(tree) if f.relpath == "a/CT_small.dcm")
        assert classify(f) == "unreadable"
    finally:
        p.chmod(0o644)


def test_unlistable_directory_is_counted(tree: Path) -> None:
    """A directory we cannot list (here: replaced by a dangling entry mid-walk is hard to stage,
    so use a directory whose permissions deny listing when not root)."""
    if os.geteuid() == 0:
        pytest.skip("root can list mode-000 directories")
    d = tree / "locked"
    d.mkdir()
    d.chmod(0)
    try:
        stats = WalkStats()
        list(discover(tree, stats=stats))
        assert stats.dirs_unreadable == 1
    finally:
        d.chmod(0o755)


def test_classify(tree: Path) -> None:
    got = {f.relpath: classify(f) for f in discover(tree)}
    assert got == {
        "a/CT_small.dcm": "dicom",
        "a/MR_small.dcm": "dicom",
        "a/notes.txt": "not-dicom",
        "b/MR copy.dcm": "dicom",
        "b/empty.dcm": "empty",
        "c/rtplan_truncated.dcm": "dicom",
    }


def test_group_studies_by_uid_not_folder(tree: Path) -> None:
    shutil.copytree(TEST_DICOMDIR, tree / "dd")
    (tree / "c" / "cut.dcm").write_bytes(tf("CT_small.dcm").read_bytes()[:400])  # ends before the UID
    files = list(discover(tree))
    units, others = group_studies(files)
    ct_uid = pydicom.dcmread(tf("CT_small.dcm")).StudyInstanceUID
    mr_uid = pydicom.dcmread(tf("MR_small.dcm")).StudyInstanceUID
    plan_uid = pydicom.dcmread(tf("rtplan.dcm")).StudyInstanceUID
    by_uid = {u.study_uid: rels(u.files) for u in units}
    assert by_uid[ct_uid] == ["a/CT_small.dcm"]
    assert by_uid[mr_uid] == ["a/MR_small.dcm", "b/MR copy.dcm"]  # two folders, one study
    # a truncated file is grouped by the UID its first bytes show (its worker quarantines it);
    # one cut before the UID joins the "unknown study" unit
    assert by_uid[plan_uid] == ["c/rtplan_truncated.dcm"]
    assert by_uid[""] == ["c/cut.dcm"]
    assert units[-1].study_uid == ""  # the "unknown study" unit comes last
    assert [u.study_uid for u in units[:-1]] == sorted(u.study_uid for u in units[:-1])
    kinds = {f.relpath: k for f, k in others}
    assert kinds["a/notes.txt"] == "not-dicom"
    assert kinds["b/empty.dcm"] == "empty"
    assert kinds["dd/DICOMDIR"] == "dicomdir"
    # every input is in exactly one place
    placed = [f for u in units for f in u.files] + [f for f, _ in others]
    assert sorted(rels(placed)) == sorted(rels(files))
    assert len(placed) == len(files)


def test_group_studies_two_studies_in_one_folder(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        ds = pydicom.dcmread(tf("CT_small.dcm"))
        ds.StudyInstanceUID = f"1.2.3.{i % 2}"
        ds.SOPInstanceUID = f"1.2.3.9.{i}"
        ds.save_as(src / f"f{i}.dcm")
    ds = pydicom.dcmread(tf("CT_small.dcm"))
    del ds.StudyInstanceUID
    ds.save_as(src / "nostudy.dcm")
    units, others = group_studies(discover(src))
    assert [(u.study_uid, rels(u.files)) for u in units] == [
        ("1.2.3.0", ["f0.dcm", "f2.dcm"]),
        ("1.2.3.1", ["f1.dcm"]),
        ("", ["nostudy.dcm"]),
    ]
    assert others == []


def test_empty_tree(tmp_path: Path) -> None:
    assert list(discover(tmp_path)) == []
    assert group_studies([]) == ([], [])


TEST_DICOMDIR = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests"


def test_peeked_study_uid_agrees_with_the_header_read(tmp_path):
    """The 64 KiB peek either finds the very StudyInstanceUID the full header read finds, or
    declines (None) — for every bundled pydicom file and a fake-PHI corpus. (Where the full read
    fails, a truncated file, the peek may still see the UID: the file is grouped with its study
    and quarantined by the worker's full read.)"""
    from pydicom.data import get_testdata_file

    from dicomsafe import dicomio
    from dicomsafe.corpus import build_ct_series
    from dicomsafe.discover import SourceFile, classify_study, study_uid_of

    bundled = sorted(p for p in Path(get_testdata_file("CT_small.dcm", download=False)).parent.iterdir()
                     if p.is_file())
    built = build_ct_series(tmp_path / "ct", 6, rows=16, cols=16, patients=2)
    peeked = declined = 0
    for path in bundled + built:
        sf = next(iter(discover_one(path)))
        try:
            kind, uid = dicomio.sniff_study(path)
        except Exception:  # noqa: BLE001 - unreadable files are classified elsewhere
            continue
        if kind != "dicom":
            assert uid is None
            continue
        full = study_uid_of(sf)
        if uid is None:
            declined += 1
            assert classify_study(sf) == (kind, full), path.name
        elif full:
            peeked += 1
            assert uid == full, path.name
            assert classify_study(sf) == (kind, full), path.name
        else:
            assert path.name in {"MR_truncated.dcm", "rtplan_truncated.dcm"}
    assert peeked >= 40 and declined >= 1
    assert all(dicomio.sniff_study(p)[1] is not None for p in built)


def discover_one(path):
    """SourceFile records for one file (through the real discovery walk of its folder)."""
    from dicomsafe.discover import discover

    return [sf for sf in discover(path.parent) if Path(sf.path) == path]
