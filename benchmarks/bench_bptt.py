"""Time rnndiag's forward + exact BPTT against PyTorch CPU, and report memory and the fraction of BLAS peak.

Usage::

    python benchmarks/bench_bptt.py                  # everything, about 2-3 minutes on 2 cores
    python benchmarks/bench_bptt.py --quick          # fewer repetitions
    python benchmarks/bench_bptt.py --cells lstm gru --dtypes float64 --no-memory

What is timed, per (cell, dtype, size):

* ours:  ``rnndiag.bptt(model, x, grad_h, param_grads=True)`` -- forward, BPTT, every parameter gradient, the
  input gradient and the initial-state gradient.
* torch: ``nn.RNN/nn.LSTM/nn.GRU`` (same weights, same dtype) forward, then ``(out * grad_h).sum().backward()``
  with ``x`` and ``h0`` (``c0``) requiring gradients, so both sides compute the same gradients.

The two run interleaved in one process (the order alternates every repetition, so a noisy neighbour or CPU
frequency drift hits both alike); the table shows medians and the ratio ours / torch (< 1: we are faster),
"(best)" the ratio of the two minimums and "noise" max / min of our repetitions. On a shared machine, numpy's
multithreaded OpenBLAS suffers far more than torch from other busy processes (each small per-step product
waits for its worker thread to be scheduled, and times can grow 10-100x): the header and footer print the load
average, and a large noise or load means the numbers are not clean -- rerun when the machine is quiet.
Torch gets the same thread count as numpy's BLAS (threadpoolctl when installed, else 2), and
``OMP_WAIT_POLICY=PASSIVE`` is set before torch is imported so that its idle OpenMP threads do not spin on the
cores that OpenBLAS is using.

Flop count (matrix products only; elementwise work is not counted), per layer, with G gates (1 RNN, 4 LSTM,
3 GRU)::

    forward  = 2*T*B*I*G*H  (input projection, one product)  +  T * 2*B*H*G*H  (recurrent product per step)
             = 2*T*B*G*H*(I + H)
    backward = 2*T*B*G*H*H  (dh_{t-1} = da_t @ W_hh per step)  +  2*T*B*G*H*I  (grad_x = da @ W_ih)
             + 2*T*B*G*H*I  (grad W_ih)  +  2*T*B*G*H*H  (grad W_hh)
             = 4*T*B*G*H*(I + H)                                     (twice the forward)
    total    = 6*T*B*G*H*(I + H)

"% peak" divides the engine's flop rate by this machine's BLAS peak, measured as the GFLOP/s of a large square
matmul (``2 N^3`` flops) in the same dtype and thread count.

OpenBLAS: some machines set OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, which pick an older, slower kernel. The
header prints them and the kernel in use; to measure a current numpy, unset both for the one command::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_bptt.py
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
import tracemalloc

os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # must precede the torch import

import numpy as np

import rnndiag

try:
    import torch
except ImportError:  # torch is optional: then only our times are printed
    torch = None

CELLS = ("rnn_tanh", "lstm", "gru")
DTYPES = ("float32", "float64")
GATES = {"rnn_tanh": 1, "lstm": 4, "gru": 3}
SIZES = ((32, 100, 32, 128), (16, 500, 16, 256))  # (B, T, I, H)
MEMORY_SIZE = (32, 2000, 32, 256)  # (B, T, I, H) for the peak-memory report


# ----------------------------------------------------------------------------------------------------------------
def blas_info() -> tuple[int, str]:
    """numpy's BLAS thread count and a one-line description (threadpoolctl when installed, else 2 threads)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return 2, "threadpoolctl not installed: assuming numpy's BLAS uses 2 threads"
    blas = [d for d in threadpool_info() if d.get("user_api") == "blas"]
    mine = [d for d in blas if "numpy" in d.get("filepath", "")] or blas
    if not mine:
        return 2, "no BLAS found by threadpoolctl: assuming 2 threads"
    d = mine[0]
    desc = f"{d.get('internal_api')} {d.get('version')}, kernel {d.get('architecture')}, {d['num_threads']} threads"
    return int(d["num_threads"]), desc


