"""Parallel, resumable de-identification: the batch layer on top of :mod:`dicomsafe.pipeline`.

Same contract and output as ``pipeline.deidentify_tree`` (which stays the single-process
reference), plus: ``jobs`` worker processes or a Dask cluster (:mod:`dicomsafe.executors`),
the destination lock, the ledger, ``resume`` and an audit line.

Division of work (why): a worker de-identifies one study into ``DST/.dicomsafe/staging`` and
hashes each staged output; the parent is the single writer — it commits staged files by rename
(pipeline.Writer), *then* records the unit in the ledger, keeps the report and the progress bar.
So after a kill -9 at any moment, every unit the ledger calls done has its outputs on disk, and
anything else is redone by ``--resume``; staging leftovers are wiped at start and never become
final files.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import audit as audit_mod
from .errors import ConfigError, DicomsafeError, Interrupted
from .ledger import FileRecord, Ledger, OutputRecord, sha256_file
from .lock import DestinationLock, state_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeidJob:
    """One study: its files as (path, file id, size, mtime_ns). Paths stay in memory only."""

    unit_key: str
    files: tuple[tuple[str, str, int, int], ...]


@dataclass(frozen=True)
class DeidCtx:
    profile: Any
    secret: bytes
    staging: str
    verify: bool = True


_CACHE: dict[tuple[str, bytes, bool], Any] = {}


def _deidentifier(ctx: DeidCtx) -> Any:
    """One Deidentifier per worker process and profile: compiling the plan once, not per study."""
    from .deidentify import Deidentifier

    key = (ctx.profile.hash, hashlib.sha256(ctx.secret).digest(), ctx.verify)
    deid = _CACHE.get(key)
    if deid is None:
        _CACHE.clear()
        deid = _CACHE[key] = Deidentifier(ctx.profile, ctx.secret, verify=ctx.verify)
    return deid


def deid_unit(job: DeidJob, ctx: DeidCtx) -> list[tuple[Any, str | None, int]]:
    """Worker: de-identify one study into staging; return (FileResult, output sha256, size)."""
    deid = _deidentifier(ctx)
    staging = Path(ctx.staging)
    staging.mkdir(parents=True, exist_ok=True)
    out = []
    for path, fid, _size, _mtime in job.files:
        res = deid.process_file(path, staging, fid)
        digest, size = None, 0
        if res.outcome == "written" and res.staged:
            digest, size = sha256_file(res.staged), os.stat(res.staged).st_size
        out.append((res, digest, size))
    return out


def _settings_check(settings: Any) -> str:
    """Identifies profile + secret without revealing the secret: resume must not mix them."""
    from .pseudonyms import Pseudonymizer

    return hashlib.sha256(
        (settings.profile.hash + Pseudonymizer(settings.secret).keyed_id("dicomsafe-ledger-check", "deid")).encode()
    ).hexdigest()[:32]


def run_deidentify(
    settings: Any,
    *,
    jobs: int | None = None,
    executor: str = "local",
    scheduler: Any = None,
    resume: bool = False,
    audit_log: str | os.PathLike[str] | None = None,
    command: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> Any:
    """De-identify ``settings.src`` into ``settings.dst``; returns the pipeline Report."""
    from .deidentify import FileResult
    from .executors import UnitFailure, run_units
    from .pipeline import STATE_DIR, Report, Writer, _progress, check_paths, plan_units
    from .pseudonyms import Pseudonymizer

    from .archive import fs_text

    check_paths(settings.src, settings.dst, settings.resolved_quarantine())
    settings.dst.mkdir(parents=True, exist_ok=True)
    pseudo = Pseudonymizer(settings.secret)
    run_id = audit_mod.new_run_id()
    started = audit_mod.utc_now()
    report = Report(profile=settings.profile.name, profile_hash=settings.profile.hash,
                    options=list(settings.profile.options), started=time.time())
    t0 = time.perf_counter()
    status = "failed"
    audit_path = Path(audit_log) if audit_log else state_dir(settings.dst) / "audit.jsonl"
    with DestinationLock(settings.dst), Ledger.for_destination(settings.dst) as led:
        kind = led.get_meta("kind")
        if kind not in (None, "deidentify"):
            raise ConfigError("this destination holds an archive, not a de-identification run")
        check = _settings_check(settings)
        if resume and led.get_meta("settings_check") not in (None, check):
            raise ConfigError("--resume needs the same profile and secret as the interrupted run")
        led.set_meta("kind", "deidentify")
        led.set_meta("settings_check", check)
        led.begin_run(run_id, "deidentify", started)
        if resume:  # temp files of a killed run (we hold the lock: nobody else owns them)
            from .archive import sweep_temp_files

            sweep_temp_files(settings.dst)
        staging = settings.dst / STATE_DIR / "staging"
        if staging.exists():
            shutil.rmtree(staging)  # leftovers of a killed run: never final outputs
        staging.mkdir(parents=True, exist_ok=True)
        writer = Writer(settings, report)
        bar = None
        try:
            def file_id(sf: Any) -> str:
                return pseudo.keyed_id("file", fs_text(sf.relpath))

            units, others = plan_units(settings.src)
            total = sum(len(u.files) for u in units) + len(others)
            quiet = settings.quiet if progress is None else not progress
            bar = _progress(total, quiet)
            for sf, kind_ in others:
                writer.commit(FileResult(file_id=file_id(sf), outcome="skipped", reason=kind_,
                                         src_path=os.fspath(sf.path), size=sf.size))
                bar.update(1)
            todo: list[DeidJob] = []
            paths: dict[str, str] = {}
            for unit in units:
                key = pseudo.keyed_id("study", unit.study_uid)
                files = tuple((os.fspath(f.path), file_id(f), f.size, f.mtime_ns) for f in unit.files)
                if resume and led.unit_done(key, [(fid, s, m) for _, fid, s, m in files], dst=settings.dst):
                    st = led.unit(key)
                    assert st is not None
                    for fid, rec in sorted(st.files.items()):
                        report.add(FileResult(file_id=fid, outcome=rec.outcome, reason=rec.reason, size=rec.size))
                    writer.committed.update(o.path for o in st.outputs)
                    bar.update(len(files))
                    continue
                for p, fid, _, _ in files:
                    paths[fid] = p
                todo.append(DeidJob(key, files))
            ctx = DeidCtx(settings.profile, settings.secret, str(staging), settings.verify)

            def on_result(job: DeidJob, results: Any) -> None:
                if isinstance(results, UnitFailure):
                    reason = f"internal-{results.code or results.error_type}"
                    results = [(FileResult(file_id=fid, outcome="quarantined", reason=reason, src_path=p,
                                           size=size), None, 0) for p, fid, size, _ in job.files]
                stat = {fid: (size, mtime) for _, fid, size, mtime in job.files}
                records: list[FileRecord] = []
                outputs: list[OutputRecord] = []
                for res, digest, out_size in results:
                    res = writer.commit(res)  # renames staged → final (outputs first)
                    if res.outcome == "written" and res.out_relpath and digest:
                        outputs.append(OutputRecord(res.out_relpath, digest, out_size))
                    size, mtime = stat[res.file_id]
                    records.append(FileRecord(res.file_id, size, mtime, None, res.outcome, res.reason))
                complete = all(r.outcome != "quarantined" for r in records)
                # Units with quarantined files are redone on --resume so their quarantine copy and
                # index entry are written again (the index is flushed only at the end of a run).
                led.record_unit(job.unit_key, records, outputs, outcome="done" if complete else "partial",
                                run_id=run_id, updated=audit_mod.utc_now())
                bar.update(len(job.files))

            run_units(deid_unit, todo, ctx, on_result, jobs=jobs, executor=executor, scheduler=scheduler)
            status = "ok" if report.counts["quarantined"] == 0 else "findings"
        except Interrupted:
            status = "interrupted"
            raise
        except BaseException:
            status = "failed"
            raise
        finally:
            if bar is not None:
                bar.close()
            report.seconds = time.perf_counter() - t0
            report.files.sort(key=lambda f: f["id"])
            with contextlib.suppress(DicomsafeError, OSError):
                writer.finish()
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(DicomsafeError, OSError):
                led.finish_run(run_id, status, audit_mod.utc_now())
            outputs_digest = {}
            with contextlib.suppress(OSError):
                outputs_digest["report_sha256"] = sha256_file(settings.resolved_report())
            audit_mod.append_run(
                audit_path, event="deidentify", run_id=run_id,
                command=command or audit_mod.command_record("deidentify", jobs=jobs, resume=resume),
                counts=report.counts, profile={"name": settings.profile.name, "hash": settings.profile.hash},
                outputs=outputs_digest, status=status, started=started)
    return report
