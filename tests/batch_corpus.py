"""Test helper for the batch tests: a small tree of real DICOM files with planted PHI.

Built from pydicom's CT_small.dcm (shipped in the wheel, offline). Each patient gets its own
name/id, each study its own StudyInstanceUID; folder names carry the patient's name too, so a
test can grep a destination for every planted value, including in paths.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

SECRET = bytes(range(32))


@dataclass
class Tree:
    root: Path
    phi: list[str] = field(default_factory=list)
    study_uids: list[str] = field(default_factory=list)
    patient_ids: list[str] = field(default_factory=list)
    files: int = 0


def _uid(seed: str) -> str:
    return generate_uid(prefix="1.2.826.0.1.3680043.8.498.", entropy_srcs=[seed])


def add_study(tree: Tree, patient: int, study: int, files: int, *, start: int = 0) -> str:
    """Write ``files`` instances of one study of ``patient``; returns the study's folder."""
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    name = f"ZZTESTNAME{patient:03d}^PLANTED"
    pid = f"ZZMRN{patient:05d}X"
    study_uid = _uid(f"study-{patient}-{study}")
    series_uid = _uid(f"series-{patient}-{study}")
    folder = tree.root / f"ZZTESTNAME{patient:03d}" / f"study{study}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + files):
        ds = base.copy()
        ds.PatientName = name
        ds.PatientID = pid
        ds.PatientBirthDate = "19450101"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = _uid(f"sop-{patient}-{study}-{i}")
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyDate = f"2020{(study % 12) + 1:02d}15"
        ds.AccessionNumber = f"ZZACC{patient:03d}{study:02d}"
        ds.InstanceNumber = i + 1
        ds.save_as(folder / f"img{i:04d}.dcm", enforce_file_format=True)
        tree.files += 1
    for v in (f"ZZTESTNAME{patient:03d}", pid, f"ZZACC{patient:03d}{study:02d}"):
        if v not in tree.phi:
            tree.phi.append(v)
    if pid not in tree.patient_ids:
        tree.patient_ids.append(pid)
    if study_uid not in tree.study_uids:
        tree.study_uids.append(study_uid)
    return str(folder)


def build_tree(root: Path, *, patients: int = 2, studies: int = 2, files: int = 3, notes: bool = True) -> Tree:
    tree = Tree(root)
    root.mkdir(parents=True, exist_ok=True)
    for p in range(patients):
        for s in range(studies):
            add_study(tree, p, s, files)
    if notes:
        (root / "notes ZZTESTNAME000.txt").write_text("operator notes, not DICOM\n")
        tree.files += 1
    return tree


def grep_tree(root: Path, needles: list[str]) -> list[tuple[str, str]]:
    """Every (relative path, needle) where a needle occurs in a path or in any file's bytes."""
    hits = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            for n in needles:
                if n in rel:
                    hits.append((rel, n))
            if p.is_file():
                data = p.read_bytes()
                for n in needles:
                    if n.encode() in data:
                        hits.append((rel, n))
    return hits


def tree_bytes(root: Path, *, skip_state: bool = True) -> dict[str, bytes]:
    """{relative path: content} of every file, without DST/.dicomsafe when skip_state."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if skip_state and rel.split("/")[0] == ".dicomsafe":
            continue
        if p.is_file():
            out[rel] = p.read_bytes()
    return out


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
