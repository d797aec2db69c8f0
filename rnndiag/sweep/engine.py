"""The sweep engine: run a picklable function over every point of a grid, on a Dask cluster or in-process, with
every result in the sweep's SQLite database (resumable), one BLAS thread per task.

``run(grid, point_fn, db_path)`` is the library call; ``rnndiag sweep`` is its first user. Execution:

* ``client``: a ``distributed.Client`` the caller made (its cluster's own settings apply);
* ``scheduler``: the address of a running Dask scheduler (``tcp://host:8786``);
* otherwise, with ``dask[distributed]`` installed and more than one worker wanted, a ``LocalCluster`` of worker
  processes sized to the machine (one thread each); with ``workers=1`` (or without Dask) an in-process loop.

Worker deaths: Dask's own ``allowed-failures`` re-runs a task that killed its worker (default 3 times). On the
clusters rnndiag starts it is set to 0, and rnndiag resubmits a ``KilledWorker`` point once itself, then marks it
failed with "worker died running this point", the worker's memory limit and the point's estimated memory.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from threadpoolctl import threadpool_limits

from ..memory import format_bytes
from .db import SweepDB
from .grid import DEFAULT_MAX_POINTS, check_size, points

KILLED_RETRIES = 1  # resubmissions of a point whose worker died, on clusters rnndiag starts
CONNECT_TIMEOUT = 10  # seconds to reach a --scheduler
DASK_HINT = "pip install 'rnndiag[dask]'"


class SweepError(ValueError):
    """A sweep that cannot run as asked; one line with the fix."""


@dataclass
class Progress:
    """What a progress display shows: the counts, the rate, and the last results."""

    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    skipped: int = 0  # done before this run (resumed)
    started: float = field(default_factory=time.perf_counter)
    last: list = field(default_factory=list)  # (params, metrics or error, seconds) of recent points

    @property
    def rate(self) -> float:
        """Points finished (done or failed) per second in this run."""
        elapsed = time.perf_counter() - self.started
        return (self.done + self.failed) / elapsed if elapsed > 0 else 0.0


@dataclass(frozen=True)
class SweepResult:
    db_path: str
    counts: dict
    mode: str  # "in-process", "local cluster of N workers", "scheduler ADDRESS", "client"
    wall_s: float
    notes: tuple[str, ...] = ()


def function_name(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def call_point(fn: Callable, params: dict, blas_threads: int | None = 1) -> dict:
    """Run one point where it lands (a worker or this process): ``fn(params)`` with ``blas_threads`` BLAS threads,
    timed; an exception becomes ``{"error": one line}`` so that only a dead worker fails the task itself."""
    t0 = time.perf_counter()
    worker = f"{socket.gethostname()}:{os.getpid()}"
    try:
        with threadpool_limits(limits=blas_threads):
            metrics = fn(dict(params))
        if not isinstance(metrics, Mapping):
            raise TypeError(f"the point function returned {type(metrics).__name__}, not a dict")
        return {"metrics": dict(metrics), "seconds": time.perf_counter() - t0, "worker": worker}
    except Exception as exc:  # the point's own failure: recorded, the sweep goes on
        last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        where = f" ({last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})" if last else ""
        text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}{where}"
        return {"error": text, "seconds": time.perf_counter() - t0, "worker": worker}


def dask_available() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


def run(grid: Mapping[str, tuple], point_fn: Callable[[dict], dict], db_path, client=None, *,
        workers: int | None = None, scheduler: str | None = None, retry_failed: bool = False, extend: bool = False,
        max_points: int = DEFAULT_MAX_POINTS, blas_threads: int | None = 1,
        progress: Callable[[Progress], None] | None = None, memory_estimate: Callable[[dict], int] | None = None
        ) -> SweepResult:
    """Run ``point_fn`` (importable, picklable; a dict of parameters -> a JSON-able dict) over every point of
    ``grid`` not yet done in the database ``db_path``, and return the counts. Re-running resumes; see the module
    docstring for where the points run. ``progress`` is called after every point; ``memory_estimate`` (bytes of a
    point) makes a dead worker's message say whether the point could have fit."""
    check_size(grid, max_points)
    t0 = time.perf_counter()
    pts = points(grid)
    with SweepDB(db_path) as db:
        counts = db.prepare(grid, pts, function=function_name(point_fn), extend=extend, retry_failed=retry_failed)
        todo = db.pending()
        state = Progress(total=sum(counts.values()), skipped=counts["done"] + counts["failed"])
        if progress:
            progress(state)
        notes: list[str] = []
        if not todo:
            mode = "nothing to do"
        elif client is not None or scheduler is not None or (dask_available() and (workers is None or workers > 1)):
            mode = _run_dask(db, todo, point_fn, state, client, workers, scheduler, blas_threads, progress,
                             memory_estimate, notes)
        else:
            if workers not in (None, 1) and not dask_available():
                notes.append(f"Dask is not installed: the sweep ran in this process; {DASK_HINT} for a cluster")
            mode = _run_local(db, todo, point_fn, state, blas_threads, progress)
        return SweepResult(str(db_path), db.counts(), mode, time.perf_counter() - t0, tuple(notes))


