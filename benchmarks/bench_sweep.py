"""What Dask costs and buys a sweep: scaling efficiency and per-point overhead of ``rnndiag.sweep.run``.

Points are real ``rnndiag sweep`` analysis points (:func:`rnndiag.sweep.points.analysis_point`), sized at the start
to take about 0.1 s and about 1 s each on one BLAS thread. For each size the same grid (distinct seeds) runs:

* in-process (``workers=1``): the reference, one BLAS thread;
* on a 1-worker ``LocalCluster`` (one thread): ``overhead`` = its extra wall time per point over in-process,
  as a fraction of a point's time (target < 5% at 1 s points);
* on a 2-worker ``LocalCluster``: ``scaling efficiency`` = its rate / (2 x the 1-worker cluster's rate)
  (target >= 85%).

Then a 1,000-point sweep of the 0.1 s points on 2 workers, and its wall time. Cluster start-up is included in
every cluster run (it is what a user waits for). Each run uses a fresh database in a temporary folder.

Usage: ``python benchmarks/bench_sweep.py`` (about 8 minutes on 2 cores); ``--quick`` (small counts, a smoke
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

SIZES = {"0.1 s": {"hidden_size": 48, "seq_len": 100, "batch_size": 8},
         "1 s": {"hidden_size": 160, "seq_len": 150, "batch_size": 8}}


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


def timed_run(grid, workers: int) -> float:
    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        t0 = time.perf_counter()
        r = run(grid, analysis_point, Path(tmp) / "s.sqlite", workers=workers, max_points=100_000)
        wall = time.perf_counter() - t0
    if r.counts["failed"]:
        raise SystemExit(f"{r.counts['failed']} point(s) failed: {r}")
    return wall


def measure(name: str, size: dict, n: int) -> dict:
    one = point_time({"cell": "rnn_tanh", "init": "orthogonal", "gain": 1.2, **size})
    grid = grid_for(size, n)
    local = timed_run(grid, 1)
    c1 = _cluster(grid, 1)
    c2 = _cluster(grid, 2)
    rate1, rate2 = n / c1, n / c2
    out = {"size": name, "params": size, "point_s": one, "points": n, "in_process_s": local, "cluster1_s": c1,
           "cluster2_s": c2, "overhead_per_point_s": (c1 - local) / n,
           "overhead_fraction": (c1 - local) / n / (local / n), "scaling_efficiency": rate2 / (2 * rate1)}
    print(f"{name} points ({one:.3f} s each alone): in-process {local:.1f} s, 1-worker cluster {c1:.1f} s, "
          f"2 workers {c2:.1f} s for {n} points; overhead {1e3 * out['overhead_per_point_s']:.1f} ms/point "
          f"({100 * out['overhead_fraction']:+.1f}%), scaling efficiency {100 * out['scaling_efficiency']:.0f}%",
          flush=True)
    return out


def _cluster(grid, workers: int) -> float:
    """A LocalCluster run of ``workers`` processes (run() starts one when workers > 1; for one worker the cluster
    is made here, since run(workers=1) means in-process)."""
    if workers > 1:
        return timed_run(grid, workers)
    import dask
    from distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory(prefix="bench_sweep_") as tmp:
        t0 = time.perf_counter()
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
        try:
            run(grid, analysis_point, Path(tmp) / "s.sqlite", client=client, max_points=100_000)
        finally:
            client.close()
            cluster.close()
        return time.perf_counter() - t0


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
