"""Parallel, resumable de-identification: the batch layer on top of :mod:`dicomsafe.pipeline`.

Same contract and output as ``pipeline.deidentify_tree`` (which stays the single-process
reference), plus: ``jobs`` worker processes or a Dask cluster (:mod:`dicomsafe.executors`),
the destination lock, the ledger, ``resume`` and an audit line.

Division of work (why): a worker de-identifies one study into ``DST/.dicomsafe/staging`` and
hashes each staged output; the parent is the single writer — its committer thread
(:class:`Committer`) fsyncs the unit's staged files, commits them by rename (pipeline.Writer),
*then* records the unit in the ledger, keeps the report and the progress bar, while the workers
(or, with ``--jobs 1``, the parent's main thread) go on computing. So after a kill -9 at any
moment, every unit the ledger calls done has its outputs on disk, and anything else is redone by
``--resume``; staging leftovers are wiped at start and never become final files.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import queue
import shutil
import threading
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
    study: str = ""  # ledger key of the whole study (parts of one study share it)
    seq: int = 0  # position among the study's parts still to do


@dataclass(frozen=True)
class DeidCtx:
    profile: Any
    secret: bytes
    staging: str
    verify: bool = True
    #: fsync a unit's staged outputs in the worker before returning. Off for local runs: the
    #: coordinator's committer thread does it (same machine, same page cache) while the worker
    #: goes on. On for Dask, whose workers may write on another machine's cache.
    sync: bool = True


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
    # One staging directory per worker process: workers creating files side by side in one
    # directory contend for its lock (seen as kernel spinning with --jobs 2).
    staging = Path(ctx.staging) / f"w{os.getpid()}"
    staging.mkdir(parents=True, exist_ok=True)
    out = []
    results = deid.process_files([(path, fid) for path, fid, _size, _mtime in job.files], staging,
                                 sync=ctx.sync)
    for res in results:
        digest, size = None, 0
        if res.outcome == "written" and res.staged:
            digest, size = res.sha256 or sha256_file(res.staged), os.stat(res.staged).st_size
        out.append((res, digest, size))
    return out


class Committer:
    """Makes finished work units durable and commits them, on a thread of its own, in order.

    Why: a unit's staged files must be on disk (fsync) before they are renamed into the output
    tree and the ledger records them. Waiting for the disk on the thread that computes (a
    worker, or the only process with --jobs 1) left the CPU idle (~2 s of a 9.5 s run of 2,000
    CT files with --jobs 1). Here the computing side hands a finished unit over and goes on
    with the next one; this thread fsyncs the unit's staged outputs (``sync``), then calls
    ``commit(job, results)`` — the renames, the report and the ledger row, in that order as
    before. While it runs it is the only thread that touches the writer, ledger, report and
    progress bar. At most ``depth`` units wait for it; their files wait in staging.

    A failure (OutputError from the fsync or the commit) stops committing: units after it stay
    uncommitted (staging is wiped at the end, ``--resume`` redoes them, as after a kill), and
    the error is raised in the coordinator by the next :meth:`put` or by :meth:`close`.
    """

    def __init__(self, commit: Any, *, sync: bool, depth: int = 4):
        self._commit = commit
        self._sync = sync
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="dicomsafe-committer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from .deidentify import sync_staged
        from .executors import UnitFailure

        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drained, not committed
            job, results = item
            try:
                if self._sync and not isinstance(results, UnitFailure):
                    sync_staged(res for res, _digest, _size in results)
                self._commit(job, results)
            except BaseException as exc:  # noqa: BLE001 - handed to the coordinator's thread
                self._error = exc

    def put(self, job: Any, results: Any) -> None:
        """Queue one unit (blocks while ``depth`` units wait); raises an earlier failure."""
        self._raise()
        self._queue.put((job, results))

    def close(self, *, raise_error: bool = True) -> None:
        """Commit everything queued, stop the thread; raise a failure unless told not to."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if raise_error:
            self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


#: Largest number of files in one work unit. A study is the unit of meaning, but pseudonyms and
#: date shifts are stateless (keyed), so a big study can be cut into fixed-size parts to keep
#: every worker busy — one 2,000-image study would otherwise run on one core. The size is fixed
#: (not derived from --jobs) so the parts, and their ledger keys, are the same in every run.
#: 32 rather than 64: at the end of a run one worker can be left alone with the last part, and
#: a smaller part shortens that tail (64 CT files are ~0.4 s of one core).
UNIT_MAX_FILES = 32


