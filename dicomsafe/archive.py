"""The nightly encrypted archive of original studies: archive, restore, verify (DESIGN.md §8).

Layout of an archive destination ``DST``::

    DST/objects/<ab>/<study key>.v<N>.<age|dsa>   one encrypted tar per study and version
    DST/catalog/<NNNNNN>.<age|dsa>                encrypted catalog segments, one per run
    DST/.dicomsafe/ledger.sqlite                  keyed ids, sizes, mtimes, digests (clear, PHI-free)
    DST/.dicomsafe/audit.jsonl, lock, archive-report.json

Why these choices:

- *One object per study* (grouped by StudyInstanceUID from the headers, not folder names):
  restore and retention work per study, and an unchanged study is never rewritten.
- *Keyed names only*: ``<study key>`` = ``Pseudonymizer.keyed_id("study", uid)``; tar member
  names are keyed file ids. The clear study UID, patient id, study date and original relative
  paths exist only inside the ciphertext (the catalog, and a copy of the study's own catalog
  entry as the last member of its object, so each object is self-describing).
- *Catalog segments*: the nightly job holds only public recipients, so it cannot decrypt and
  rewrite a single catalog file. Each run that archives something writes one new segment; a
  reader merges them in order (the latest entry of a study wins). This deviates from the single
  ``DST/catalog.<fmt>`` file sketched in DESIGN.md §8; see docs/archive.md.
- *Streaming*: tar is produced in a thread into a pipe that the encryptor reads, so a study is
  never held in memory nor written in clear; the object appears by atomic rename only when
  complete. Restore streams the other way and renames each file only after its SHA-256
  matches the (authenticated) catalog.
- *Incremental*: a study is re-archived only if a file was added, removed or changed (size or
  mtime; ``checksum=True`` compares content too). It then gets a new object version; old
  versions stay until ``retention_days`` has passed.
- *Crash safety*: object first (atomic), then its ledger row, then — at the end of the run —
  the catalog segment and the ``cataloged`` mark. A unit done but not yet catalogued (killed
  run) is re-archived under the same version on the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Sequence

from . import __version__
from . import audit as audit_mod
from .errors import (
    ConfigError,
    CryptoError,
    DicomsafeError,
    InputFileError,
    IntegrityError,
    Interrupted,
    OutputError,
)
from .fsutil import atomic_writer
from .ledger import FileRecord, Ledger, OutputRecord
from .lock import DestinationLock, state_dir

log = logging.getLogger(__name__)

FORMAT_EXT = {"age": "age", "aes": "dsa"}
CATALOG_FORMAT = "dicomsafe-archive-catalog/1"
CATALOG_MEMBER = "catalog.json"
_CHUNK = 1 << 16
_OBJ_RE = re.compile(r"^(?P<key>[0-9a-f]{20})\.v(?P<ver>\d+)\.(?P<ext>age|dsa)$")
_SEG_RE = re.compile(r"^(?P<seq>\d{6})\.(?P<ext>age|dsa)$")


# -- small pure helpers -----------------------------------------------------------------------


def fs_text(relpath: str) -> str:
    """A str for HMAC/JSON from a relpath that may hold surrogate-escaped non-UTF-8 bytes.

    Valid UTF-8 names are returned unchanged, so keyed ids match the pipeline's.
    """
    return relpath.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def object_relpath(study_key: str, version: int, fmt: str) -> str:
    return f"objects/{study_key[:2]}/{study_key}.v{version}.{FORMAT_EXT[fmt]}"


def _safe_relpath(rel: str) -> Path:
    """Refuse absolute paths and ``..`` from a catalog before writing under OUT."""
    p = Path(rel)
    if p.is_absolute() or any(part in ("..", "") for part in p.parts) or not p.parts:
        raise IntegrityError("catalog holds an unsafe path; refusing to restore it")
    return p


def _norm_date(value: str | None) -> str | None:
    if value is None:
        return None
    v = value.replace("-", "").strip()
    if not re.fullmatch(r"\d{8}", v):
        raise ConfigError("--since must be a date YYYY-MM-DD or YYYYMMDD")
    return v


class _HashingReader(io.RawIOBase):
    """Reads a file, hashing what passes; tarfile pulls exactly ``size`` bytes through it."""

    def __init__(self, fh: IO[bytes]):
        self._fh = fh
        self.sha = hashlib.sha256()
        self.n = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self.sha.update(data)
        self.n += len(data)
        return data

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


class _HashingWriter(io.RawIOBase):
    def __init__(self, fh: IO[bytes]):
        self._fh = fh
        self.sha = hashlib.sha256()
        self.n = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        b = bytes(data)
        self._fh.write(b)
        self.sha.update(b)
        self.n += len(b)
        return len(b)


def encrypt_through_pipe(produce: Callable[[IO[bytes]], None], out: IO[bytes], recipients: Sequence[Any],
                         fmt: str) -> None:
    """Run ``produce(writer)`` in a thread feeding a pipe that the encryptor reads.

    Memory stays bounded by the pipe and chunk buffers whatever the study size; no cleartext
    touches the disk. An error in either side is re-raised here (the caller's atomic writer
    then discards the partial ciphertext).
    """
    from . import crypto

    rfd, wfd = os.pipe()
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            with os.fdopen(wfd, "wb", buffering=_CHUNK) as wf:
                produce(wf)
        except BrokenPipeError:
            pass  # the encryptor failed first; its error is the one to report
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            errors.append(exc)

    t = threading.Thread(target=producer, name="dicomsafe-tar", daemon=True)
    t.start()
    try:
        with os.fdopen(rfd, "rb", buffering=_CHUNK) as rf:
            crypto.encrypt_stream(rf, out, recipients, format=fmt)
            if t.is_alive():  # drain so the producer can finish (should be at EOF already)
                while rf.read(_CHUNK):
                    pass
    finally:
        t.join()
    if errors:
        raise errors[0]


def decrypt_through_pipe(src: IO[bytes], identities: Sequence[Any], consume: Callable[[IO[bytes]], Any]) -> Any:
    """Decrypt ``src`` in a thread into a pipe that ``consume(reader)`` reads (streaming)."""
    from . import crypto

    rfd, wfd = os.pipe()
    errors: list[BaseException] = []

    def producer() -> None:
        try:
            with os.fdopen(wfd, "wb", buffering=_CHUNK) as wf:
                crypto.decrypt_stream(src, wf, identities)
        except BrokenPipeError:
            pass
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    t = threading.Thread(target=producer, name="dicomsafe-decrypt", daemon=True)
    t.start()
    result: Any = None
    consumer_error: BaseException | None = None
    try:
        with os.fdopen(rfd, "rb", buffering=_CHUNK) as rf:
            try:
                result = consume(rf)
                while rf.read(_CHUNK):  # read to the end so a damaged tail is noticed
                    pass
            except BaseException as exc:  # noqa: BLE001
                consumer_error = exc
    finally:
        t.join()
    if errors:  # an authentication failure explains any consumer error: report it first
        raise errors[0]
    if consumer_error is not None:
        raise consumer_error
    return result


def _decrypt_to_bytes(path: Path, identities: Sequence[Any]) -> bytes:
    from . import crypto

    buf = io.BytesIO()
    with open(path, "rb") as fh:
        crypto.decrypt_stream(fh, buf, identities)
    return buf.getvalue()


# -- worker side: one study → one encrypted object ----------------------------------------------


@dataclass(frozen=True)
class ArchiveJob:
    """A study to archive. Holds source paths: lives only in memory of the run."""

    study_key: str
    study_uid: str
    version: int
    files: tuple[tuple[str, str, str, int, int], ...]  # (path, relpath, file key, size, mtime_ns)


@dataclass(frozen=True)
class ArchiveCtx:
    dst: str
    recipients: tuple[Any, ...]
    fmt: str
    patient_key_secret: bytes  # to derive the patient keyed id in the worker


@dataclass
class ArchiveResult:
    study_key: str
    version: int
    object: str
    object_sha256: str
    object_size: int
    files: list[FileRecord]
    entry: dict[str, Any]  # catalog entry: holds clear identifiers, only ever encrypted


class FileChangedError(InputFileError):
    """A source file changed while it was being archived; the study is retried next run."""

    def __init__(self, message: str):
        super().__init__("changed-during-run", message)


def _study_header_info(path: str) -> dict[str, str]:
    from . import dicomio

    try:
        ds = dicomio.read_header(path)
    except Exception:  # noqa: BLE001 - catalog metadata is best effort; the bytes are what count
        return {"patient_id": "", "study_date": ""}
    return {
        "patient_id": str(ds.get("PatientID", "") or "").strip(),
        "study_date": str(ds.get("StudyDate", "") or "").strip(),
    }


def archive_unit(job: ArchiveJob, ctx: ArchiveCtx) -> ArchiveResult:
    """Tar the study's original files into one encrypted object (runs in a worker)."""
    from .pseudonyms import Pseudonymizer

    info = _study_header_info(job.files[0][0]) if job.files else {"patient_id": "", "study_date": ""}
    pseudo = Pseudonymizer(ctx.patient_key_secret)
    entry: dict[str, Any] = {
        "study_key": job.study_key,
        "study_uid": job.study_uid,
        "patient_id": info["patient_id"],
        "patient_key": pseudo.keyed_id("patient", info["patient_id"]) if info["patient_id"] else "",
        "study_date": info["study_date"],
        "version": job.version,
        "archived": audit_mod.utc_now(),
        "files": [],
    }
    records: list[FileRecord] = []

    def produce(wf: IO[bytes]) -> None:
        with tarfile.open(fileobj=wf, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # >8 GiB files
            for path, relpath, fkey, size, mtime_ns in job.files:
                member = f"{fkey}.dcm"
                try:
                    fh = open(path, "rb")
                except FileNotFoundError:
                    raise FileChangedError("a source file vanished during the run") from None
                except OSError:
                    raise InputFileError("unreadable", "a source file cannot be read") from None
                with fh:
                    st = os.fstat(fh.fileno())
                    if st.st_size != size or st.st_mtime_ns != mtime_ns:
                        raise FileChangedError("a source file changed during the run")
                    ti = tarfile.TarInfo(member)
                    ti.size = size
                    ti.mtime = mtime_ns // 1_000_000_000
                    ti.mode = 0o600
                    ti.uname = ti.gname = ""
                    hr = _HashingReader(fh)
                    tar.addfile(ti, hr)
                    if hr.n != size or fh.read(1):
                        raise FileChangedError("a source file changed during the run")
                digest = hr.sha.hexdigest()
                entry["files"].append(
                    {"member": member, "relpath": relpath, "sha256": digest, "size": size,
                     "mtime_ns": mtime_ns}
                )
                records.append(FileRecord(fkey, size, mtime_ns, digest, "archived"))
            data = json.dumps(entry, sort_keys=True).encode()
            ti = tarfile.TarInfo(CATALOG_MEMBER)
            ti.size = len(data)
            ti.mode = 0o600
            ti.mtime = int(time.time())
            tar.addfile(ti, io.BytesIO(data))

    rel = object_relpath(job.study_key, job.version, ctx.fmt)
    target = Path(ctx.dst) / rel
    try:
        with atomic_writer(target, 0o644) as out:
            hw = _HashingWriter(out)
            encrypt_through_pipe(produce, hw, list(ctx.recipients), ctx.fmt)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise FileChangedError("a source file vanished during the run") from None
        raise OutputError(f"cannot write archive object ({exc.strerror})") from None
    return ArchiveResult(job.study_key, job.version, rel, hw.sha.hexdigest(), hw.n, records, entry)


# -- parent side: plan, run, catalog ------------------------------------------------------------


@dataclass
class ArchiveReport:
    """PHI-free summary of one archive run."""

    run_id: str
    tool: str = f"dicomsafe {__version__}"
    counts: dict[str, int] = field(default_factory=lambda: {
        "inputs": 0, "studies": 0, "archived_studies": 0, "unchanged_studies": 0,
        "failed_studies": 0, "archived_files": 0, "skipped": 0, "quarantined": 0, "pruned_objects": 0})
    studies: list[dict[str, Any]] = field(default_factory=list)  # {id, outcome, version}
    catalog_segment: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        c = self.counts
        return (f"{c['inputs']} inputs in {c['studies']} studies: {c['archived_studies']} archived "
                f"({c['archived_files']} files), {c['unchanged_studies']} unchanged, "
                f"{c['failed_studies']} failed, {c['skipped']} skipped (not DICOM)"
                + (f", {c['quarantined']} quarantined by de-identification" if c["quarantined"] else "")
                + (f", {c['pruned_objects']} old object versions pruned" if c["pruned_objects"] else "")
                + f" in {self.seconds:.1f} s")


def sweep_temp_files(root: Path, subdirs: Iterable[str] | None = None) -> int:
    """Remove temporary files a killed run left (``.<name>.<random>.tmp`` of atomic_writer).

    Only safe while holding the destination lock: then no other writer can own them. They
    never hold cleartext here (objects and catalog are encrypted before they are written).
    """
    from .fsutil import TMP_SUFFIX

    removed = 0
    tops = [root / d for d in subdirs] if subdirs is not None else [root]
    for top in tops:
        if not top.is_dir():
            continue
        for dirpath, _dirs, files in os.walk(top):
            for name in files:
                if name.startswith(".") and name.endswith(TMP_SUFFIX):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(dirpath, name))
                        removed += 1
    return removed