def flops(cell: str, B: int, T: int, I: int, H: int) -> float:
    """Matrix-product flops of one forward + backward (see the module docstring)."""
    G = GATES[cell]
    return 6.0 * T * B * G * H * (I + H)


def blas_peak(dtype: str, n: int, reps: int) -> float:
    """GFLOP/s of the best of ``reps`` (n, n) @ (n, n) products."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype)
    np.matmul(a, b, out=out)  # warm up the thread pool
    best = min(_timed(lambda: np.matmul(a, b, out=out)) for _ in range(reps))
    return 2.0 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------------------
def make_case(cell: str, dtype: str, B: int, T: int, I: int, H: int):
    """The model, input and output gradient of one case, and the two callables to time."""
    model = rnndiag.init_model(cell, I, H, seed=0, dtype=np.dtype(dtype))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    grad_h = rng.standard_normal((T, B, H)).astype(dtype)

    def ours():
        return rnndiag.bptt(model, x, grad_h, param_grads=True)

    if torch is None:
        return ours, None, None
    tdtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    if cell == "lstm":
        mod = torch.nn.LSTM(I, H)
    elif cell == "gru":
        mod = torch.nn.GRU(I, H)
    else:
        mod = torch.nn.RNN(I, H, nonlinearity="tanh")
    mod = mod.to(tdtype)
    mod.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.params.items()})
    xt = torch.from_numpy(x).requires_grad_(True)
    gt = torch.from_numpy(grad_h)
    h0 = torch.zeros(1, B, H, dtype=tdtype, requires_grad=True)
    c0 = torch.zeros(1, B, H, dtype=tdtype, requires_grad=True)
    hx = (h0, c0) if cell == "lstm" else h0
    leaves = [xt, h0, c0, *mod.parameters()]

    def theirs():
        for p in leaves:
            p.grad = None
        out, _ = mod(xt, hx)
        (out * gt).sum().backward()
        return mod

    def agreement() -> float:
        """Largest |ours - torch| over parameter gradients, relative to the largest gradient entry."""
        tr = ours()
        theirs()
        err = scale = 0.0
        for name, p in mod.named_parameters():
            err = max(err, float(np.abs(p.grad.numpy() - tr.param_grads[name]).max()))
            scale = max(scale, float(np.abs(tr.param_grads[name]).max()))
        return err / scale

    return ours, theirs, agreement


def run_case(cell, dtype, size, reps, warmup, peak):
    B, T, I, H = size
    ours, theirs, agreement = make_case(cell, dtype, B, T, I, H)
    t_ours, t_theirs = [], []
    agree = agreement() if agreement is not None else float("nan")
    for rep in range(warmup + reps):
        order = [(ours, t_ours), (theirs, t_theirs)] if theirs is not None else [(ours, t_ours)]
        if rep % 2:
            order.reverse()
        for fn, acc in order:
            gc.collect()
            dt = _timed(fn)
            if rep >= warmup:
                acc.append(dt)
    f = flops(cell, B, T, I, H)
    mo = statistics.median(t_ours)
    mt = statistics.median(t_theirs) if t_theirs else float("nan")
    return {
        "cell": cell, "dtype": dtype, "size": size, "ours": mo, "torch": mt, "ratio": mo / mt,
        "gf_ours": f / mo / 1e9, "gf_torch": f / mt / 1e9, "peak": peak, "agree": agree,
        "noise": max(t_ours) / min(t_ours),
        "best_ratio": min(t_ours) / min(t_theirs) if t_theirs else float("nan"),
    }


def table_header(have_torch: bool):
    head = f"{'cell':9} {'dtype':8} {'B,T,I,H':16} {'ours ms':>9} "
    if have_torch:
        head += f"{'torch ms':>9} {'ours/torch':>10} {'(best)':>6} "
    head += f"{'ours GF/s':>9} {'% peak':>7} "
    if have_torch:
        head += f"{'torch GF/s':>10} {'grad agree':>10} "
    head += f"{'noise':>6}"
    print(head)
    print("-" * len(head))


def print_row(r, have_torch: bool):
    size = ",".join(str(s) for s in r["size"])
    line = f"{r['cell']:9} {r['dtype']:8} {size:16} {1e3 * r['ours']:9.2f} "
    if have_torch:
        line += f"{1e3 * r['torch']:9.2f} {r['ratio']:10.3f} {r['best_ratio']:6.3f} "
    line += f"{r['gf_ours']:9.1f} {100 * r['gf_ours'] / r['peak']:6.1f}% "
    if have_torch:
        line += f"{r['gf_torch']:10.1f} {r['agree']:10.1e} "
    line += f"{r['noise']:6.2f}"
    print(line, flush=True)


def memory_report(cells, dtypes):
    B, T, I, H = MEMORY_SIZE
    print(f"\nPeak memory of one bptt trace at B={B}, T={T}, I={I}, H={H} (one layer)")
    head = f"{'cell':9} {'dtype':8} {'Trace.nbytes':>13} {'tracemalloc peak':>17} {'peak/nbytes':>12} {'time s':>7}"
    print(head)
    print("-" * len(head))
    rng = np.random.default_rng(2)
    for dtype in dtypes:
        x = rng.standard_normal((T, B, I)).astype(dtype)
        grad_h = rng.standard_normal((T, B, H)).astype(dtype)
        for cell in cells:
            model = rnndiag.init_model(cell, I, H, seed=0, dtype=np.dtype(dtype))
            gc.collect()
            tracemalloc.start()
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            t0 = time.perf_counter()
            tr = rnndiag.bptt(model, x, grad_h, param_grads=True)
            dt = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1] - base
            tracemalloc.stop()
            nb = tr.nbytes
            del tr
            print(f"{cell:9} {dtype:8} {nb / 2**20:10.1f} MiB {peak / 2**20:13.1f} MiB {peak / nb:12.2f} {dt:7.2f}",
                  flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repetitions (a rough look in well under a minute)")
    ap.add_argument("--cells", nargs="+", choices=CELLS, default=list(CELLS), metavar="CELL",
                    help=f"cells to time (default: {' '.join(CELLS)})")
    ap.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES), metavar="DTYPE",
                    help=f"dtypes to time (default: {' '.join(DTYPES)})")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per case (overrides --quick)")
    ap.add_argument("--sizes", choices=("small", "large", "both"), default="both",
                    help=f"small = B,T,I,H {SIZES[0]}, large = {SIZES[1]}")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory report")
    ap.add_argument("--no-timing", action="store_true", help="skip the timing table (memory report only)")
    args = ap.parse_args(argv)
    cells = [c for c in CELLS if c in args.cells]
    dtypes = [d for d in DTYPES if d in args.dtypes]
    sizes = {"small": SIZES[:1], "large": SIZES[1:], "both": SIZES}[args.sizes]

    _print_load("before")
    nthreads, desc = blas_info()
    print(f"numpy {np.__version__}, BLAS: {desc}")
    env = {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS") or k in ("OMP_NUM_THREADS",
                                                                                     "OMP_WAIT_POLICY")}
    print("environment: " + (", ".join(f"{k}={v}" for k, v in sorted(env.items())) or "(none set)"))
    if torch is not None:
        torch.set_num_threads(nthreads)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    else:
        print("torch is not installed: timing rnndiag only")

    peaks = {}
    for dtype in dtypes if not args.no_timing else ():
        peaks[dtype] = blas_peak(dtype, 2048, 3 if args.quick else 5)
        print(f"BLAS peak ({dtype}, 2048^3 matmul): {peaks[dtype]:.1f} GFLOP/s")
    print(flush=True)

    if not args.no_timing:
        table_header(torch is not None)
    for size in sizes if not args.no_timing else ():
        # large sequences take ~10x longer per call: fewer repetitions keep the whole run near 2-3 minutes
        reps = args.reps or (3 if args.quick else (15 if size[1] <= 100 else 7))
        warmup = 1 if args.quick else 2
        for dtype in dtypes:
            for cell in cells:
                print_row(run_case(cell, dtype, size, reps, warmup, peaks[dtype]), torch is not None)
    if not args.no_memory:
        memory_report(cells, dtypes)
    _print_load("after")
    return 0


def _print_load(when: str):
    load = os.getloadavg()[0]
    ncpu = os.cpu_count() or 1
    warn = "  (busy machine: expect noisy, inflated times for ours)" if load > 0.5 * ncpu else ""
    print(f"load average {when}: {load:.2f} on {ncpu} CPUs{warn}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
