"""What Dask costs and buys a sweep: scaling efficiency and per-point overhead of ``rnndiag.sweep.run``.

Points are real ``rnndiag sweep`` analysis points (:func:`rnndiag.sweep.points.analysis_point`), sized at the start
to take about 0.1 s and about 1 s each on one BLAS thread. For each size the same grid (distinct seeds) runs:

* in-process (``workers=1``): the reference, one BLAS thread;
* on a 1-worker ``LocalCluster`` (one thread): ``overhead`` = its extra wall time per point over in-process,
  as a fraction of a point's time (target < 5% at 1 s points); the in-process loop runs after a warm-up point,
  and each worker gets one too (importing rnndiag and a first analysis, ~0.3 s once per worker: start-up);
* on a 2-worker ``LocalCluster``: ``scaling efficiency`` = its rate / (2 x the 1-worker cluster's rate)
  (target >= 85%).

Then a 1,000-point sweep of the 0.1 s points on 2 workers (``rnndiag sweep``'s own path: start-up included), and
its wall time. Cluster start-up is excluded from
no run: it is paid once per sweep whatever its size, and is reported apart. Each run uses a fresh database in
a temporary folder.

Usage: ``python benchmarks/bench_sweep.py`` (about 5 minutes on 2 cores); ``--quick`` (small counts, a smoke
test); ``--points N`` points per size and mode; ``--big N`` for the big sweep (0: skip). The last line is the
summary as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from threadpoolctl import threadpool_limits

from rnndiag.sweep import run
from rnndiag.sweep.grid import make_grid
from rnndiag.sweep.points import analysis_point

SIZES = {"0.1 s": {"hidden_size": 32, "seq_len": 100, "batch_size": 4},
         "1 s": {"hidden_size": 128, "seq_len": 500, "batch_size": 8}}


def point_time(params: dict, repeats: int = 3) -> float:
    with threadpool_limits(limits=1):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            analysis_point(params)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def grid_for(size: dict, n: int):
    return make_grid([f"seed=0..{n - 1}", "cell=rnn_tanh", "init=orthogonal", "gain=1.2",
                      *(f"{k}={v}" for k, v in size.items())])


def timed_run(grid, workers: int, client=None) -> float:
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        t0 = time.perf_counter()
        r = run(grid, analysis_point, Path(tmp) / "s.sqlite", workers=workers, client=client, max_points=100_000)
        wall = time.perf_counter() - t0
    if r.counts["failed"]:
        raise SystemExit(f"{r.counts['failed']} point(s) failed: {r}")
    return wall


def measure(name: str, size: dict, n: int) -> dict:
    one = point_time({"cell": "rnn_tanh", "init": "orthogonal", "gain": 1.2, **size})
    grid = grid_for(size, n)
    warm_up()
    local = timed_run(grid, 1)
    c1, start1 = _cluster(grid, 1)
    c2, start2 = _cluster(grid, 2)
    rate1, rate2 = n / c1, n / c2
    out = {"size": name, "params": size, "point_s": one, "points": n, "in_process_s": local, "cluster1_s": c1,
           "cluster2_s": c2, "startup_s": [start1, start2], "overhead_per_point_s": (c1 - local) / n,
           "overhead_fraction": (c1 - local) / local, "scaling_efficiency": rate2 / (2 * rate1)}
    print(f"{name} points ({one:.3f} s each alone): in-process {local:.1f} s, 1-worker cluster {c1:.1f} s, "
          f"2 workers {c2:.1f} s for {n} points (cluster start-up {start1:.1f} / {start2:.1f} s, not included); "
          f"overhead {1e3 * out['overhead_per_point_s']:.1f} ms/point ({100 * out['overhead_fraction']:+.1f}%), "
          f"scaling efficiency {100 * out['scaling_efficiency']:.0f}%", flush=True)
    return out


def warm_up() -> None:
    """What a worker pays once: importing rnndiag (numpy, scipy) and a first tiny analysis."""
    analysis_point({"hidden_size": 8, "seq_len": 10, "batch_size": 2})


def _cluster(grid, workers: int) -> tuple[float, float]:
    """(the sweep's wall time on a running LocalCluster of ``workers`` one-thread processes, the cluster's
    start-up time): start-up is paid once per sweep, whatever its size, so it is reported apart."""
    import dask
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
               if k != "MALLOC_TRIM_THRESHOLD_"}  # as rnndiag.sweep.run's own clusters (see engine._connect)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                          "distributed.nanny.pre-spawn-environ": environ}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    client.wait_for_workers(workers)
    client.run(warm_up)  # each worker imports rnndiag and runs one tiny point: a once-per-worker cost
    startup = time.perf_counter() - t0
    try:
        return timed_run(grid, workers, client), startup
    finally:
        client.close()
        cluster.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=None, help="points per size and mode [default: 40; quick 6]")
    ap.add_argument("--big", type=int, default=None, help="points of the big sweep [default: 1000; quick 0]")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    n = args.points or (6 if args.quick else 40)
    big = args.big if args.big is not None else (0 if args.quick else 1000)
    print(f"bench_sweep: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    sizes = {"0.1 s": SIZES["0.1 s"]} if args.quick else SIZES
    results = [measure(name, size, n if name == "0.1 s" else max(4, n // 4)) for name, size in sizes.items()]
    summary = {"benchmark": "bench_sweep", "results": results}
    if big:
        wall = timed_run(grid_for(SIZES["0.1 s"], big), 2)
        summary["big_sweep"] = {"points": big, "wall_s": wall, "workers": 2}
        print(f"a {big}-point sweep of 0.1 s points on 2 workers: {wall:.1f} s wall", flush=True)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