def _secret_check(pseudo: Any) -> str:
    return pseudo.keyed_id("dicomsafe-ledger-check", "archive")


def _next_segment(dst: Path, fmt: str) -> Path:
    cat = dst / "catalog"
    seqs = [int(m.group("seq")) for p in cat.glob("*") if (m := _SEG_RE.match(p.name))] if cat.is_dir() else []
    return cat / f"{(max(seqs) + 1) if seqs else 1:06d}.{FORMAT_EXT[fmt]}"


def write_catalog_segment(dst: Path, entries: list[dict[str, Any]], recipients: Sequence[Any], fmt: str,
                          run_id: str) -> Path:
    from . import crypto

    seg = _next_segment(dst, fmt)
    m = _SEG_RE.match(seg.name)
    assert m
    # The sequence number inside the ciphertext binds the segment to its name: a renamed,
    # replayed or removed segment shows up in verify.
    doc = {"format": CATALOG_FORMAT, "seq": int(m.group("seq")), "run_id": run_id, "created": audit_mod.utc_now(),
           "tool_version": __version__, "studies": sorted(entries, key=lambda e: e["study_key"])}
    data = json.dumps(doc, sort_keys=True).encode()
    try:
        with atomic_writer(seg, 0o644) as out:
            crypto.encrypt_stream(io.BytesIO(data), out, list(recipients), format=fmt)
    except OSError as exc:
        raise OutputError(f"cannot write the catalog ({exc.strerror})") from None
    return seg


