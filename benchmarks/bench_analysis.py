"""Cost of the full analysis against the BPTT it stands on, and against torch.func.jacrev for the Jacobians.

    python benchmarks/bench_analysis.py            # LSTM (B=32, T=100, I=32, H=128), plus RNN and GRU
    python benchmarks/bench_analysis.py --memory   # also peak memory of analyze on LSTM (B=32, T=1000, I=32, H=256)

Target (issue 3): the full analysis of the (B=32, T=100, H=128) LSTM under 5x the cost of its BPTT.
The torch comparison forms the same per-step Jacobians d s_t/d s_{t-1} for the sampled sequences with
torch.func.jacrev of one cell step (what a user would otherwise write) and times only that.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import tracemalloc

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

import rnndiag
from rnndiag.analysis import analyze, probe_grad_h


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_jacobians(model, x, batch, steps):
    """Seconds for jacrev to form J_t for ``steps`` steps of the sampled sequences (one layer)."""
    try:
        import torch
        from torch.func import jacrev, vmap
    except ImportError:
        return None
    torch.set_num_threads(2)
    H = model.hidden_size
    p = {k: torch.from_numpy(v) for k, v in model.params.items()}
    trace = rnndiag.forward(model, x)
    xs = torch.from_numpy(x[:, batch])
    w_ih, w_hh, b_ih, b_hh = p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"]

    if model.cell == "lstm":
        def step(s, xt):
            h, c = s[:H], s[H:]
            i, f, g, o = (w_ih @ xt + b_ih + w_hh @ h + b_hh).chunk(4)
            c2 = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            return torch.cat([torch.sigmoid(o) * torch.tanh(c2), c2])
        states = torch.from_numpy(np.concatenate([trace.h, trace.c], axis=2)[:, batch])
    elif model.cell == "gru":
        def step(h, xt):
            gi, gh = w_ih @ xt + b_ih, w_hh @ h + b_hh
            r = torch.sigmoid(gi[:H] + gh[:H])
            z = torch.sigmoid(gi[H : 2 * H] + gh[H : 2 * H])
            n = torch.tanh(gi[2 * H :] + r * gh[2 * H :])
            return (1 - z) * n + z * h
        states = torch.from_numpy(trace.h[:, batch])
    else:
        def step(h, xt):
            return torch.tanh(w_ih @ xt + b_ih + w_hh @ h + b_hh)
        states = torch.from_numpy(trace.h[:, batch])
    jac = vmap(jacrev(step))

    def run():
        for t in range(1, steps):
            jac(states[t - 1], xs[t])

    return median_time(run, 3)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="blocks of 3 runs each")
    ap.add_argument("--memory", action="store_true", help="peak memory of analyze on LSTM T=1000, H=256")
    args = ap.parse_args()
    B, T, I, H = 32, 100, 32, 128
    print(f"full analysis vs BPTT, (B={B}, T={T}, I={I}, H={H}), float64, medians of {3 * args.reps} runs each "
          "in alternating blocks of 3 (ratio: of the medians)")
    print(f"{'cell':9s} {'bptt s':>9s} {'analyze s':>10s} {'ratio':>7s} {'sampled':>8s} {'jacrev s':>9s} "
          f"{'ours J s':>9s}")
    for cell in ("lstm", "gru", "rnn_tanh"):
        model = rnndiag.init_model(cell, I, H, seed=0)
        x = np.random.default_rng(0).standard_normal((T, B, I))
        g = probe_grad_h("last", T, B, H, 0, np.float64)
        diag = analyze(model, x)
        # alternating blocks of 3 runs each, so that both see the same machine load (and neither is always the
        # first run after the other); the ratio is the ratio of the medians
        t_b, t_a = [], []
        for _ in range(args.reps):
            t_b += [median_time(lambda: rnndiag.bptt(model, x, g), 1) for _ in range(3)]  # noqa: B023
            t_a += [median_time(lambda: analyze(model, x), 1) for _ in range(3)]  # noqa: B023
        t_bptt, t_an = statistics.median(t_b), statistics.median(t_a)
        ratio = t_an / t_bptt
        batch = np.asarray(diag.layers[0].flow.jacobian_batch)
        tr = rnndiag.forward(model, x)
        t_ours_j = median_time(lambda: [tr.step_jacobian(t, batch=batch) for t in range(1, T)], 3)  # noqa: B023
        t_torch = torch_jacobians(model, x, batch, T)
        tj = f"{t_torch:9.3f}" if t_torch is not None else f"{'n/a':>9s}"
        print(f"{cell:9s} {t_bptt:9.3f} {t_an:10.3f} {ratio:7.2f} {len(batch):>4d}/{B:<3d} {tj} "
              f"{t_ours_j:9.3f}")
    if args.memory:
        B, T, I, H = 32, 1000, 32, 256
        model = rnndiag.init_model("lstm", I, H, seed=0)
        x = np.random.default_rng(0).standard_normal((T, B, I))
        tracemalloc.start()
        t0 = time.perf_counter()
        analyze(model, x)
        el = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"analyze LSTM (B={B}, T={T}, I={I}, H={H}): peak traced memory {peak / 2**20:.0f} MiB, {el:.1f} s")


if __name__ == "__main__":
    main()
