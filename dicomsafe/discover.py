"""Find the input files of a run and group them into studies.

Why this module exists: "every input accounted" starts with a precise, repeatable definition of
what an input is. Archives contain symlinks (some pointing outside the tree, some in loops), hard
links, names that are not valid UTF-8 or contain newlines, FIFOs, unreadable files, and the same
study spread over many folders. The rules here:

- Order is deterministic: files are yielded sorted by the bytes of their relative path, so two runs
  over the same tree see the same inputs in the same order on any machine and locale.
- A symlink is followed only when its fully resolved target lies inside the source tree; a link
  out of the tree, a broken link and a link loop are skipped (and counted in :class:`WalkStats`).
  Directory symlink loops cannot trap the walk: each real directory is listed once.
- One file = one input: entries are de-duplicated by (device, inode). A symlink to a file in the
  tree, and hard links (several names, one inode, hence the same bytes) count once. The kept name
  is the one reached without symlinks, else the first in sorted order; the others are listed in
  :attr:`SourceFile.aliases` so a report can mention them.
- Non-regular files (FIFOs, sockets, devices) are still yielded, with ``regular=False``, so they
  are accounted for; :func:`classify` calls them "unreadable" and they end up in quarantine.
  They are never opened in a way that could block.
- Our own state directories (``.dicomsafe``) are skipped.
- Studies are grouped by the StudyInstanceUID in each file's header, not by folder.

Paths can be PHI: no message or log line here contains one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from . import dicomio
from .errors import ConfigError, InputFileError

log = logging.getLogger(__name__)

STATE_DIR_NAMES = frozenset({".dicomsafe"})

#: classes returned by :func:`classify`
DICOM = "dicom"
DICOMDIR = "dicomdir"
NOT_DICOM = "not-dicom"
EMPTY = "empty"
UNREADABLE = "unreadable"

#: study_uid of the unit that holds DICOM files without a readable StudyInstanceUID
NO_STUDY = ""


@dataclass(frozen=True, slots=True, weakref_slot=True)  # weakly referable: tests watch them go
class SourceFile:
    """One input file, identified by (dev, ino); ``path`` is how it was reached under ``src``.

    Kept small because a run holds one per input while it groups the tree: slotted, and the
    path made on demand from ``root`` (one string shared by every file of a walk) and
    ``relpath`` — a ``Path`` per file cost ~450 bytes more, its text alone ~130."""

    root: str  # the source directory as the walk was given it
    relpath: str  # relative to src; non-UTF-8 bytes kept via surrogateescape (os.fsdecode)
    size: int
    mtime_ns: int
    dev: int
    ino: int
    regular: bool = True
    aliases: tuple[str, ...] = ()  # other relpaths of the same (dev, ino): symlinks, hard links

    @property
    def fspath(self) -> str:
        """How the file was reached: ``root`` joined with ``relpath`` (as the walk listed it)."""
        return os.path.join(self.root, self.relpath)

    @property
    def path(self) -> Path:
        return Path(self.fspath)

    @property
    def relpath_bytes(self) -> bytes:
        """The relative path as raw bytes: exact even for non-UTF-8 names. Use this (not
        ``relpath.encode()``, which raises on such names) to derive keys and ids."""
        return os.fsencode(self.relpath)

    @property
    def relpath_text(self) -> str:
        """The relative path as printable, always UTF-8-encodable text (non-UTF-8 bytes become
        ``\\xNN``), for operator-side listings such as the quarantine index. Not unique in
        theory (a literal backslash sequence), so never use it as a key."""
        return self.relpath_bytes.decode("utf-8", "backslashreplace")


@dataclass
class WalkStats:
    """PHI-free counts of what the walk skipped, for the run report."""

    symlinks_outside: int = 0
    symlinks_broken: int = 0
    duplicates: int = 0  # extra names (symlinks, hard links) of a file already counted
    dirs_unreadable: int = 0
    dirs_revisited: int = 0  # directory reached twice (symlink to a dir in the tree, loops)
    vanished: int = 0  # listed, then gone before it could be examined
    state_dirs: int = 0
    excluded: int = 0  # entries matching ``exclude``


@dataclass
class StudyUnit:
    """All files of one study (the unit of work). ``study_uid == ""`` holds DICOM files whose
    study could not be determined; the pipeline processes (and quarantines) them one by one."""

    study_uid: str
    files: list[SourceFile] = field(default_factory=list)


def _inside(root_real: bytes, target_real: bytes) -> bool:
    """Is the resolved ``target_real`` the resolved root or below it?"""
    sep = os.sep.encode()
    return target_real == root_real or target_real.startswith(root_real.rstrip(sep) + sep)


def _in_skipped_dir(root_real: bytes, target_real: bytes, excluded: set[tuple[int, int]]) -> bool:
    """Does the resolved target lie in a state directory or an excluded directory of the tree?"""
    rel = target_real[len(root_real):].strip(os.sep.encode())
    if not rel:
        return False
    parts = rel.split(os.sep.encode())
    cur = root_real
    for part in parts:
        if os.fsdecode(part) in STATE_DIR_NAMES:
            return True
        cur = os.path.join(cur, part)
        if excluded:
            try:
                st = os.stat(cur)
            except OSError:
                return True
            if (st.st_dev, st.st_ino) in excluded:
                return True
    return False


def discover(
    src: str | os.PathLike[str],
    *,
    stats: WalkStats | None = None,
    exclude: Iterable[str | os.PathLike[str]] = (),
) -> Iterator[SourceFile]:
    """Yield every input file under ``src`` once, sorted by relative path bytes.

    ``exclude``: directories (or files) never to enter or yield, e.g. the destination or the
    quarantine directory when an operator puts them inside the source tree. They are matched by
    (device, inode), so any path or link to them is excluded too; missing ones are ignored.

    Raises ConfigError if ``src`` is missing or not a directory (the message never contains the
    path: the operator typed it, and it may name a patient).
    """
    stats = stats if stats is not None else WalkStats()
    root = Path(os.fspath(src))
    try:
        st_root = os.stat(root)
    except FileNotFoundError:
        raise ConfigError("source directory not found") from None
    except OSError as exc:
        raise ConfigError(f"source directory cannot be read ({exc.strerror})") from None
    if not stat.S_ISDIR(st_root.st_mode):
        raise ConfigError("source is not a directory")
    root_real = os.fsencode(os.path.realpath(root))
    excluded: set[tuple[int, int]] = set()
    for ex in exclude:
        try:
            st_ex = os.stat(ex)
        except OSError:
            continue
        excluded.add((st_ex.st_dev, st_ex.st_ino))

    # dev -> ino -> SourceFile without aliases (one small dict per device: no key tuple per
    # file), and the (dev, ino) of those found through a symlink
    found: dict[int, dict[int, SourceFile]] = {}
    found_via_link: set[tuple[int, int]] = set()
    root_text = os.fsdecode(os.fsencode(root))  # shared by every SourceFile of this walk
    dev_ints: dict[int, int] = {}
    aliases: dict[tuple[int, int], list[bytes]] = {}
    seen_dirs: set[tuple[int, int]] = {(st_root.st_dev, st_root.st_ino)}
    # stack of (directory path as bytes, relative prefix bytes, reached via a symlink)
    stack: list[tuple[bytes, bytes, bool]] = [(os.fsencode(root), b"", False)]
    # directories reached through a symlink wait until every real directory has been listed, so
    # a file is always found under its real name first
    link_stack: list[tuple[bytes, bytes, tuple[int, int]]] = []

    def add(st: os.stat_result, rel_b: bytes, via_link: bool) -> None:
        on_dev = found.setdefault(st.st_dev, {})
        sf = SourceFile(
            root=root_text,
            relpath=os.fsdecode(rel_b),
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            dev=dev_ints.setdefault(st.st_dev, st.st_dev),  # one int object per device
            ino=st.st_ino,
            regular=stat.S_ISREG(st.st_mode),
        )
        prev = on_dev.get(st.st_ino)
        if prev is None:
            on_dev[st.st_ino] = sf
            if via_link:
                found_via_link.add((st.st_dev, st.st_ino))
            return
        # another name of a file already found: the real name wins over a link, then the
        # smaller relative path; the others are kept as aliases
        key = (st.st_dev, st.st_ino)
        stats.duplicates += 1
        prev_rel_b = prev.relpath_bytes
        if (via_link, rel_b) < (key in found_via_link, prev_rel_b):
            on_dev[st.st_ino] = sf
            if via_link:
                found_via_link.add(key)
            else:
                found_via_link.discard(key)
            aliases.setdefault(key, []).append(prev_rel_b)
        else:
            aliases.setdefault(key, []).append(rel_b)

    while stack or link_stack:
        if stack:
            dir_b, rel_prefix, dir_via_link = stack.pop()
        else:
            dir_b, rel_prefix, key = link_stack.pop()
            if key in seen_dirs:
                stats.dirs_revisited += 1
                continue
            seen_dirs.add(key)
            dir_via_link = True
        try:
            with os.scandir(dir_b) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            stats.dirs_unreadable += 1
            continue
        subdirs: list[tuple[bytes, bytes, bool]] = []
        link_subdirs: list[tuple[bytes, bytes, bool, os.stat_result]] = []
        for entry in entries:
            name_b = entry.name  # bytes, because we scan a bytes path
            rel_b = rel_prefix + name_b
            path_b = entry.path
            try:
                is_link = entry.is_symlink()
                if is_link:
                    target_real = os.path.realpath(path_b)
                    if not _inside(root_real, target_real):
                        stats.symlinks_outside += 1
                        continue
                    if _in_skipped_dir(root_real, target_real, excluded):
                        stats.excluded += 1  # a link into .dicomsafe or an excluded directory
                        continue
                    try:
                        st = os.stat(path_b)  # follows the link
                    except OSError:
                        stats.symlinks_broken += 1  # broken or a loop (ELOOP)
                        continue
                else:
                    st = entry.stat(follow_symlinks=False)
            except OSError:  # gone (or unstat-able) between listing and looking
                stats.vanished += 1
                continue
            via_link = dir_via_link or is_link
            if (st.st_dev, st.st_ino) in excluded:
                stats.excluded += 1
                continue
            if stat.S_ISDIR(st.st_mode):
                if os.fsdecode(name_b) in STATE_DIR_NAMES:
                    stats.state_dirs += 1
                    continue
                if via_link:
                    link_subdirs.append((path_b, rel_b + b"/", True, st))
                else:
                    key = (st.st_dev, st.st_ino)
                    if key in seen_dirs:
                        stats.dirs_revisited += 1
                        continue
                    seen_dirs.add(key)
                    subdirs.append((path_b, rel_b + b"/", False))
            else:
                add(st, rel_b, via_link)
        # push in reverse so directories are listed in name order (the final sort decides anyway)
        stack.extend(reversed(subdirs))
        link_stack.extend(
            (p, r, (st.st_dev, st.st_ino)) for p, r, _, st in reversed(link_subdirs)
        )

    # Last first, so each entry is popped (and freed) as it is handed out: the walk's own
    # records do not stay alive beside the caller's list of what it yielded.
    ordered = sorted((sf for on_dev in found.values() for sf in on_dev.values()),
                     key=lambda sf: sf.relpath_bytes, reverse=True)
    found.clear()
    while ordered:
        sf = ordered.pop()
        extra = aliases.get((sf.dev, sf.ino))
        if extra:
            sf = dataclasses.replace(sf, aliases=tuple(os.fsdecode(a) for a in sorted(extra)))
        yield sf


def classify(sf: SourceFile) -> str:
    """"dicom", "dicomdir", "not-dicom", "empty" or "unreadable" (from the first bytes only)."""
    if not sf.regular:
        return UNREADABLE
    try:
        return dicomio.sniff(sf.fspath)
    except InputFileError:
        return UNREADABLE


def classify_study(sf: SourceFile) -> tuple[str, str]:
    """(class, StudyInstanceUID) of one file: :func:`classify` and :func:`study_uid_of` from one
    read of its first 64 KiB when the UID shows there plainly (dicomio.peek_study_uid), with the
    full header read only for the rest. The study is "" for anything but readable DICOM."""
    if not sf.regular:
        return UNREADABLE, NO_STUDY
    try:
        kind, uid = dicomio.sniff_study(sf.fspath)
    except InputFileError:
        return UNREADABLE, NO_STUDY
    if kind != DICOM:
        return kind, NO_STUDY
    return kind, uid if uid is not None else study_uid_of(sf)


def study_uid_of(sf: SourceFile) -> str:
    """StudyInstanceUID from the header, or "" when the file cannot be read or has none."""
    try:
        ds = dicomio.read_header(sf.fspath)
    except InputFileError:
        return NO_STUDY
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warning texts can quote values
            value = ds.get("StudyInstanceUID")
    except Exception:  # noqa: BLE001 - a value pydicom cannot convert: study unknown
        return NO_STUDY
    if not isinstance(value, str):  # absent, or multi-valued (malformed)
        return NO_STUDY
    return value.strip(" \x00")


def group_studies(
    files: Iterable[SourceFile],
) -> tuple[list[StudyUnit], list[tuple[SourceFile, str]]]:
    """Group DICOM files into studies by StudyInstanceUID (not by folder).

    Returns (units, others):
    - units sorted by study_uid, files in each by relative path; the unit with study_uid ""
      (DICOM without a readable StudyInstanceUID, and unreadable files) comes last;
    - others: (file, class) for "not-dicom", "dicomdir" and "empty" files, in input order. The
      pipeline counts them as skipped.
    """
    by_study: dict[str, list[SourceFile]] = {}
    others: list[tuple[SourceFile, str]] = []
    for sf in files:
        kind, uid = classify_study(sf)
        if kind not in (DICOM, UNREADABLE):
            others.append((sf, kind))
            continue
        by_study.setdefault(uid, []).append(sf)
    units = [
        StudyUnit(uid, sorted(fs, key=lambda f: f.relpath_bytes))
        for uid, fs in sorted(by_study.items(), key=lambda kv: (kv[0] == NO_STUDY, kv[0]))
    ]
    return units, others