def _work_units(units: list, pseudo: Any) -> Any:
    """Yield (study unit, ledger key, files) — one item per study, or per part of a big study.

    Consumes ``units`` (the list is empty afterwards): each study's SourceFile records are let
    go as soon as its jobs are built, so they and the jobs are never all alive at once."""
    units.reverse()
    while units:
        unit = units.pop()
        key = pseudo.keyed_id("study", unit.study_uid)
        files, unit.files = unit.files, []
        if len(files) <= UNIT_MAX_FILES:
            yield unit, key, files
            continue
        for i in range(0, len(files), UNIT_MAX_FILES):
            yield unit, f"{key}-{i // UNIT_MAX_FILES:04d}", files[i:i + UNIT_MAX_FILES]


_CLASSIFY_BATCH = 64


def classify_batch(files: list[Any], ctx: Any = None) -> list[tuple[str, str]]:
    """Worker: (class, StudyInstanceUID) of each file — the header reads of study grouping."""
    from .discover import classify_study

    return [classify_study(sf) for sf in files]


def plan_parallel(src: Path, *, jobs: int, executor: str, scheduler: Any, pool: Any) -> tuple[list, list]:
    """``pipeline.plan_units`` with the header reads spread over the workers (Dask runs: the
    cluster's workers read the headers, the coordinator only walks the tree).

    Same result and order as :func:`dicomsafe.discover.group_studies`.
    """
    from .discover import DICOM, NO_STUDY, UNREADABLE, StudyUnit, discover
    from .executors import UnitFailure, run_units

    files = list(discover(src))
    batches = [files[i:i + _CLASSIFY_BATCH] for i in range(0, len(files), _CLASSIFY_BATCH)]
    results: dict[int, list[tuple[str, str]]] = {}
    index = {id(b): i for i, b in enumerate(batches)}

    def on_result(batch: list[Any], res: Any) -> None:
        if isinstance(res, UnitFailure):  # classify never raises; be safe: read them here
            res = classify_batch(batch)
        results[index[id(batch)]] = res

    run_units(classify_batch, batches, None, on_result, jobs=jobs, executor=executor, scheduler=scheduler,
              pool=pool)
    by_study: dict[str, list[Any]] = {}
    others: list[tuple[Any, str]] = []
    for i, batch in enumerate(batches):
        for sf, (kind, uid) in zip(batch, results[i]):
            if kind == DICOM or kind == UNREADABLE:
                by_study.setdefault(uid if kind == DICOM else NO_STUDY, []).append(sf)
            else:
                others.append((sf, kind))
    units = [StudyUnit(uid, sorted(fs, key=lambda f: f.relpath_bytes))
             for uid, fs in sorted(by_study.items(), key=lambda kv: (kv[0] == NO_STUDY, kv[0]))]
    return units, others


