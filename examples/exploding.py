"""An exploding gradient, and global-norm clipping fixing it (Pascanu, Mikolov & Bengio 2013).

A tanh RNN (H = 64) whose recurrent weights are a random orthogonal matrix times 1.5 is chaotic: nearby states
separate (top Lyapunov exponent +0.06 to +0.07 nats/step), so ``d s_T / d s_t`` grows with ``T - t`` and rnndiag
calls it EXPLODING at initialization. Trained on next-value prediction of sine waves (T = 50, the loss at every
step) with SGD (lr 0.1, momentum 0.9, the same seeded batches for every run):

* without clipping the gradient norm spikes to huge values, one update throws the weights far away and training
  stops with a non-finite loss -- at iterations 157, 166 and 161 for seeds 0, 1, 2;
* global-norm clipping at 1 (``torch.nn.utils.clip_grad_norm_``) rescales the spikes without turning them and
  trains to a held-out MSE of 0.010-0.013 (baseline 0.5), clipping 6-84% of the iterations;
* clipping every entry at 5 (``clip_grad_value_``, the seed tutorial's ``np.clip(g, -5, 5)``) does not save it: a
  gradient of 4,353 entries each up to 5 can still be a step of norm ~330, and the loss ends in the hundreds or
  thousands (242, 1832, 506).

``rnndiag clip`` (:func:`rnndiag.experiments.compare_clipping`) trains all three from the same seed and recommends
the non-diverged strategy with the lowest held-out loss: ``global_norm:1`` for every seed.

Control: the same model with gain 1.0 (orthogonal, not expanding: healthy at initialization) trains without any
clipping at the same learning rate -- so it is the recurrent gain, not the learning rate, that makes training
diverge.

Found by a small search (seed 0, 300 iterations): sine T = 50, gain 1.5 / 2 / 3, lr 0.01 / 0.03 / 0.1. At lr 0.1
no clipping diverged for every gain, and global norm at 1 reached ~0.012 with gain 1.5 but only ~0.15-0.2 with
gains 2 and 3 (too chaotic to fit in 300 iterations). Below lr 0.1 no clipping mostly trains too. On the adding
problem (T = 100) no setting trained well with either strategy in 300 iterations, so the sine task is used here.

Every step runs through the CLI (``rnndiag analyze``, ``rnndiag clip``), so every run leaves its own HTML report;
they go into ``reports/exploding-<YYYYmmdd-HHMMSS>/`` with a ``summary.json`` of the numbers printed here.

Run: ``python examples/exploding.py`` (~20-40 s); ``--quick``: seed 0, two strategies, 200 iterations,
JSON reports only (for the tests).
"""

from __future__ import annotations

import os

# Tiny matrices: BLAS threads only add overhead (much of it on a busy machine). Override by setting the variable.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import shlex
import sys
import time
import warnings
from pathlib import Path

from _shared import DEFAULT_REPORTS, fmt, fresh_report_dir, print_table

import rnndiag
from rnndiag.cli import main as cli
from rnndiag.files import write_atomic

MODEL = ["--cell", "rnn_tanh", "--hidden-size", "64", "--init", "orthogonal"]
TASK = ["--task", "sine", "--seq-len", "50", "--batch-size", "64"]
OPTIM = ["--optimizer", "sgd", "--lr", "0.1"]
GAIN, CONTROL_GAIN = 1.5, 1.0

# The unclipped run overflows on purpose; the table reports it. Only numpy's overflow chatter is silenced.
warnings.filterwarnings("ignore", message="overflow encountered", category=RuntimeWarning)


def run_cli(args: list[str]) -> None:
    """``rnndiag <args>`` in this process; raises if it does not exit 0."""
    try:
        cli.main(args=args, prog_name="rnndiag")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise RuntimeError(f"rnndiag {shlex.join(args)} exited with {exc.code}") from None


def analyze(out: Path, gain: float, seed: int, formats: str) -> dict:
    run_cli(["analyze", *MODEL, "--gain", str(gain), *TASK, "--seed", str(seed), "--out", str(out),
             "--format", formats, "--quiet"])
    m = json.loads((out / "metrics.json").read_text())
    layer = m["layers"][0]
    return {"verdict": m["verdict"], "verdict_detail": m["verdict_detail"], "horizon_steps": layer["horizon_steps"],
            "decay_per_step": layer["decay_per_step"],
            "top_lyapunov": (layer["lyapunov_exponents"] or [None])[0], "sigma_max": layer["sigma_max"],
            "report": str(out)}


def clip(out: Path, gain: float, seed: int, strategies: str, steps: int, formats: str) -> dict:
    run_cli(["clip", *MODEL, "--gain", str(gain), *TASK, *OPTIM, "--seed", str(seed), "--strategies", strategies,
             "--steps", str(steps), "--out", str(out), "--format", formats, "--quiet"])
    m = json.loads((out / "metrics.json").read_text())
    return m


def run_line(r: dict) -> str:
    if r["diverged"]:
        return f"diverged ({r['stopped']})"
    return (f"final test loss {fmt(r['final_test_loss'], '.4g')} (baseline {fmt(r['baseline'], '.3g')}), clipped "
            f"{100 * r['fraction_clipped']:.0f}% of the iterations, loss oscillation {fmt(r['oscillation'], '.2f')}")


