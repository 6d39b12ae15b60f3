"""Run work units (one study each) in parallel: a local process pool or a Dask cluster.

Why this shape: workers only *compute and write their own output files* (atomically); every
result streams back to ONE writer in the parent (the ``on_result`` callback) that owns the
ledger, the report and the progress bar. SQLite, the report and tqdm then never see concurrent
writers, and the ordering rule of the ledger (outputs first, then the ledger row) holds.

- ``jobs == 1``: in-process loop (no pickling; easiest to debug).
- ``executor="local"``: :class:`concurrent.futures.ProcessPoolExecutor` whose workers are
  forked from a *forkserver* (where the platform has one; else *spawn*), at most ``2 × jobs``
  units in flight so memory stays bounded however many studies there are. Not plain fork: that
  would copy the parent's open SQLite connection and lock descriptors, and is unsafe with
  threads. The forkserver is a fresh single-threaded process that imports the worker modules
  once (:func:`warm_up`, started before the source is grouped), so each worker starts in
  milliseconds instead of importing pydicom itself (~0.3 s of CPU per worker, measured).
- ``executor="dask"``: the same callable submitted to a ``dask.distributed`` scheduler.

SIGINT/SIGTERM: the first signal stops submitting, cancels queued units, lets running ones
finish (each is one study, written atomically) and records them, then raises
:class:`~dicomsafe.errors.Interrupted` (exit 130). The run is resumable with ``--resume``.
Workers ignore SIGINT so a Ctrl-C in a terminal reaches only the coordinator.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

from .errors import ConfigError, Interrupted, LockedError, OutputError

log = logging.getLogger(__name__)

U = TypeVar("U")
R = TypeVar("R")

EXECUTORS = ("local", "dask")


def default_jobs() -> int:
    """Default ``--jobs``: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class UnitFailure:
    """A unit whose function raised: only the exception *type* travels (messages may hold PHI)."""

    error_type: str
    code: str | None = None  # InputFileError.code when available


#: Errors that stop the whole run instead of failing one unit: a full disk or an unwritable
#: destination fails every following unit too. Running units are drained and recorded first,
#: so the run stays resumable.
FATAL = (OutputError, LockedError, MemoryError)


def _worker_init(environ: dict[str, str] | None = None) -> None:
    # A forkserver's worker inherits the server's environment, frozen when the server started;
    # a spawned one the parent's at that moment. Give both the parent's current one.
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    # Ctrl-C reaches the whole foreground process group, and systemd's stop sends SIGTERM to
    # every process of the service: only the coordinator should react, by letting running
    # units finish. Workers exit when the pool shuts down (or with their parent).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _failure(exc: BaseException) -> UnitFailure:
    return UnitFailure(type(exc).__name__, getattr(exc, "code", None))


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the coordinator polls (main thread only).

    run_units uses one while units run; the batch layer also holds one while it walks and groups
    the source, and checks it before any unit starts, so a systemd stop in that phase ends with
    the same clean exit 130. (Raising from the handler instead interrupted file-system calls
    halfway.)"""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second signal: stop waiting for running units
            raise Interrupted("interrupted again; stopping now (run again with --resume)")
        self.signum = signum
        log.warning("stop requested: finishing running units, then stopping (resumable)")

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    @property
    def set(self) -> bool:
        return self.signum is not None


#: Modules the forkserver imports once, so forked workers start with them loaded: the
#: de-identification and archive unit functions and everything they import (pydicom included).
WORKER_MODULES = ("dicomsafe.batchrun", "dicomsafe.deidentify", "dicomsafe.archive")


def worker_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context of local pools: forkserver with the worker modules preloaded,
    or spawn where there is no forkserver (Windows)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(WORKER_MODULES))
    return ctx


def warm_up() -> None:
    """Start the forkserver now, so it imports the worker modules while this process does other
    work (walking and grouping the source); the first worker then forks at once.

    Only the server starts here, no worker: a worker that is half started when the parent stops
    (an early SIGTERM) would print a traceback, a server just exits when its parent is gone.

    The server must ignore SIGINT and SIGTERM: systemd's stop and a terminal's Ctrl-C reach
    every process of the job, and a server killed that way left the coordinator waiting forever
    for its workers (seen in test_resume). Ignored dispositions and the signal mask both survive
    fork and exec (handlers do not), so this process blocks and ignores them while it starts the
    server. Blocked first: Linux keeps a blocked signal pending even while it is ignored, so a
    stop that arrives in that window reaches the restored handler afterwards, not lost."""
    if worker_context().get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver, resource_tracker

    if threading.current_thread() is not threading.main_thread():
        forkserver.ensure_running()  # dispositions can only be changed on the main thread
        return
    # The server starts the resource tracker first, and that start *unblocks* SIGINT/SIGTERM
    # when done: start it before the window so the mask below holds throughout.
    resource_tracker.ensure_running()
    stop_signals = (signal.SIGINT, signal.SIGTERM)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    handlers = {sig: signal.signal(sig, signal.SIG_IGN) for sig in stop_signals}
    try:
        forkserver.ensure_running()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def stop_server() -> None:
    """Stop the forkserver, if one was started, and wait for it. Its CPU time and its workers'
    then count as this process's children, so `time dicomsafe … --jobs 2` (and the benchmark)
    see the whole run; without it the server outlived the command and its CPU went unreported.
    Uses ForkServer._stop, multiprocessing's own (private) way to stop it; a no-op without it."""
    module = sys.modules.get("multiprocessing.forkserver")
    stop = getattr(getattr(module, "_forkserver", None), "_stop", None)
    if stop is not None:
        with contextlib.suppress(OSError):
            stop()