def _prune(dst: Path, led: Ledger, retention_days: int) -> int:
    """Remove superseded object versions older than ``retention_days`` (0 = keep forever).

    Only versions below the latest *catalogued* version go (the catalog must always point at
    an object that exists), and only when the latest version still holds every file path of the
    old one: a version holding a file that has since left the source is the only copy of it and
    is kept whatever its age.
    """
    if retention_days <= 0:
        return 0
    cutoff = time.time() - retention_days * 86400
    removed = 0
    objects = dst / "objects"
    if not objects.is_dir():
        return 0
    for sub in sorted(objects.iterdir()):
        for p in sorted(sub.glob("*")):
            m = _OBJ_RE.match(p.name)
            if not m:
                continue
            key, ver = m.group("key"), int(m.group("ver"))
            st = led.unit(key)
            if st is None or not st.cataloged or ver >= st.version:
                continue
            old_files = led.version_files(key, ver)
            new_files = led.version_files(key, st.version)
            if old_files is None or new_files is None or not set(old_files) <= set(new_files):
                continue
            with contextlib.suppress(OSError):
                if p.stat().st_mtime < cutoff:
                    p.unlink()
                    led.forget_version(key, ver)
                    removed += 1
    return removed


def archive_tree(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    recipients: Sequence[Any],
    secret: bytes,
    *,
    fmt: str = "aes",
    jobs: int | None = None,
    executor: str = "local",
    scheduler: Any = None,
    checksum: bool = False,
    retention_days: int = 0,
    quiet: bool = True,
    audit_log: str | os.PathLike[str] | None = None,
    command: dict[str, Any] | None = None,
    deidentify_profile: Any = None,
    quarantine: str | os.PathLike[str] | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
) -> ArchiveReport:
    """Archive every new or changed study under ``src`` into ``dst`` (see module docstring).

    With ``deidentify_profile``, the studies are first de-identified (same pipeline as
    ``deidentify``, into a private temporary directory removed afterwards) and the de-identified
    copies are archived instead of the originals. The temporary tree is rebuilt every run, so
    changes are then detected by content (SHA-256), not by mtime; de-identification is
    deterministic, so unchanged studies still produce identical bytes and are not rewritten.
    """
    if deidentify_profile is not None:
        import tempfile

        from .batchrun import run_deidentify
        from .pipeline import RunSettings, check_layout

        check_layout(Path(src), Path(dst))
        q = Path(quarantine) if quarantine else Path.cwd() / "dicomsafe-quarantine"
        if q.resolve().is_relative_to(Path(dst).resolve()):
            raise ConfigError("quarantine must not be under the archive destination (it holds originals in clear)")
        work = Path(tempfile.mkdtemp(prefix="dicomsafe-archive-", dir=tmp_dir))
        try:
            os.chmod(work, 0o700)
            settings = RunSettings(src=Path(src), dst=work / "tree", profile=deidentify_profile, secret=secret,
                                   quarantine=Path(quarantine) if quarantine else None,
                                   report=work / "report.json", quiet=quiet)
            deid = run_deidentify(settings, jobs=jobs, executor=executor, scheduler=scheduler,
                                  audit_log=work / "audit.jsonl",
                                  command=audit_mod.command_record("archive-deidentify"))
            rep = _archive_tree(work / "tree", dst, recipients, secret, fmt=fmt, jobs=jobs, executor=executor,
                                scheduler=scheduler, checksum=True, retention_days=retention_days, quiet=quiet,
                                audit_log=audit_log, command=command, content_only=True)
            rep.counts["quarantined"] = deid.counts["quarantined"]
            rep.counts["skipped"] += deid.counts["skipped"]
            return rep
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return _archive_tree(src, dst, recipients, secret, fmt=fmt, jobs=jobs, executor=executor, scheduler=scheduler,
                         checksum=checksum, retention_days=retention_days, quiet=quiet, audit_log=audit_log,
                         command=command)