def _record(db: SweepDB, pid: str, params: dict, out: dict, state: Progress, progress) -> None:
    if "error" in out:
        db.mark_failed(pid, out["error"], out.get("seconds"), out.get("worker"))
        state.failed += 1
        state.last.append((params, out["error"], out.get("seconds")))
    else:
        db.mark_done(pid, out["metrics"], out["seconds"], out.get("worker"))
        state.done += 1
        state.last.append((params, out["metrics"], out["seconds"]))
    state.last = state.last[-8:]
    if progress:
        progress(state)


def _run_local(db, todo, point_fn, state, blas_threads, progress) -> str:
    for pid, params in todo:
        db.mark_running(pid, "in-process")
        state.running = 1
        _record(db, pid, params, call_point(point_fn, params, blas_threads), state, progress)
    state.running = 0
    return "in-process"


def _connect(client, workers, scheduler):
    """(client, cluster we started or None, mode) -- a --scheduler that cannot be reached is one SweepError."""
    import dask
    from distributed import Client, LocalCluster

    if client is not None:
        return client, None, "client"
    if scheduler is not None:
        try:
            return Client(scheduler, timeout=CONNECT_TIMEOUT), None, f"scheduler {scheduler}"
        except (OSError, TimeoutError, ValueError) as exc:
            raise SweepError(f"cannot reach the Dask scheduler at {scheduler!r} within {CONNECT_TIMEOUT} s "
                             f"({type(exc).__name__}); check the address and that `dask scheduler` runs") from None
    n = workers or max(1, os.cpu_count() or 1)
    # Dask's workers get MALLOC_TRIM_THRESHOLD_=65536 by default: glibc then hands freed memory back at once, and
    # numpy-heavy points that allocate and free large arrays pay page faults (+17% per 1 s point measured here).
    # The points are short-lived: rnndiag keeps glibc's default, and one BLAS/OpenMP thread per worker.
    environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    environ.update({"OMP_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1, "MKL_NUM_THREADS": 1})
    with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                          "distributed.nanny.pre-spawn-environ": environ}):
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
    return Client(cluster), cluster, f"local cluster of {n} worker process(es)"


def _run_dask(db, todo, point_fn, state, client, workers, scheduler, blas_threads, progress, memory_estimate,
              notes) -> str:
    from distributed import as_completed
    from distributed.client import FutureCancelledError

    try:
        from distributed import KilledWorker
    except ImportError:  # older distributed
        from distributed.scheduler import KilledWorker

    ours = client is None and scheduler is None
    client, cluster, mode = _connect(client, workers, scheduler)
    if not ours:
        notes.append("the cluster's own allowed-failures re-runs a point that kills its worker; rnndiag's one "
                     "resubmission multiplies those attempts")
    try:
        futures, submitted = {}, []
        for pid, params in todo:
            db.mark_running(pid)
            fut = client.submit(call_point, point_fn, params, blas_threads, pure=False, key=f"point-{pid}-0")
            futures[fut.key] = (pid, params, 0)
            submitted.append(fut)
        state.running = len(futures)
        pool = as_completed(submitted)
        for fut in pool:
            pid, params, attempt = futures.pop(fut.key)
            try:
                out = fut.result()
            except KilledWorker:
                if attempt < KILLED_RETRIES:
                    db.mark_running(pid)
                    again = client.submit(call_point, point_fn, params, blas_threads, pure=False,
                                          key=f"point-{pid}-{attempt + 1}")
                    futures[again.key] = (pid, params, attempt + 1)
                    pool.add(again)
                    continue
                out = {"error": _died(client, params, memory_estimate, attempt + 1)}
            except FutureCancelledError:
                out = {"error": "cancelled (the cluster went away)"}
            state.running = len(futures)
            _record(db, pid, params, out, state, progress)
    finally:
        if cluster is not None:
            client.close()
            cluster.close()
    return mode


def _died(client, params, memory_estimate, attempts: int) -> str:
    limits = {w.get("memory_limit") for w in client.scheduler_info().get("workers", {}).values()}
    limit = ", ".join(format_bytes(v) for v in sorted(v for v in limits if v)) or "none set"
    est = ""
    if memory_estimate is not None:
        try:
            est = f"; the point's estimated memory {format_bytes(memory_estimate(params))}"
        except Exception:  # an estimate that fails only costs the hint
            est = ""
    return f"worker died running this point ({attempts} attempt(s)); worker memory limit {limit}{est}"
