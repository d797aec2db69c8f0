"""Training throughput: rnndiag's numpy loop against PyTorch CPU on the same model, task and optimizer.

    python benchmarks/bench_train.py                 # LSTM (B=64, T=100, H=64), adding problem, Adam, clip 1
    python benchmarks/bench_train.py --steps 50

Targets (issue 5): no slower than PyTorch in float64 and within 1.5x in float32; diagnostics at the default
schedule under 20% of the training time. Both loops do the same work per iteration: a fresh batch, forward,
MSE on a linear readout of the last step, backward, global-norm clipping at 1, an Adam step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np

import rnndiag
from rnndiag.train import TrainConfig, train


def ours(dtype, steps, diag_points, B, T, H):
    model = rnndiag.init_model("lstm", 2, H, seed=0, dtype=dtype, forget_bias=1.0)
    cfg = TrainConfig(task="adding", seq_len=T, batch_size=B, steps=steps, lr=1e-3, diag_points=diag_points,
                      eval_batch=B)
    t0 = time.perf_counter()
    train(model, cfg)
    return steps / (time.perf_counter() - t0)


def theirs(dtype, steps, B, T, H):
    import torch

    from rnndiag.tasks import make_task

    torch.manual_seed(0)
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    lstm = torch.nn.LSTM(2, H).to(tdtype)
    head = torch.nn.Linear(H, 1).to(tdtype)
    params = list(lstm.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    t0 = time.perf_counter()
    for i in range(steps):
        tb = make_task("adding", T, B, np.random.default_rng([0, 0, i]))
        x = torch.from_numpy(tb.x).to(tdtype)
        y = torch.from_numpy(tb.targets).to(tdtype)
        out, _ = lstm(x)
        loss = ((head(out[-1])[:, 0] - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return steps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    B, T, H = 64, 100, 64
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        torch = None
    print(f"LSTM (B={B}, T={T}, H={H}) adding problem, Adam + global-norm clipping; iterations/s, median of "
          f"{args.reps} runs of {args.steps} steps, interleaved")
    for dtype in (np.float64, np.float32):
        rows = {"ours (2 diagnostics)": [], "ours (default 12 diagnostics)": [], "torch": []}
        for _ in range(args.reps):
            rows["ours (2 diagnostics)"].append(ours(dtype, args.steps, 2, B, T, H))
            rows["ours (default 12 diagnostics)"].append(ours(dtype, args.steps, 12, B, T, H))
            if torch is not None:
                rows["torch"].append(theirs(dtype, args.steps, B, T, H))
        med = {k: statistics.median(v) for k, v in rows.items() if v}
        print(f"\n{np.dtype(dtype).name}")
        for k, v in med.items():
            print(f"  {k:32s} {v:8.1f} it/s")
        if "torch" in med:
            print(f"  speed ratio ours/torch (higher is better): {med['ours (2 diagnostics)'] / med['torch']:.2f}")
        overhead = med["ours (2 diagnostics)"] / med["ours (default 12 diagnostics)"] - 1
        print(f"  cost of the default diagnostics schedule: {100 * overhead:.1f}% of training time")


if __name__ == "__main__":
    main()