def _archive_tree(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    recipients: Sequence[Any],
    secret: bytes,
    *,
    fmt: str,
    jobs: int | None,
    executor: str,
    scheduler: Any,
    checksum: bool,
    retention_days: int,
    quiet: bool,
    audit_log: str | os.PathLike[str] | None,
    command: dict[str, Any] | None,
    content_only: bool = False,
) -> ArchiveReport:
    from .discover import discover, group_studies
    from .executors import UnitFailure, run_units
    from .pipeline import check_layout
    from .pseudonyms import Pseudonymizer

    if fmt not in FORMAT_EXT:
        raise ConfigError("--format must be age or aes")
    if not recipients:
        raise ConfigError("no recipients: give -R RECIPIENTS_FILE (or recipients_file in --config)")
    src_p, dst_p = Path(src), Path(dst)
    check_layout(src_p, dst_p)
    dst_p.mkdir(parents=True, exist_ok=True)
    pseudo = Pseudonymizer(secret)
    run_id = audit_mod.new_run_id()
    started = audit_mod.utc_now()
    t0 = time.perf_counter()
    report = ArchiveReport(run_id=run_id)
    audit_path = Path(audit_log) if audit_log else state_dir(dst_p) / "audit.jsonl"
    status = "failed"
    report_tried = False

    def write_report() -> None:
        report.seconds = time.perf_counter() - t0
        report.studies.sort(key=lambda s: s["id"])
        try:
            with atomic_writer(state_dir(dst_p) / "archive-report.json", 0o644) as fh:
                fh.write(json.dumps(report.__dict__, indent=2, sort_keys=True).encode() + b"\n")
        except OSError as exc:
            raise OutputError(f"cannot write the archive report ({exc.strerror})") from None

    with DestinationLock(dst_p), Ledger.for_destination(dst_p) as led:
        kind = led.get_meta("kind")
        if kind not in (None, "archive"):
            raise ConfigError("this destination holds a de-identification run, not an archive")
        check = _secret_check(pseudo)
        if led.get_meta("secret_check") not in (None, check):
            raise ConfigError("the secret differs from the one this archive was created with")
        if kind is None:
            led.set_meta("kind", "archive")
            led.set_meta("secret_check", check)
        led.begin_run(run_id, "archive", started)
        swept = sweep_temp_files(dst_p, ["objects", "catalog", ".dicomsafe"])
        if swept:
            log.info("removed %d temporary file(s) left by an interrupted run", swept)
        entries: list[dict[str, Any]] = []
        try:
            units, others = group_studies(discover(src_p))
            report.counts["skipped"] = len(others)
            report.counts["inputs"] = len(others)
            jobs_list: list[ArchiveJob] = []
            for unit in units:
                report.counts["inputs"] += len(unit.files)
                # Files without a readable StudyInstanceUID are archived one object each.
                groups = ([(unit.study_uid, unit.files)] if unit.study_uid
                          else [("", [f]) for f in unit.files])
                for uid, files in groups:
                    key = (pseudo.keyed_id("study", uid) if uid
                           else pseudo.keyed_id("study-nouid", fs_text(files[0].relpath)))
                    report.counts["studies"] += 1
                    stats = [(pseudo.keyed_id("path", fs_text(f.relpath)), f.size, f.mtime_ns) for f in files]
                    st = led.unit(key)
                    hashes = None
                    if checksum and st is not None:
                        from .ledger import sha256_file
                        hashes = {k: sha256_file(f.path) for (k, _, _), f in zip(stats, files)}
                    if st is not None and st.cataloged \
                            and led.unit_done(key, stats, hashes=hashes, compare_mtime=not content_only,
                                              allow_removed=True) \
                            and (dst_p / (st.object or "")).is_file():
                        report.counts["unchanged_studies"] += 1
                        report.studies.append({"id": key, "outcome": "unchanged", "version": st.version})
                        continue
                    version = 1 if st is None else (st.version if not st.cataloged else st.version + 1)
                    jobs_list.append(ArchiveJob(key, uid, version, tuple(
                        (f.fspath, f.relpath, k, s, m) for f, (k, s, m) in zip(files, stats))))
            ctx = ArchiveCtx(str(dst_p), tuple(recipients), fmt, secret)
            bar = _progress(sum(len(j.files) for j in jobs_list), quiet)

            def on_result(job: ArchiveJob, res: ArchiveResult | UnitFailure) -> None:
                if isinstance(res, UnitFailure):
                    report.counts["failed_studies"] += 1
                    report.studies.append({"id": job.study_key, "outcome": "failed",
                                           "reason": res.code or res.error_type})
                    log.warning("study %s: not archived (%s); retried next run", job.study_key,
                                res.code or res.error_type)
                else:
                    led.record_unit(res.study_key, res.files,
                                    [OutputRecord(res.object, res.object_sha256, res.object_size)],
                                    run_id=run_id, updated=audit_mod.utc_now(), version=res.version,
                                    object=res.object, object_sha256=res.object_sha256, cataloged=False,
                                    keep_version_files=True)
                    entries.append(res.entry)
                    report.counts["archived_studies"] += 1
                    report.counts["archived_files"] += len(res.files)
                    report.studies.append({"id": res.study_key, "outcome": "archived", "version": res.version})
                nbytes[0] += sum(f[3] for f in job.files)
                bar.set_postfix_str(f"{nbytes[0] / 1e6:.0f} MB", refresh=False)
                bar.update(len(job.files))

            nbytes = [0]
            try:
                run_units(archive_unit, jobs_list, ctx, on_result, jobs=jobs, executor=executor,
                          scheduler=scheduler)
            finally:
                bar.close()
                # Even after an interruption, catalogue what was archived: less to redo.
                if entries:
                    seg = write_catalog_segment(dst_p, entries, recipients, fmt, run_id)
                    led.mark_cataloged([e["study_key"] for e in entries])
                    report.catalog_segment = seg.relative_to(dst_p).as_posix()
            report.counts["pruned_objects"] = _prune(dst_p, led, retention_days)
            status = "ok" if report.counts["failed_studies"] == 0 else "findings"
            # A report that cannot be written fails the run like any other error (exit 4),
            # instead of leaving the previous run's report in place to be read as this one's.
            report_tried = True
            write_report()
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, (KeyboardInterrupt, Interrupted)) else "failed"
            raise
        finally:
            if not report_tried:  # after an error: as far as possible, that error stays the one raised
                with contextlib.suppress(DicomsafeError, OSError):
                    write_report()
            with contextlib.suppress(DicomsafeError, OSError):
                led.finish_run(run_id, status, audit_mod.utc_now())
            outputs = {"catalog_segment": report.catalog_segment or ""}
            if report.catalog_segment:
                from .ledger import sha256_file
                with contextlib.suppress(OSError):
                    outputs["catalog_sha256"] = sha256_file(dst_p / report.catalog_segment)
            audit_mod.append_run(audit_path, event="archive", run_id=run_id,
                                 command=command or audit_mod.command_record("archive"),
                                 counts=report.counts, outputs=outputs, status=status, started=started)
    return report