@contextlib.contextmanager
def local_pool(jobs: int) -> Iterator[cf.ProcessPoolExecutor]:
    """A worker pool to share between phases of one run.

    Workers start with the first unit submitted, not before: starting them at once raced with an
    early SIGTERM (a worker still reading its start-up data when the parent stopped printed a
    traceback into the run's output). :func:`warm_up` makes that start cheap."""
    warm_up()  # no-op when the caller started the server already
    pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=worker_context(),
                                  initializer=_worker_init, initargs=(dict(os.environ),))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_units(
    fn: Callable[[U, Any], R],
    units: Iterable[U],
    ctx: Any,
    on_result: Callable[[U, R | UnitFailure], None],
    *,
    jobs: int | None = None,
    executor: str = "local",
    scheduler: str | Any | None = None,
    pool: cf.ProcessPoolExecutor | None = None,
) -> int:
    """Apply ``fn(unit, ctx)`` to every unit; call ``on_result(unit, result)`` in this process.

    ``fn`` must be a module-level (picklable) function; ``ctx`` a picklable settings object.
    A unit whose function raises yields a :class:`UnitFailure` instead of a result; the run
    goes on. Returns the number of units handled. Raises :class:`Interrupted` after a clean
    stop on SIGINT/SIGTERM.
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r} (choose from {', '.join(EXECUTORS)})")
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    with StopFlag() as stop:
        if executor == "dask":
            if scheduler is None:
                raise ConfigError("--executor dask needs --scheduler ADDRESS")
            n = _run_dask(fn, units, ctx, on_result, scheduler, stop)
        elif jobs == 1 and pool is None:
            n = _run_inline(fn, units, ctx, on_result, stop)
        elif pool is not None:
            n = _run_pool(fn, units, ctx, on_result, jobs, stop, pool)
        else:
            with local_pool(jobs) as own:
                n = _run_pool(fn, units, ctx, on_result, jobs, stop, own)
        if stop.set:
            raise Interrupted("interrupted; finished units are recorded (run again with --resume)")
        return n


def _run_inline(fn, units, ctx, on_result, stop) -> int:
    n = 0
    for unit in units:
        if stop.set:
            break
        try:
            res = fn(unit, ctx)
        except (Interrupted, *FATAL):
            raise
        except Exception as exc:  # noqa: BLE001 - same contract as the pool: a failure record
            res = _failure(exc)
        on_result(unit, res)
        n += 1
    return n


def _run_pool(fn, units, ctx, on_result, jobs, stop, pool) -> int:
    n = 0
    it: Iterator = iter(units)
    window = 2 * jobs
    pending: dict[cf.Future, Any] = {}
    fatal: BaseException | None = None
    try:
        exhausted = False
        while True:
            while not exhausted and not stop.set and fatal is None and len(pending) < window:
                try:
                    unit = next(it)
                except StopIteration:
                    exhausted = True
                    break
                pending[pool.submit(fn, unit, ctx)] = unit
            if stop.set or fatal is not None:
                for fut in list(pending):
                    if fut.cancel():
                        del pending[fut]
            if not pending:
                break
            done, _ = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                unit = pending.pop(fut)
                try:
                    res = fut.result()
                except cf.process.BrokenProcessPool:
                    raise OutputError(
                        "a worker process died (out of memory or killed); run again with --resume"
                    ) from None
                except FATAL as exc:
                    fatal = fatal or exc
                    continue
                except Exception as exc:  # noqa: BLE001 - any worker exception becomes a failure record
                    res = _failure(exc)
                on_result(unit, res)
                n += 1
        if fatal is not None:
            raise fatal
    finally:
        for fut in pending:  # interrupted or failed: drop what has not started
            fut.cancel()
        if pending:
            cf.wait([f for f in pending if not f.cancelled()])
    return n


def _run_dask(fn, units, ctx, on_result, scheduler, stop) -> int:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ConfigError("--executor dask needs the 'dask' extra: pip install 'dicomsafe[dask]'") from None
    own_client = not hasattr(scheduler, "submit")
    client = Client(scheduler, set_as_default=False) if own_client else scheduler
    n = 0
    try:
        try:
            nworkers = max(1, len(client.scheduler_info().get("workers", {})))
        except Exception:  # noqa: BLE001 - informational only
            nworkers = 1
        window = 2 * nworkers
        it = iter(units)
        futures: dict[Any, Any] = {}
        fatal: BaseException | None = None
        ac = as_completed(loop=client.loop)  # explicit loop: we never set a default client

        def submit_more() -> None:
            while not stop.set and len(futures) < window:
                try:
                    unit = next(it)
                except StopIteration:
                    return
                fut = client.submit(fn, unit, ctx, pure=False)
                futures[fut] = unit
                ac.add(fut)

        submit_more()
        while futures:
            if stop.set:
                for fut in list(futures):
                    if fut.status == "pending":
                        fut.cancel()
                        futures.pop(fut)
                if not futures:
                    break
            try:
                fut = next(ac)
            except StopIteration:
                break
            unit = futures.pop(fut, None)
            if unit is None:  # cancelled above
                continue
            try:
                res = fut.result()
            except FATAL as exc:
                fatal = fatal or exc
                for other in list(futures):
                    if other.status == "pending":
                        other.cancel()
                        futures.pop(other)
                continue
            except Exception as exc:  # noqa: BLE001
                res = _failure(exc)
            on_result(unit, res)
            n += 1
            if fatal is None:
                submit_more()
        if fatal is not None:
            raise fatal
    finally:
        if own_client:
            with contextlib.suppress(Exception):
                client.close()
    return n
