"""How much ``rnndiag.pytorch.watch`` slows a PyTorch training loop at its default schedule (every=100).

Usage::

    python benchmarks/bench_watch.py                  # 10 pairs of 200-iteration runs (see the time below)
    python benchmarks/bench_watch.py --runs 4 --iters 100
    python benchmarks/bench_watch.py --quick          # a tiny model, 2 pairs, a few iterations (a smoke test)

The loop: a character-level LM -- embedding 64 -> 2-layer ``nn.LSTM(batch_first=True)`` with hidden 256 ->
linear, vocabulary 64 -- on batches of 64 sequences of T = 100 random tokens (pre-generated: the data costs
nothing), cross-entropy, backward, ``clip_grad_norm_(1.0)``, an Adam step. Each run builds the same model and
optimizer from the same seed and times ``--iters`` iterations; a watched run attaches
``watch(model, tmpdir, every=100, optimizer=opt)`` first (so it writes a line per iteration to
``iterations.jsonl`` and captures at iterations 0, 100, ...) and detaches after. The runs alternate in pairs, AB
then BA (unwatched first, then watched first), so a noisy neighbour, frequency drift or the order itself hits both
alike, and each pair gives one slowdown ratio.

Reported: the median time per iteration with and without watch (over all iterations of all runs of each kind);
per pair, the ratio of the two runs' whole loop times (the captures included) and of their median iteration times
(the per-iteration hooks only); the median of each over the pairs, with min / max and the interquartile range; the
captures taken, the time to write one (the capture copy, ``np.savez`` and the atomic rename, timed around
``Watch._write_capture``) and its size. Goal: a slowdown under 5%.

``OMP_WAIT_POLICY=PASSIVE`` is set before torch is imported (idle OpenMP threads must not spin on a shared machine),
and torch uses 2 threads (``--threads``). The last line is the summary as one JSON object.

Time: one iteration took 0.61 s on this project's 2-core machine while it was shared (load average 1.4-1.8;
``--runs 2 --iters 30``), so the default 10 pairs x 2 runs x 200 iterations take about 40 minutes there; on a
quiet machine it is less. Short runs still measure the per-iteration cost, but capture at iteration 0 only (one
capture per ``--iters`` iterations instead of one per 100): ``--iters`` of 100 or more keeps the schedule's rate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # must precede the torch import

import torch
from torch import nn

import rnndiag
import rnndiag.pytorch

GOAL = 0.05  # the slowdown watch may cost at every=100
EVERY = 100
SIZES = {"vocab": 64, "embed": 64, "hidden": 256, "batch": 64, "seq_len": 100}
QUICK_SIZES = {"vocab": 16, "embed": 8, "hidden": 16, "batch": 4, "seq_len": 20}


class CharLM(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, embed)
        self.rnn = nn.LSTM(embed, hidden, num_layers=2, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        h, _ = self.rnn(self.emb(tokens))
        return self.out(h)


def make_batches(sizes: dict, count: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        window = torch.randint(0, sizes["vocab"], (sizes["batch"], sizes["seq_len"] + 1), generator=g)
        out.append((window[:, :-1], window[:, 1:]))
    return out


def one_run(sizes: dict, batches, iters: int, every: int, watched: bool) -> dict:
    """Train ``iters`` iterations from the same seed; the time of each, and (watched) of each capture write."""
    torch.manual_seed(0)
    model = CharLM(sizes["vocab"], sizes["embed"], sizes["hidden"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    writes: list[float] = []
    captures: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="bench_watch_") as tmp:
        w = rnndiag.pytorch.watch(model, Path(tmp) / "run", every=every, optimizer=opt) if watched else None
        if w is not None and hasattr(w, "_write_capture"):
            write = w._write_capture

            def timed(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return write(*args, **kwargs)
                finally:
                    writes.append(time.perf_counter() - t0)

            w._write_capture = timed
        times = []
        t_loop = time.perf_counter()
        for i in range(iters):
            x, y = batches[i % len(batches)]
            t0 = time.perf_counter()
            loss = nn.functional.cross_entropy(model(x).reshape(-1, sizes["vocab"]), y.reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            times.append(time.perf_counter() - t0)
        loop = time.perf_counter() - t_loop
        if w is not None:
            rnndiag.pytorch.unwatch(w)
            captures = list(w.captures)
        size = sum(p.stat().st_size for p in captures)
    return {"times": times, "loop": loop, "writes": writes, "captures": len(captures), "capture_bytes": size}


def spread(values: list[float]) -> dict:
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) >= 2 else [values[0]] * 3
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "q1": q[0], "q3": q[2]}


def pct(r: float) -> str:
    return f"{100 * (r - 1):+.1f}%"


def summarize(pairs: list[tuple[dict, dict]], iters: int, sizes: dict, threads: int) -> dict:
    plain_times = [t for a, _ in pairs for t in a["times"]]
    watched_times = [t for _, b in pairs for t in b["times"]]
    loop_ratio = [b["loop"] / a["loop"] for a, b in pairs]
    iter_ratio = [statistics.median(b["times"]) / statistics.median(a["times"]) for a, b in pairs]
    writes = [t for _, b in pairs for t in b["writes"]]
    caps = [b["captures"] for _, b in pairs]
    size = [b["capture_bytes"] / b["captures"] for _, b in pairs if b["captures"]]
    loop = spread(loop_ratio)
    return {
        "benchmark": "bench_watch", "rnndiag_version": rnndiag.__version__, "torch_version": torch.__version__,
        "threads": threads, "sizes": sizes, "every": EVERY, "iters_per_run": iters, "pairs": len(pairs),
        "median_iter_s_without": statistics.median(plain_times), "median_iter_s_with": statistics.median(watched_times),
        "loop_slowdown": loop, "iter_slowdown": spread(iter_ratio),
        "captures_per_run": statistics.median(caps) if caps else 0,
        "capture_write_s": spread(writes) if writes else None,
        "capture_mb": statistics.median(size) / 2**20 if size else None,
        "goal": f"< {100 * GOAL:.0f}% slowdown", "meets_goal": loop["median"] - 1 < GOAL,
    }


def report(s: dict) -> None:
    print()
    print(f"median time per iteration: without watch {1e3 * s['median_iter_s_without']:.1f} ms, with watch "
          f"{1e3 * s['median_iter_s_with']:.1f} ms")
    lo, it = s["loop_slowdown"], s["iter_slowdown"]
    print(f"slowdown of the whole loop (captures included), median of {s['pairs']} pairs: {pct(lo['median'])} "
          f"(min {pct(lo['min'])}, max {pct(lo['max'])}, IQR {pct(lo['q1'])} to {pct(lo['q3'])})")
    print(f"slowdown of the median iteration (hooks only), median of {s['pairs']} pairs: {pct(it['median'])} "
          f"(min {pct(it['min'])}, max {pct(it['max'])}, IQR {pct(it['q1'])} to {pct(it['q3'])})")
    if s["capture_write_s"]:
        cw = s["capture_write_s"]
        print(f"captures: {s['captures_per_run']:g} per run of {s['iters_per_run']} iterations, "
              f"{s['capture_mb']:.3g} MB each; writing one took {1e3 * cw['median']:.0f} ms (median; min "
              f"{1e3 * cw['min']:.0f}, max {1e3 * cw['max']:.0f})")
    verdict = "meets" if s["meets_goal"] else "MISSES"
    note = "" if s["sizes"] == SIZES and s["every"] == EVERY else " (not the benchmark's sizes or schedule)"
    print(f"goal {s['goal']} at every={s['every']}: {verdict} it ({pct(lo['median'])}){note}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=None, help="pairs of runs (unwatched, watched) [default: 10; 2 quick]")
    ap.add_argument("--iters", type=int, default=None, help="iterations per run [default: 200; 12 quick]")
    ap.add_argument("--threads", type=int, default=2, help="torch threads [default: 2]")
    ap.add_argument("--quick", action="store_true", help="a tiny model, 2 pairs, 12 iterations (smoke test)")
    args = ap.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else SIZES
    pairs_n = args.runs or (2 if args.quick else 10)
    iters = args.iters or (12 if args.quick else 200)
    every = 5 if args.quick else EVERY
    if pairs_n < 1 or iters < 1:
        ap.error("--runs and --iters must be at least 1")
    torch.set_num_threads(args.threads)
    _print_load("before")
    env = {k: v for k, v in os.environ.items() if k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; rnndiag {rnndiag.__version__}; "
          + ", ".join(f"{k}={v}" for k, v in sorted(env.items())))
    print(f"2-layer LSTM LM: vocab {sizes['vocab']}, embedding {sizes['embed']}, hidden {sizes['hidden']}, batch "
          f"{sizes['batch']}, T {sizes['seq_len']}; Adam, clip 1.0; {pairs_n} pairs of {iters}-iteration runs, "
          f"watch every={every}", flush=True)
    batches = make_batches(sizes)
    one_run(sizes, batches, min(iters, 3), every, watched=False)  # warm up: allocator, thread pool
    pairs = []
    for k in range(pairs_n):  # AB, BA, AB, ...: neither kind always runs second
        if k % 2 == 0:
            a = one_run(sizes, batches, iters, every, watched=False)
            b = one_run(sizes, batches, iters, every, watched=True)
        else:
            b = one_run(sizes, batches, iters, every, watched=True)
            a = one_run(sizes, batches, iters, every, watched=False)
        pairs.append((a, b))
        print(f"pair {k + 1}/{pairs_n}: without {a['loop']:.2f} s ({1e3 * statistics.median(a['times']):.1f} "
              f"ms/it), with {b['loop']:.2f} s ({1e3 * statistics.median(b['times']):.1f} ms/it, {b['captures']} "
              f"captures), ratio {b['loop'] / a['loop']:.3f}", flush=True)
    s = summarize(pairs, iters, sizes, torch.get_num_threads())
    s["every"] = every
    report(s)
    _print_load("after")
    print(json.dumps(s))
    return 0


def _print_load(when: str):
    load = os.getloadavg()[0]
    ncpu = os.cpu_count() or 1
    warn = "  (busy machine: expect noisy, inflated times)" if load > 0.5 * ncpu else ""
    print(f"load average {when}: {load:.2f} on {ncpu} CPUs{warn}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
