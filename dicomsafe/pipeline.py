"""A de-identification run over a tree: discover, group into studies, process, commit, report.

The run is split in two on purpose: workers (dicomsafe.deidentify) read, transform, write to
staging and verify; the single writer here commits staged files by rename, keeps the accounting
(inputs = written + quarantined + skipped), writes quarantine entries and the report. The batch
layer (executors, ledger, resume) plugs in at :func:`process_unit` and :class:`Writer`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .deidentify import Deidentifier, FileResult
from .discover import SourceFile, discover, group_studies
from .errors import ConfigError, OutputError
from .fsutil import atomic_writer, write_bytes_atomic
from .profiles import Profile
from .report import EXECUTABLE_PREAMBLES, FileEntries, Report, write_report  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

STATE_DIR = ".dicomsafe"
DEFAULT_QUARANTINE = "dicomsafe-quarantine"


@dataclass
class RunSettings:
    src: Path
    dst: Path
    profile: Profile
    secret: bytes
    quarantine: Path | None = None
    report: Path | None = None
    quiet: bool = False
    verify: bool = True
    review: Path | None = None  # operator-side HTML review of masked/quarantined images

    def resolved_quarantine(self) -> Path:
        return self.quarantine if self.quarantine is not None else Path.cwd() / DEFAULT_QUARANTINE

    def resolved_report(self) -> Path:
        return self.report if self.report is not None else self.dst / STATE_DIR / "report.json"


def _path_key(relpath: str) -> int:
    return int.from_bytes(hashlib.blake2b(relpath.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "little")


def check_layout(src: Path, dst: Path) -> None:
    """Refuse a missing source, DST inside SRC (outputs would be re-read as inputs) and SRC inside
    DST. Shared by every command that reads one tree and writes another."""
    if not src.is_dir():
        raise ConfigError("source directory not found")
    s, d = src.resolve(), dst.resolve()
    if d == s or d.is_relative_to(s):
        raise ConfigError("destination must not be inside the source directory")
    if s.is_relative_to(d):
        raise ConfigError("source must not be inside the destination directory")


def check_paths(src: Path, dst: Path, quarantine: Path, review: Path | None = None) -> None:
    """:func:`check_layout`, plus: quarantine and review pages never under DST (source paths and
    "before" images are PHI)."""
    check_layout(src, dst)
    d, q = dst.resolve(), quarantine.resolve()
    if q.is_relative_to(d):
        raise ConfigError("quarantine must not be under the destination (it holds source paths)")
    if q.exists() and not q.is_dir():
        raise ConfigError("the quarantine path exists and is not a directory")
    if review is not None and review.resolve().is_relative_to(d):
        raise ConfigError("the review directory must not be under the destination (it shows PHI)")


class Writer:
    """The single owner of DST: commits staged outputs, quarantines, keeps the report."""

    def __init__(self, settings: RunSettings, report: Report):
        self.s = settings
        self.report = report
        self._committed: set[int] = set()
        self.quarantine = settings.resolved_quarantine()
        self._qindex: list[dict] = []
        self.review = None
        if settings.review is not None:
            from .pixels import ReviewWriter

            self.review = ReviewWriter(settings.review, forbid_under=settings.dst)

    def commit(self, res: FileResult) -> FileResult:
        if res.outcome == "written":
            assert res.staged and res.out_relpath
            if self.is_committed(res.out_relpath):
                Path(res.staged).unlink(missing_ok=True)
                res = FileResult(file_id=res.file_id, outcome="quarantined", reason="duplicate-sop-instance",
                                 src_path=res.src_path, size=res.size, preamble_threat=res.preamble_threat,
                                 details=["another input has the same SOP Instance UID"])
            else:
                final = self.s.dst / res.out_relpath
                try:
                    final.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(res.staged, final)
                except OSError as exc:
                    raise OutputError(f"cannot commit output file ({exc.strerror})") from None
                self.mark_committed([res.out_relpath])
        if res.outcome == "quarantined":
            self._quarantine(res)
        if self.review is not None and res.pixel is not None:
            self.review.add(res.file_id, res.pixel)
        self.report.add(res)
        return res

    # The output paths committed so far (this run, and units a --resume skipped) are kept as
    # 64-bit digests, ~60 bytes each instead of a ~250-byte path string: a run over 100,000
    # inputs keeps 6 MB, not 25. Two paths sharing a digest (odds ~n²/2⁶⁵) would send the second
    # input to quarantine as a duplicate: fail closed, never a lost or overwritten output.
    def mark_committed(self, relpaths: Iterable[str]) -> None:
        self._committed.update(map(_path_key, relpaths))

    def is_committed(self, relpath: str) -> bool:
        return _path_key(relpath) in self._committed

    def _quarantine(self, res: FileResult) -> None:
        """Copy the input to QUARANTINE/<id> and index id → source path and reason (operator side)."""
        try:
            self.quarantine.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the quarantine directory ({exc.strerror})") from None
        with contextlib.suppress(OSError):
            os.chmod(self.quarantine, 0o700)
        if res.src_path:
            try:
                with open(res.src_path, "rb") as src, atomic_writer(self.quarantine / f"{res.file_id}.dcm", 0o600) as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            except OSError:
                log.warning("file %s: could not copy into quarantine (indexed only)", res.file_id)
        self._qindex.append({"id": res.file_id, "reason": res.reason, "details": res.details,
                             "source": os.fsencode(res.src_path or "").decode("utf-8", "surrogateescape")
                             .encode("utf-8", "backslashreplace").decode("utf-8")})

    def finish(self) -> None:
        """Close the review pages, append the quarantine index, write the report (OutputError if
        any of them cannot be written). Call once: the index is appended to what is on disk."""
        try:
            if self.review is not None:
                self.review.close()
            if self._qindex:
                path = self.quarantine / "index.jsonl"
                old = path.read_bytes() if path.exists() else b""
                new = b"".join(json.dumps(e, sort_keys=True).encode() + b"\n" for e in self._qindex)
                write_bytes_atomic(path, old + new, 0o600)
            write_report(self.report, self.s.resolved_report())
        except OSError as exc:
            raise OutputError(f"cannot write the report or the quarantine index ({exc.strerror})") from None


def plan_units(src: Path) -> tuple[list, list[tuple[SourceFile, str]]]:
    """Discover the tree and group DICOM files into studies (by StudyInstanceUID from headers)."""
    files = list(discover(src))
    return group_studies(files)


def process_unit(deid: Deidentifier, unit_files: Iterable[SourceFile], staging: Path,
                 file_id) -> Iterator[FileResult]:
    """Worker side: de-identify the files of one study, yielding staged results."""
    yield from deid.process_files([(sf.path, file_id(sf)) for sf in unit_files], staging)


def deidentify_tree(settings: RunSettings, *, progress: bool | None = None) -> Report:
    """Run a whole de-identification; returns the report (also written to disk)."""
    check_paths(settings.src, settings.dst, settings.resolved_quarantine(), settings.review)
    report = Report(profile=settings.profile.name, profile_hash=settings.profile.hash,
                    options=list(settings.profile.options), started=time.time(),
                    entries=FileEntries(settings.dst / STATE_DIR))
    t0 = time.perf_counter()
    deid = Deidentifier(settings.profile, settings.secret, verify=settings.verify)
    staging = settings.dst / STATE_DIR / "staging"
    if staging.exists():
        shutil.rmtree(staging)  # leftovers of a killed run: never final outputs
    staging.mkdir(parents=True, exist_ok=True)
    writer = Writer(settings, report)

    def file_id(sf: SourceFile) -> str:
        return deid.pseudo.keyed_id("file", sf.relpath)

    bar = None
    try:
        units, others = plan_units(settings.src)
        total = sum(len(u.files) for u in units) + len(others)
        bar = _progress(total, settings.quiet if progress is None else not progress)
        for sf, kind in others:
            writer.commit(FileResult(file_id=file_id(sf), outcome="skipped", reason=kind,
                                     src_path=sf.fspath, size=sf.size))
            bar.update(1)
        for unit in units:
            for res in process_unit(deid, unit.files, staging, file_id):
                writer.commit(res)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        shutil.rmtree(staging, ignore_errors=True)
        report.seconds = time.perf_counter() - t0
        writer.finish()
    return report


def _progress(total: int, quiet: bool):
    from tqdm import tqdm

    disable = quiet or not sys.stderr.isatty()
    return tqdm(total=total, unit="file", disable=disable, dynamic_ncols=True, leave=False)