def _drain(items: collections.deque) -> Any:
    """Yield and forget the items of ``items`` from the front (nothing kept once handed out)."""
    while items:
        yield items.popleft()


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
    from .pipeline import STATE_DIR, FileEntries, Report, Writer, _progress, check_paths, plan_units
    from .archive import fs_text
    from .pseudonyms import Pseudonymizer

    check_paths(settings.src, settings.dst, settings.resolved_quarantine(), settings.review)
    settings.dst.mkdir(parents=True, exist_ok=True)
    pseudo = Pseudonymizer(settings.secret)
    run_id = audit_mod.new_run_id()
    started = audit_mod.utc_now()
    report = Report(profile=settings.profile.name, profile_hash=settings.profile.hash,
                    options=list(settings.profile.options), started=time.time(),
                    entries=FileEntries(state_dir(settings.dst)))
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
        committer: Committer | None = None
        finish_tried = report_written = False
        stack = contextlib.ExitStack()
        try:
            def file_id(sf: Any) -> str:
                return pseudo.keyed_id("file", fs_text(sf.relpath))

            from .executors import StopFlag, default_jobs, local_pool

            njobs = default_jobs() if jobs is None else jobs
            # local_pool starts the forkserver (if the CLI has not yet): the workers' imports
            # overlap the grouping below.
            pool = (stack.enter_context(local_pool(njobs))
                    if executor == "local" and njobs > 1 else None)
            with StopFlag() as stop:  # a stop before any unit runs: clean exit 130, not a kill
                if executor == "dask":
                    units, others = plan_parallel(settings.src, jobs=njobs, executor=executor,
                                                  scheduler=scheduler, pool=pool)
                else:
                    # Locally the grouping reads only 64 KiB per file (dicomio.peek_study_uid):
                    # the parent does it, no need to ship the files to the workers.
                    units, others = plan_units(settings.src)
            if stop.set:
                raise Interrupted("interrupted before any unit ran; run again (with --resume) to continue")
            total = sum(len(u.files) for u in units) + len(others)
            quiet = settings.quiet if progress is None else not progress
            bar = _progress(total, quiet)
            for sf, kind_ in others:
                writer.commit(FileResult(file_id=file_id(sf), outcome="skipped", reason=kind_,
                                         src_path=sf.fspath, size=sf.size))
                bar.update(1)
            todo: list[DeidJob] = []
            parts_left: dict[str, int] = {}
            for unit, key, part in _work_units(units, pseudo):
                files = tuple((f.fspath, file_id(f), f.size, f.mtime_ns) for f in part)
                if resume and led.unit_done(key, [(fid, s, m) for _, fid, s, m in files], dst=settings.dst):
                    st = led.unit(key)
                    assert st is not None
                    for fid, rec in sorted(st.files.items()):
                        report.add(FileResult(file_id=fid, outcome=rec.outcome, reason=rec.reason, size=rec.size))
                    writer.mark_committed(o.path for o in st.outputs)
                    bar.update(len(files))
                    continue
                study = key.split("-")[0]
                todo.append(DeidJob(key, files, study, parts_left.get(study, 0)))
                parts_left[study] = parts_left.get(study, 0) + 1
            # Largest units first (stable, so studies keep their order among equals): the small
            # remainders of studies are dispatched last and even out the workers' finish times.
            todo.sort(key=lambda job: -len(job.files))
            # The file list is no longer needed: what a unit needs travels in its DeidJob, and
            # each DeidJob is let go once handed out (a run keeps ~1 KB less per input file).
            del units, others
            unit = part = files = None  # the loops' last items (a whole study's file list)
            pending = collections.deque(todo)
            del todo
            # Local workers leave the fsync to the committer thread (same machine); Dask
            # workers, possibly elsewhere, make their own files durable.
            ctx = DeidCtx(settings.profile, settings.secret, str(staging), settings.verify,
                          sync=executor == "dask")
            # Parts of one study are committed in order, whatever order workers finish in: which
            # of two inputs with the same SOP Instance UID is written (and which is reported as
            # the duplicate) must not depend on timing, and after a kill the recorded parts of a
            # study stay a prefix. Buffered results are small (staged files wait on disk).
            nbytes = [0]
            next_seq: dict[str, int] = {}
            waiting: dict[tuple[str, int], tuple[DeidJob, Any]] = {}

            def on_result(job: DeidJob, results: Any) -> None:
                waiting[(job.study, job.seq)] = (job, results)
                while (job.study, next_seq.get(job.study, 0)) in waiting:
                    committer.put(*waiting.pop((job.study, next_seq.get(job.study, 0))))
                    next_seq[job.study] = next_seq.get(job.study, 0) + 1

            def commit_unit(job: DeidJob, results: Any) -> None:
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
                nbytes[0] += sum(size for _, _, size, _ in job.files)
                bar.set_postfix_str(f"{nbytes[0] / 1e6:.0f} MB", refresh=False)
                bar.update(len(job.files))

            committer = Committer(commit_unit, sync=not ctx.sync)
            run_units(deid_unit, _drain(pending), ctx, on_result, jobs=njobs, executor=executor,
                      scheduler=scheduler, pool=pool)
            committer.close()
            status = "ok" if report.counts["quarantined"] == 0 else "findings"
            # The report and the quarantine index are the run's accounting: failing to write them
            # fails the run like any other error (exit 4; --resume redoes the units with
            # quarantined files and rebuilds the report from the ledger).
            report.seconds = time.perf_counter() - t0
            finish_tried = True
            writer.finish()
            report_written = True
        except (Interrupted, KeyboardInterrupt):
            status = "interrupted"
            raise
        except BaseException:
            status = "failed"
            raise
        finally:
            stack.close()  # the worker pool
            if committer is not None:
                committer.close(raise_error=False)  # what finished is committed, as after a stop
            if bar is not None:
                bar.close()
            if not finish_tried:  # after an error: as far as possible, that error stays the one raised
                report.seconds = time.perf_counter() - t0
                with contextlib.suppress(DicomsafeError, OSError):
                    writer.finish()
                    report_written = True
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(DicomsafeError, OSError):
                led.finish_run(run_id, status, audit_mod.utc_now())
            outputs_digest = {}
            if report_written:  # never the digest of an older report left at that path
                with contextlib.suppress(OSError):
                    outputs_digest["report_sha256"] = sha256_file(settings.resolved_report())
            audit_mod.append_run(
                audit_path, event="deidentify", run_id=run_id,
                command=command or audit_mod.command_record("deidentify", jobs=jobs, resume=resume),
                counts=report.counts, profile={"name": settings.profile.name, "hash": settings.profile.hash},
                outputs=outputs_digest, status=status, started=started)
    return report