def table_rows(seed_label: str, diag: dict, cmp: dict) -> list[list[str]]:
    return [[seed_label, diag["verdict"], r["label"], "yes" if r["diverged"] else "no",
             fmt(r["final_test_loss"], ".4g"), f"{100 * r['fraction_clipped']:.0f}%",
             fmt(r["mean_cosine_clipped_vs_unclipped"], ".3f"), fmt(r["oscillation"], ".2f"),
             "<-" if r["label"] == cmp["recommended"] else ""] for r in cmp["runs"]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="seed 0, none vs global_norm:1, 200 iterations (tests)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds [default: 0,1,2]")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--reports", type=Path, default=DEFAULT_REPORTS, help="parent folder of the report folder")
    args = p.parse_args(argv)
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    steps = 200 if args.quick else args.steps
    strategies = "none,global_norm:1" if args.quick else "none,global_norm:1,value:5"
    formats = "json" if args.quick else "html,png,json"
    out = fresh_report_dir(args.reports, "exploding" + ("-quick" if args.quick else ""))
    print(f"tanh RNN H=64, orthogonal recurrent weights x {GAIN}; sine T=50, B=64; SGD lr 0.1 momentum 0.9; "
          f"{steps} iterations; strategies {strategies}")
    t_all = time.perf_counter()
    summary = {"example": "exploding", "rnndiag_version": rnndiag.__version__, "quick": args.quick, "gain": GAIN,
               "control_gain": CONTROL_GAIN, "steps": steps, "strategies": strategies, "seeds": {}}
    rows, ok = [], 0
    for seed in seeds:
        t0 = time.perf_counter()
        diag = analyze(out / f"seed{seed}-analyze", GAIN, seed, formats)
        cmp = clip(out / f"seed{seed}-clip", GAIN, seed, strategies, steps, formats)
        wall = time.perf_counter() - t0
        rec = cmp["recommended"] or "none (every run diverged)"
        print(f"seed {seed}: verdict at init: {diag['verdict']} ({diag['verdict_detail']}; top Lyapunov "
              f"{fmt(diag['top_lyapunov'], '+.3f')} nats/step, decay {fmt(diag['decay_per_step'], '+.3f')} "
              f"log10/step)")
        for r in cmp["runs"]:
            print(f"seed {seed}: {r['label']}: {run_line(r)}")
        print(f"seed {seed}: recommended: {rec}")
        for reason in cmp["reasons"]:
            print(f"seed {seed}:   - {reason}")
        print(f"seed {seed}: wall time: {wall:.1f} s", flush=True)
        by = {r["label"]: r for r in cmp["runs"]}
        none = by["none"]
        blew_up = none["diverged"] or (none["final_test_loss"] or float("inf")) > 100 * none["baseline"]
        holds = blew_up and rec.startswith("global_norm")
        ok += holds
        summary["seeds"][str(seed)] = {"at_init": diag, "recommended": cmp["recommended"], "reasons": cmp["reasons"],
                                       "runs": [{k: v for k, v in r.items() if k not in ("loss", "grad_norm")}
                                                for r in cmp["runs"]],
                                       "claim_holds": holds, "wall_time_s": wall}
        rows += table_rows(str(seed), diag, cmp)
    # control: the same model without the expanding gain needs no clipping
    t0 = time.perf_counter()
    cdiag = analyze(out / "control-analyze", CONTROL_GAIN, seeds[0], formats)
    ccmp = clip(out / "control-clip", CONTROL_GAIN, seeds[0], "none,global_norm:1", steps, formats)
    cwall = time.perf_counter() - t0
    cnone = next(r for r in ccmp["runs"] if r["label"] == "none")
    print(f"control (gain {CONTROL_GAIN}, seed {seeds[0]}): verdict at init: {cdiag['verdict']} "
          f"({cdiag['verdict_detail']}); without clipping: {run_line(cnone)}")
    print(f"control: wall time: {cwall:.1f} s")
    rows += table_rows(f"{seeds[0]} (gain {CONTROL_GAIN})", cdiag, ccmp)
    summary["control"] = {"at_init": cdiag, "recommended": ccmp["recommended"],
                          "runs": [{k: v for k, v in r.items() if k not in ("loss", "grad_norm")}
                                   for r in ccmp["runs"]], "wall_time_s": cwall}
    print_table(f"clipping strategies on an exploding tanh RNN (gain {GAIN}) and the control (gain {CONTROL_GAIN})",
                ["seed", "verdict at init", "strategy", "diverged", "final test loss", "clipped", "mean cosine",
                 "oscillation", "recommended"], rows)
    total = time.perf_counter() - t_all
    summary["claim"] = (f"without clipping training diverges (or ends above 100x the baseline) and compare_clipping "
                        f"recommends global_norm: {ok}/{len(seeds)} seeds")
    summary["total_wall_time_s"] = total
    print(f"claim: without clipping training diverges or blows up, and global_norm is recommended in "
          f"{ok}/{len(seeds)} seeds")
    write_atomic(out / "summary.json", json.dumps(summary, indent=1, allow_nan=False).encode("utf-8"))
    print(f"report: {out}")
    print(f"total wall time: {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