def _progress(total: int, quiet: bool):
    import sys

    from tqdm import tqdm

    return tqdm(total=total, unit="file", disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True,
                leave=False)


# -- reading the archive: catalog, restore, verify ------------------------------------------------


def load_catalog(dst: str | os.PathLike[str], identities: Sequence[Any]) -> list[dict[str, Any]]:
    """Every catalog entry of every segment, in segment order (latest last).

    Problems that do not prevent reading the rest (a missing or misplaced segment) are logged;
    ``archive verify`` reports them as failures.
    """
    entries, problems = _load_catalog(Path(dst), identities)
    for p in problems:
        log.warning("catalog: %s", p)
    return entries


def _load_catalog(dst: Path, identities: Sequence[Any]) -> tuple[list[dict[str, Any]], list[str]]:
    cat = dst / "catalog"
    if not cat.is_dir():
        raise ConfigError("no archive catalog in the destination")
    entries: list[dict[str, Any]] = []
    problems: list[str] = []
    segs = sorted(p for p in cat.iterdir() if _SEG_RE.match(p.name))
    expected = 1
    for seg in segs:
        seq = int(seg.name[:6])
        if seq != expected:
            problems.append(f"catalog segment(s) {expected:06d}..{seq - 1:06d} missing")
        expected = seq + 1
        try:
            doc = json.loads(_decrypt_to_bytes(seg, identities))
        except ValueError:
            raise IntegrityError("a catalog segment is not valid JSON") from None
        if not isinstance(doc, dict) or doc.get("format") != CATALOG_FORMAT:
            raise IntegrityError("catalog segment has an unknown format")
        if doc.get("seq") != seq:
            problems.append(f"catalog segment {seg.name} holds segment {doc.get('seq')!r} (renamed or replayed)")
            continue
        entries.extend(doc.get("studies", []))
    return entries, problems


