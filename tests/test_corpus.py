"""The identified corpus, the bulk generators and the mutants: ground truth must itself be true."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import warnings
from collections import Counter
from pathlib import Path

import pydicom
import pytest

from dicomsafe.corpus import (
    Corpus,
    assert_no_planted,
    build_corpus,
    build_ct_series,
    build_multiframe,
    describe_changes,
    find_planted,
    format_table,
    match_outputs,
)
from dicomsafe.mutants import MUTATION_KINDS, build_mutants, mutant_kind, parse_layout

pytestmark = pytest.mark.filterwarnings("ignore")


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_gives_byte_identical_tree(corpus, tmp_path):
    again = build_corpus(tmp_path / "again", seed=0, patients=3)
    assert _tree(corpus.root) == _tree(again.root)
    assert again.planted == corpus.planted
    assert [p.relative_to(again.root) for p in again.files] == [p.relative_to(corpus.root) for p in corpus.files]


def test_other_seed_gives_other_phi_and_uids(corpus, tmp_path):
    other = build_corpus(tmp_path / "other", seed=1, patients=3)
    assert set(other.uids).isdisjoint(corpus.uids)
    assert set(other.planted_by_kind["patient_id"]).isdisjoint(corpus.planted_by_kind["patient_id"])


def test_refuses_a_non_empty_destination(tmp_path):
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_corpus(tmp_path)
    assert (tmp_path / "x").read_text() == "keep me"


def test_manifest_round_trip(corpus):
    again = Corpus.from_json(corpus.root, corpus.to_json())
    assert again.files == corpus.files
    assert again.expected == corpus.expected
    assert again.needles == corpus.needles
    assert again.studies == corpus.studies
    assert again.references == corpus.references


# --- planted values ----------------------------------------------------------------------------


def test_every_planted_value_is_really_present(corpus):
    blobs = [p.read_bytes() for p in corpus.files]
    paths = [os.fsencode(str(p.relative_to(corpus.root))) for p in corpus.files]
    missing = [v for v, forms in corpus.needles.items()
               if not any(f in b for f in forms for b in blobs + paths)]
    assert missing == []


def test_planted_values_are_long_unique_and_absent_from_pydicom_files(corpus, pydicom_test_files):
    assert len(corpus.planted) == len(set(corpus.planted)) >= 50
    assert all(len(v) >= 4 for v in corpus.planted)
    assert set(corpus.planted) == {v for vs in corpus.planted_by_kind.values() for v in vs}
    originals = [p.read_bytes() for p in pydicom_test_files]
    # so a hit in an output can only come from the planting, never from pydicom's own data
    assert [n for n in corpus.all_needles() if any(n in b for b in originals)] == []


def test_planted_kinds_cover_the_issue(corpus):
    kinds = set(corpus.planted_by_kind)
    assert {"name", "patient_id", "birth_date", "address", "phone", "ssn", "other_id", "request_id",
            "physician", "accession", "institution", "name_nonlatin", "email"} <= kinds


def test_phi_hides_where_the_issue_says(corpus):
    written = [p for p in corpus.with_outcome("written") if "no-meta" not in corpus.features[p]]
    ds = _read(written[0])
    who = next(w for w in corpus.patients if w.patient_id == ds.PatientID)
    assert ds.OtherPatientIDsSequence[0].PatientID == who.other_id
    assert ds.RequestAttributesSequence[0].RequestedProcedureID == who.requested_procedure_id
    assert who.ssn in ds.StudyDescription and who.family in ds.StudyDescription
    assert who.ssn_digits in ds.ImageComments
    block = ds.private_block(0x0033, "ZZFAKE_VENDOR PHI 1.0")
    assert block[0x10].value == who.name
    nested = block[0x20].value[0].private_block(0x0033, "ZZFAKE_VENDOR PHI 1.0")
    assert nested[0x10].value == who.other_id
    # directory names carry name and id
    assert f"{who.name}_{who.patient_id}" in written[0].relative_to(corpus.root).parts[0]


def test_preamble_padding_and_polyglot(corpus):
    pe = corpus.with_feature("polyglot-pe")
    assert len(pe) == 1 and pe[0].read_bytes()[:2] == b"MZ"
    named = corpus.with_feature("preamble-phi")
    assert named and all(any(n in p.read_bytes()[:128] for n in corpus.needles[corpus.patients[0].name]
                             + corpus.needles[corpus.patients[1].name] + corpus.needles[corpus.patients[2].name])
                         for p in named)
    padded = corpus.with_feature("trailing-padding")
    assert padded
    for p in padded:
        ds = _read(p)
        assert b"PAD " in ds[0xFFFCFFFC].value


def test_sr_has_phi_at_depth_two_and_a_resolvable_image_reference(corpus):
    srs = corpus.with_feature("sr")
    assert len(srs) >= 2
    for p in srs:
        ds = _read(p)
        box = ds.ContentSequence[-1]
        kids = {it.ValueType: it for it in box.ContentSequence}
        assert {"TEXT", "PNAME", "DATE", "IMAGE", "CONTAINER"} <= set(kids)
        assert str(kids["PNAME"].PersonName) in corpus.planted
        assert kids["CONTAINER"].ContentSequence[0].ValueType == "TEXT"  # depth 3
    by_sop = {_read(p).SOPInstanceUID: p for p in corpus.with_outcome("written")}
    for ref in corpus.references:
        assert ref.source.exists() and ref.target.exists()
        src, target_uid = _read(ref.source), _read(ref.target).SOPInstanceUID
        assert by_sop[target_uid] == ref.target
        assert target_uid.encode() in ref.source.read_bytes()
        assert src.StudyInstanceUID == _read(ref.target).StudyInstanceUID


def test_overlay_text_planted(corpus):
    ov = corpus.with_feature("overlay")
    assert ov
    ds = _read(ov[0])
    assert ds[0x60000022].value.split()[0] in corpus.planted
    assert str(ds[0x60001500].value) in corpus.planted


def test_non_latin_names_are_written_in_their_own_character_set(corpus):
    charset_files = [p for p in corpus.files if any(f.startswith("charset-") for f in corpus.features.get(p, []))]
    assert len(charset_files) >= 10
    nonlatin = set(corpus.planted_by_kind["name_nonlatin"])
    for p in charset_files:
        ds = _read(p)
        groups = [g for g in str(ds.PatientName).split("=") if g]
        assert any(g in nonlatin for g in groups), p.name
    ru = next(p for p in charset_files if "charset-ru" in corpus.features[p])
    raw = ru.read_bytes()
    value = next(v for v in nonlatin if v[0] in "АБВГДЕЖЗИКЛМНОПРСТУФХЦЧШЩЭЮЯ")
    assert value.encode("iso8859_5") in raw and value.encode("utf-8") not in raw


# --- outcomes and grouping ---------------------------------------------------------------------


def test_expected_outcomes(corpus):
    counts = Counter(corpus.expected.values())
    assert counts["written"] >= 35 and counts["quarantined"] == 2 and counts["skipped"] == 2
    assert set(corpus.expected) == set(corpus.files)
    assert sorted(p for p in corpus.root.rglob("*") if p.is_file()) == corpus.files
    for p in corpus.with_outcome("written"):
        ds = _read(p)
        assert ds.PatientID in corpus.planted_by_kind["patient_id"]
        if "no-meta" in corpus.features[p]:
            assert p.read_bytes()[128:132] != b"DICM"
            with pytest.raises(pydicom.errors.InvalidDicomError):
                pydicom.dcmread(p)
        else:
            pydicom.dcmread(p)  # strict read works
            assert p.read_bytes()[128:132] == b"DICM"
    for p in corpus.with_outcome("skipped"):
        with pytest.raises(pydicom.errors.InvalidDicomError):
            pydicom.dcmread(p)


def test_truncated_files_really_are_truncated(corpus):
    (head,) = corpus.with_feature("truncated-header")
    (pix,) = corpus.with_feature("truncated-pixels")
    originals = [p.read_bytes() for p in corpus.with_outcome("written")]
    for p in (head, pix):
        data = p.read_bytes()
        assert any(o.startswith(data) and len(o) > len(data) for o in originals)
    # the header cut falls inside a value: its declared length runs past the end of the file
    lay = parse_layout(pix.read_bytes())
    px = lay.pixel()
    assert px.value_offset + px.length > len(lay.data)


def test_coverage_of_modalities_and_encodings(corpus):
    feats = {f for fs in corpus.features.values() for f in fs}
    assert {"big-endian", "implicit-vr", "explicit-le", "jpeg", "jpeg2000", "rle", "deflate", "multiframe",
            "sr", "rt", "seg", "ecg", "overlay", "palette", "ybr", "rgb", "polyglot-pe", "preamble-phi", "preamble-tiff",
            "trailing-padding", "no-meta", "truncated-header", "truncated-pixels", "not-dicom",
            "empty"} <= feats
    assert {"charset-ja", "charset-ko", "charset-zh", "charset-zh-utf8", "charset-ru", "charset-el",
            "charset-ar", "charset-he", "charset-latin1"} <= feats
    mods = {_read(p).Modality for p in corpus.with_outcome("written")}
    assert {"CT", "MR", "US", "NM", "SR", "RTPLAN", "RTSTRUCT", "RTDOSE", "SEG", "ECG", "OT"} <= mods
    ts = {_read(p).file_meta.TransferSyntaxUID for p in corpus.with_outcome("written")
          if "no-meta" not in corpus.features[p]}
    assert {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5",
            "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.1.99"} <= ts


def test_studies_and_series_ground_truth(corpus):
    written = corpus.with_outcome("written")
    assert sorted(p for ps in corpus.studies.values() for p in ps) == sorted(written)
    assert sorted(p for ps in corpus.series.values() for p in ps) == sorted(written)
    sops = []
    for uid, paths in corpus.studies.items():
        for p in paths:
            ds = _read(p)
            assert ds.StudyInstanceUID == uid
            sops.append(ds.SOPInstanceUID)
    for uid, paths in corpus.series.items():
        assert {_read(p).SeriesInstanceUID for p in paths} == {uid}
        assert len({_read(p).StudyInstanceUID for p in paths}) == 1
    assert len(sops) == len(set(sops))
    assert set(sops) <= set(corpus.uids)
    # one patient identity per study
    for paths in corpus.studies.values():
        assert len({_read(p).PatientID for p in paths}) == 1
    assert len(corpus.studies) >= 8


def test_identity_is_consistent_per_patient(corpus):
    by_id: dict[str, set] = {}
    for p in corpus.with_outcome("written"):
        ds = _read(p)
        by_id.setdefault(ds.PatientID, set()).add((ds.PatientBirthDate, ds.PatientSex, str(ds.PatientAddress)))
    assert len(by_id) == 3
    assert all(len(v) == 1 for v in by_id.values())


# --- helpers for tests and the demo --------------------------------------------------------------


def test_find_planted_sees_paths_bytes_and_text(corpus, tmp_path):
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "a.txt").write_text("nothing to see")
    assert find_planted(corpus, clean) == []
    who = corpus.patients[1]
    (clean / f"{who.patient_id}.bin").write_bytes(b"x")
    (clean / "b.bin").write_bytes(b"..." + who.ssn.encode() + b"...")
    hits = find_planted(corpus, clean, text=f"log line about {who.family}")
    assert ("<text>", "name") in hits
    assert ("<patient_id>.bin (path)", "patient_id") in hits  # the value itself is never repeated
    assert ("b.bin", "ssn") in hits
    assert all(who.family not in w for w, _ in hits if w != "<text>")
    assert find_planted(corpus, None, text=b"clean") == []
    with pytest.raises(AssertionError) as err:
        assert_no_planted(corpus, clean, text=f"{who.given}")
    assert "ssn in b.bin" in str(err.value) and who.ssn not in str(err.value) and who.given not in str(err.value)
    assert_no_planted(corpus, tmp_path / "nothing-here", text="all clean")


def test_describe_changes_and_match_outputs(corpus, tmp_path):
    src = next(p for p in corpus.with_outcome("written") if _read(p).Modality == "CT")
    out = tmp_path / "out" / "x.dcm"
    out.parent.mkdir()
    ds = _read(src)
    ds.PatientName = "ANON^0001"
    ds.PatientID = "TOKEN1"
    del ds.PatientBirthDate
    ds.save_as(out)
    rows = describe_changes(src, out)
    table = dict((a, (b, c)) for a, b, c in rows)
    assert table["PatientName"] == (corpus.patients[0].name, "ANON^0001")
    assert table["PatientBirthDate"] == (corpus.patients[0].birth_date, "(absent)")
    assert table["Modality"] == ("CT", "CT")
    assert "UID" not in table["StudyInstanceUID"][0] and table["StudyInstanceUID"][0].endswith("…")
    text = format_table("t", rows)
    assert "PatientName" in text and "ANON^0001" in text
    assert describe_changes(src, None)[0][2] == "(no output)"
    other = next(p for p in corpus.with_outcome("written") if _read(p).Modality == "US")
    assert match_outputs([src, other], tmp_path / "out") == {src: out, other: None}


# --- bulk generators ----------------------------------------------------------------------------


def test_build_ct_series(tmp_path):
    files = build_ct_series(tmp_path, 5, rows=64, cols=64, seed=3, patients=2)
    assert len(files) == 5 and len(set(files)) == 5
    sops = set()
    for p in files:
        ds = pydicom.dcmread(p)
        assert (ds.Rows, ds.Columns, ds.BitsAllocated, ds.Modality) == (64, 64, 16, "CT")
        assert len(ds.PixelData) == 64 * 64 * 2
        assert ds.PatientName.family_name.encode() in p.parent.parent.name.encode()
        sops.add(ds.SOPInstanceUID)
    assert len(sops) == 5
    assert len({pydicom.dcmread(p).StudyInstanceUID for p in files}) == 2
    again = build_ct_series(tmp_path / "again", 5, rows=64, cols=64, seed=3, patients=2)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in files]


def test_build_multiframe_streams_a_readable_file(tmp_path):
    path = build_multiframe(tmp_path, 300_000, rows=64, cols=64, chunk_frames=4)
    ds = pydicom.dcmread(path)
    frames = 300_000 // (64 * 64 * 2)
    assert int(ds.NumberOfFrames) == frames
    assert len(ds.PixelData) == frames * 64 * 64 * 2
    assert ds.pixel_array.shape == (frames, 64, 64)
    assert path.stat().st_size < 300_000 + 4096


# --- mutants ----------------------------------------------------------------------------------


def test_mutants_are_deterministic_and_counted(corpus, mutants, tmp_path):
    assert len(mutants) == 300 and len(set(mutants)) == 300
    src = [p for p in corpus.with_outcome("written") if os.path.getsize(p) < 64 * 1024]
    again = build_mutants(src, tmp_path / "again", n=300, seed=0)
    assert [p.name for p in again] == [p.name for p in mutants]
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in mutants]
    other = build_mutants(src, tmp_path / "other", n=300, seed=1)
    assert [p.read_bytes() for p in other] != [p.read_bytes() for p in mutants]


def test_mutants_cover_every_kind_and_differ_from_sources(corpus, mutants):
    kinds = Counter(mutant_kind(p) for p in mutants)
    assert set(kinds) == set(MUTATION_KINDS)
    originals = {hashlib.sha256(p.read_bytes()).digest() for p in corpus.with_outcome("written")}
    assert all(hashlib.sha256(p.read_bytes()).digest() not in originals for p in mutants)


def test_mutants_keep_phi_to_leak(corpus, mutants):
    needles = corpus.all_needles()
    with_phi = [p for p in mutants if any(n in p.read_bytes() for n in needles)]
    assert len(with_phi) >= 250  # all but the tiniest truncations still carry planted PHI


def test_swallow_neighbour_hides_phi_inside_another_value(corpus, mutants):
    sw = [p for p in mutants if mutant_kind(p) == "swallow-neighbour"]
    assert sw
    ids = corpus.planted_by_kind["patient_id"]
    hidden = 0
    for p in sw:
        ds = _read(p)
        # the neighbour is gone as an element, but its value sits inside the swallowing element
        for elem in ds:
            if elem.tag != 0x00100020 and isinstance(elem.value, (bytes, str)):
                raw = elem.value.encode("latin-1", "replace") if isinstance(elem.value, str) else elem.value
                if any(i.encode() in raw for i in ids) and elem.tag not in (0x00204000, 0x00330010):
                    hidden += 1
                    break
    assert hidden >= 1


def test_truncation_mutants_are_shorter_and_polyglots_keep_dicm(corpus, mutants):
    for p in mutants:
        kind = mutant_kind(p)
        data = p.read_bytes()
        if kind.startswith("polyglot-"):
            assert data[128:132] == b"DICM"
            assert data[:2] in (b"MZ", b"\x7fE", b"PK", b"#!", b"\xcf\xfa")
        if kind == "truncate-preamble":
            assert len(data) < 128


# --- fixtures other areas rely on ------------------------------------------------------------


def test_secret_file_fixture(secret_file, other_secret_file, secret):
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    lines = [ln for ln in secret_file.read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines == [secret.hex()] and len(lines[0]) == 64
    assert other_secret_file.read_bytes() != secret_file.read_bytes()


def test_pydicom_test_files_fixture(pydicom_test_files):
    names = {p.name for p in pydicom_test_files}
    assert {"CT_small.dcm", "chrH31.dcm", "rtplan.dcm", "no_meta.dcm"} <= names
    assert len(pydicom_test_files) >= 90


def test_corpus_command_line(corpus, tmp_path):
    import json
    import subprocess
    import sys

    # another process with another hash seed must still build the very same bytes
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), PYTHONHASHSEED="12345")
    run = lambda *a: subprocess.run([sys.executable, "-m", "dicomsafe.corpus", *map(str, a)],  # noqa: E731
                                    capture_output=True, text=True, env=env)
    r = run("build", tmp_path / "src", "--manifest", tmp_path / "m.json")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert _tree(tmp_path / "src") == _tree(corpus.root)
    assert manifest == json.loads(json.dumps(corpus.to_json()))
    assert "Traceback" not in r.stderr and not any(v in r.stdout + r.stderr for v in manifest["planted"])
    assert run("leaks", tmp_path / "m.json", tmp_path / "src").returncode == 1
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "x.dcm").write_bytes(b"nothing")
    assert run("leaks", tmp_path / "m.json", clean).returncode == 0
    shutil.copytree(tmp_path / "src", tmp_path / "copy")
    r = run("describe", tmp_path / "src", tmp_path / "copy", "-n", "3")
    assert r.returncode == 0 and r.stdout.count("PatientName") == 3


def test_hostile_corpus_adds_file_system_oddities(tmp_path):
    import json

    c = build_corpus(tmp_path / "h", hostile=True)
    feats = {f for fs in c.features.values() for f in fs}
    assert {"name-with-spaces", "name-non-utf8", "name-newline", "duplicate-exact", "duplicate-conflict",
            "dicomdir", "pdf", "symlink-outside", "symlink-dangling", "symlink-loop"} <= feats
    (exact,) = c.with_feature("duplicate-exact")
    (conflict,) = c.with_feature("duplicate-conflict")
    origin = next(p for p in c.with_outcome("written") if p.read_bytes() == exact.read_bytes())
    assert _read(conflict).SOPInstanceUID == _read(origin).SOPInstanceUID
    assert conflict.read_bytes() != origin.read_bytes()
    (odd,) = c.with_feature("name-non-utf8")
    assert b"\xff" in os.fsencode(odd.name) and "\n" in odd.name
    assert _read(odd).SOPInstanceUID in c.uids
    for p in c.files:
        if any(f.startswith("symlink") for f in c.features[p]):
            assert p.is_symlink() and c.expected[p] == "skipped"
    loop = next(p for p, f in c.features.items() if "symlink-loop" in f)
    assert loop.is_symlink() and loop.resolve() == c.root.resolve()
    # written files keep their grouping; the manifest survives non-UTF-8 names
    assert sorted(p for ps in c.studies.values() for p in ps) == sorted(c.with_outcome("written"))
    back = Corpus.from_json(c.root, json.loads(json.dumps(c.to_json())))
    assert back.files == c.files and back.expected == c.expected