def latest_entries(entries: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for e in entries:
        cur = latest.get(e["study_key"])
        if cur is None or e["version"] >= cur["version"]:
            latest[e["study_key"]] = e
    return latest


def _object_path(dst: Path, entry: dict[str, Any]) -> Path:
    for ext in FORMAT_EXT.values():
        p = dst / "objects" / entry["study_key"][:2] / f"{entry['study_key']}.v{entry['version']}.{ext}"
        if p.exists():
            return p
    raise FileNotFoundError


def _read_object(path: Path, entry: dict[str, Any], identities: Sequence[Any],
                 on_member: Callable[[dict[str, Any], IO[bytes]], None]) -> None:
    """Decrypt one object and hand each file member with its catalog record to ``on_member``.

    Checks that the members are exactly the catalog's files (no extra, none missing).
    """
    by_member = {f["member"]: f for f in entry["files"]}
    seen: set[str] = set()

    def consume(rf: IO[bytes]) -> None:
        with tarfile.open(fileobj=rf, mode="r|") as tar:
            for ti in tar:
                if ti.name == CATALOG_MEMBER:
                    continue
                rec = by_member.get(ti.name)
                if rec is None or not ti.isfile() or ti.name in seen:
                    raise IntegrityError("archive object holds a file the catalog does not list")
                seen.add(ti.name)
                fh = tar.extractfile(ti)
                assert fh is not None
                on_member(rec, fh)
        if seen != set(by_member):
            raise IntegrityError("archive object lacks files the catalog lists")

    with open(path, "rb") as src:
        try:
            decrypt_through_pipe(src, identities, consume)
        except tarfile.TarError:
            raise IntegrityError("archive object is not a valid tar stream") from None


@dataclass
class RestoreReport:
    studies: int = 0
    files: int = 0
    already_present: int = 0


def select_entries(latest: dict[str, dict[str, Any]], *, studies: Sequence[str] = (),
                   patients: Sequence[str] = (), since: str | None = None) -> list[dict[str, Any]]:
    since_n = _norm_date(since)
    out = []
    for e in sorted(latest.values(), key=lambda e: e["study_key"]):
        if studies and e["study_uid"] not in studies:
            continue
        if patients and e["patient_id"] not in patients:
            continue
        if since_n and not (e.get("study_date") or "") >= since_n:
            continue
        out.append(e)
    return out


def restore(dst: str | os.PathLike[str], out: str | os.PathLike[str], identities: Sequence[Any], *,
            studies: Sequence[str] = (), patients: Sequence[str] = (), since: str | None = None) -> RestoreReport:
    """Restore the selected studies' original files, bit-exact, under ``out``.

    Each file goes to a temporary name and is renamed to its original relative path only after
    its SHA-256 matches the catalog; an existing file with the right content is left alone, one
    with other content is an error (never overwritten).
    """
    dst_p, out_p = Path(dst), Path(out)
    entries = load_catalog(dst_p, identities)
    latest = latest_entries(entries)
    chosen = select_entries(latest, studies=studies, patients=patients, since=since)
    versions: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        versions.setdefault(e["study_key"], []).append(e)
    rep = RestoreReport()
    failed: list[str] = []
    for chosen_entry in chosen:
        # Newest version first; an older version is opened only for files the newer ones lack
        # (files that left the source after they were archived).
        done_paths: set[str] = set()
        for entry in sorted(versions[chosen_entry["study_key"]], key=lambda e: -e["version"]):
            wanted = {f["member"] for f in entry["files"] if f["relpath"] not in done_paths}
            if not wanted:
                continue
            ok = _restore_entry(dst_p, out_p, entry, identities, wanted, rep, failed,
                                required=entry is chosen_entry)
            if ok:
                done_paths.update(f["relpath"] for f in entry["files"])
            elif entry is chosen_entry:
                break  # never fill in from older versions what the newest one failed to give
        if chosen_entry["study_key"] not in failed:
            rep.studies += 1
    if failed:
        raise IntegrityError(f"{len(failed)} stud{'y' if len(failed) == 1 else 'ies'} could not be restored "
                             f"({', '.join(failed[:5])}{', …' if len(failed) > 5 else ''}); "
                             f"{rep.studies} restored")
    return rep


def _restore_entry(dst_p: Path, out_p: Path, entry: dict[str, Any], identities: Sequence[Any], wanted: set[str],
                   rep: "RestoreReport", failed: list[str], *, required: bool) -> bool:
    """Restore the ``wanted`` members of one object version; False (and logged) on failure."""
    try:
        obj = _object_path(dst_p, entry)
    except FileNotFoundError:
        if not required:  # an old version removed by retention: the newer one covers it
            return False
        log.error("study %s: archive object is missing", entry["study_key"])
        failed.append(entry["study_key"])
        return False

    def on_member(rec: dict[str, Any], fh: IO[bytes]) -> None:
        if rec["member"] not in wanted:
            shutil.copyfileobj(fh, _Sink())
            return
        rel = _safe_relpath(os.fsdecode(rec["relpath"].encode("utf-8", "surrogateescape")))
        target = out_p / rel
        if target.exists():
            from .ledger import sha256_file
            if target.is_file() and sha256_file(target) == rec["sha256"]:
                shutil.copyfileobj(fh, _Sink())
                rep.already_present += 1
                return
            raise OutputError(f"restore target of study {entry['study_key']} exists with other content")
        with atomic_writer(target, 0o600) as wf:
            h = hashlib.sha256()
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
                wf.write(chunk)
            if h.hexdigest() != rec["sha256"]:
                raise IntegrityError(f"a file of study {entry['study_key']} does not match its digest")
        with contextlib.suppress(OSError):
            os.utime(target, ns=(rec["mtime_ns"], rec["mtime_ns"]))
        rep.files += 1

    try:
        _read_object(obj, entry, identities, on_member)
    except CryptoError as exc:  # restore what can be restored; report the rest at the end
        log.error("study %s: %s", entry["study_key"], exc)
        if entry["study_key"] not in failed:
            failed.append(entry["study_key"])
        return False
    return True


class _Sink(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return len(b)


@dataclass
class VerifyReport:
    objects: int = 0
    files: int = 0
    problems: list[dict[str, str]] = field(default_factory=list)  # {id, problem}: PHI-free

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_archive(dst: str | os.PathLike[str], identities: Sequence[Any]) -> VerifyReport:
    """Decrypt every catalogued object and check every file's SHA-256 against the catalog.

    Older versions removed by retention are not problems; a missing latest version, an object
    that fails authentication, a wrong digest, or an object no catalog mentions are.
    """
    dst_p = Path(dst)
    entries, cat_problems = _load_catalog(dst_p, identities)
    latest = latest_entries(entries)
    rep = VerifyReport()
    rep.problems.extend({"id": "catalog", "problem": p} for p in cat_problems)
    referenced: set[str] = set()
    for entry in entries:
        key = entry["study_key"]
        is_latest = latest[key]["version"] == entry["version"]
        try:
            obj = _object_path(dst_p, entry)
        except FileNotFoundError:
            if is_latest:
                rep.problems.append({"id": key, "problem": f"object version {entry['version']} missing"})
            continue
        referenced.add(obj.relative_to(dst_p).as_posix())

        def on_member(rec: dict[str, Any], fh: IO[bytes]) -> None:
            h = hashlib.sha256()
            n = 0
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
                n += len(chunk)
            if h.hexdigest() != rec["sha256"] or n != rec["size"]:
                rep.problems.append({"id": key, "problem": f"file {rec['member']} digest mismatch"})
            rep.files += 1

        try:
            _read_object(obj, entry, identities, on_member)
            rep.objects += 1
        except CryptoError as exc:
            rep.problems.append({"id": key, "problem": f"object version {entry['version']}: {exc}"})
        except OSError as exc:
            rep.problems.append({"id": key, "problem": f"object unreadable ({exc.strerror})"})
    objects = dst_p / "objects"
    if objects.is_dir():
        for p in sorted(objects.rglob("*")):
            rel = p.relative_to(dst_p).as_posix()
            if p.is_file() and _OBJ_RE.match(p.name) and rel not in referenced:
                m = _OBJ_RE.match(p.name)
                assert m
                st_latest = latest.get(m.group("key"))
                if st_latest is None or int(m.group("ver")) > st_latest["version"]:
                    rep.problems.append({"id": m.group("key"), "problem": "object not in any catalog segment"})
    return rep
