"""The classic picture on the adding problem at T = 100: which recurrent networks learn it, and what rnndiag sees.

The adding problem (Hochreiter & Schmidhuber 1997; here in the form of Arjovsky et al. 2016): two input channels,
a U[0, 1] value and a marker that is 1 at one position in each half of the sequence; the target is the sum of the
two marked values, read off the last hidden state by a linear readout, loss MSE. Predicting the mean (1) scores
1/6 ~ 0.167 -- the baseline every network starts at. Solving it needs a gradient that carries the error from step
T-1 back to a marker up to 99 steps earlier.

Five networks (H = 64), the same data (batch ``i`` depends only on the seed and ``i``), Adam with global-norm
clipping at 1, batch 64. Numbers below are from the full run with seed 0:

(a) tanh RNN, the seed tutorial's ``0.01 * randn`` initialization. rnndiag at initialization: VANISHING, the
    gradient falls below 1e-3 of its value within 3 of the 100 steps (-1.09 log10 per step, top Lyapunov exponent
    -2.5 nats/step). After 8000 iterations it is still at the baseline (0.161) and still vanishing (horizon 6).
(b) GRU, PyTorch's default initialization. Its gradient also vanishes at initialization (horizon 14 steps; low
    confidence, as gates can learn to open), yet it solves the task (held-out MSE 0.0035 < 0.01) in 750
    iterations, and after training the horizon covers the whole sequence: the gates learned to hold memory.
(c) LSTM with forget-gate bias 1 (Gers et al. 2000; Jozefowicz et al. 2015). Vanishing at initialization too
    (horizon 31), it needs twice the GRU's iterations but gets there: MSE 0.0022 after 1500 iterations (1750 and
    1250 for seeds 1 and 2), horizon 100+ after training.
(d) tanh RNN with identity (IRNN, Le et al. 2015) and orthogonal (Saxe et al. 2014) recurrent weights. Their
    gradient reaches back over all 100 steps at initialization (healthy verdict, top Lyapunov exponent -0.0005 and
    -0.06), so they sit in between (a) and the gated cells -- but a good gradient at initialization is necessary,
    not sufficient: the orthogonal one partly learns the task (0.038 after 8000 iterations, still improving,
    still healthy), while training pushes the identity one into a regime whose gradient vanishes again (horizon
    100+ -> 14) and it stays at the baseline (0.163).

For every run: the diagnosis at initialization (verdict, horizon, decay rate, top Lyapunov exponent), training
until the held-out MSE (256 sequences never trained on) is below 0.01 -- checked every ``--check-every``
iterations, by resuming from a checkpoint -- or the run's iteration cap, and the diagnosis after training on the
task loss through the *trained* readout (:func:`rnndiag.experiments.diagnose_on_task`).

Settings, from a small search (seed 0; H = 64, B = 64):
  * gated cells: Adam lr 3e-3. GRU solved at 750 iterations for seeds 0, 1, 2 (lr 1e-2: 250); LSTM at 1500, 1750
    and 1250 for seeds 0, 1, 2.
  * tanh RNNs: Adam lr 3e-4 for all three so that only the initialization differs. At lr 1e-3 and 3e-3 none of
    them left the baseline within 3000 iterations; at 3e-4 the orthogonal one starts learning after ~3000 (seed 1:
    after ~4500, 0.064 at 8000). The identity one did not learn with any setting tried (Adam lr 1e-4 to 3e-3, also
    with H = 128; SGD lr 1e-3).

Run: ``python examples/adding_problem.py`` (4-6 minutes; ``--quick``: a shrunken version in seconds, for the
tests). Writes ``reports/adding_problem-<YYYYmmdd-HHMMSS>/`` with ``metrics.json`` and two figures.
"""

from __future__ import annotations

import os

# The matrices here are tiny (64 x 64): BLAS threads only add overhead, and on a busy machine a lot of it (25x
# slower measured). Set OPENBLAS_NUM_THREADS yourself to override. Must happen before numpy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _shared import DEFAULT_REPORTS, fmt, fresh_report_dir, print_table, write_json_report

import rnndiag
from rnndiag.experiments import LEARNED_FRACTION, InitResult, diagnose_on_task, learning_note, summarize
from rnndiag.tasks import input_size
from rnndiag.train import TrainConfig, train

TASK = "adding"
SOLVED = 0.01  # held-out MSE below which the task counts as solved


@dataclass(frozen=True)
class Run:
    key: str
    label: str
    cell: str
    init: str
    lr: float
    cap: int  # iteration cap
    forget_bias: float | None = None


def runs_for(quick: bool) -> list[Run]:
    if quick:  # shapes and wiring only: nothing gets time to learn
        return [Run("rnn_tutorial", "tanh RNN, 0.01*randn", "rnn_tanh", "tutorial", 3e-4, 100),
                Run("gru", "GRU, PyTorch init", "gru", "pytorch", 3e-3, 100),
                Run("lstm", "LSTM, forget bias 1", "lstm", "pytorch", 3e-3, 100, forget_bias=1.0),
                Run("rnn_identity", "tanh RNN, identity", "rnn_tanh", "identity", 3e-4, 100),
                Run("rnn_orthogonal", "tanh RNN, orthogonal", "rnn_tanh", "orthogonal", 3e-4, 100)]
    return [Run("rnn_tutorial", "tanh RNN, 0.01*randn (tutorial)", "rnn_tanh", "tutorial", 3e-4, 8000),
            Run("gru", "GRU, PyTorch init", "gru", "pytorch", 3e-3, 5000),
            Run("lstm", "LSTM, forget bias 1", "lstm", "pytorch", 3e-3, 10000, forget_bias=1.0),
            Run("rnn_identity", "tanh RNN, identity (IRNN)", "rnn_tanh", "identity", 3e-4, 8000),
            Run("rnn_orthogonal", "tanh RNN, orthogonal", "rnn_tanh", "orthogonal", 3e-4, 8000)]


def train_until_solved(model, cfg: TrainConfig, check_every: int, workdir: Path, key: str):
    """Train in chunks of ``check_every`` iterations (resuming from a checkpoint, so nothing is recomputed or lost)
    until the held-out MSE is below SOLVED or ``cfg.steps`` is reached. Returns (result, [(iteration, test MSE)])."""
    ckpt = workdir / f"{key}.npz"
    resume, curve = None, []
    while True:
        res = train(model, cfg, checkpoint=ckpt, resume=resume, stop_after=check_every)
        resume = ckpt
        curve.append((res.history.iterations, res.test_loss))
        print(f"[{key}]   iteration {res.history.iterations}: test MSE {fmt(res.test_loss, '.4g')}", flush=True)
        if res.diverged or res.history.iterations >= cfg.steps or (res.test_loss is not None
                                                                     and res.test_loss < SOLVED):
            return res, curve


def outcome(res) -> str:
    if res.diverged:
        return "diverged"
    if res.test_loss is not None and res.test_loss < SOLVED:
        return "solved"
    if res.test_loss is not None and res.test_loss < LEARNED_FRACTION * res.baseline:
        return "partly learned"
    return "did not learn"


def describe(d: dict) -> str:
    hz = f"{d['horizon_steps']}{'+' if d['horizon_censored'] else ''}"
    return (f"{d['verdict']} (horizon {hz} steps, decay {fmt(d['decay_per_step'], '+.3f')} log10/step, "
            f"top Lyapunov {fmt(d['top_lyapunov'], '+.3f')} nats/step)")


def extra_note(at: dict, after: dict | None, res, seq_len: int) -> str | None:
    """What learning_note leaves unsaid: a cell whose gradient was healthy at initialization."""
    if at["verdict"] == "vanishing" or res.diverged:
        return None
    later = f"; after training: {describe(after)}" if after else ""
    how = {"solved": "and it solved the task", "partly learned": "yet it only partly learned the task",
           "did not learn": "yet it did not learn"}[outcome(res)]
    return (f"its gradient reached back {at['horizon_steps']}{'+' if at['horizon_censored'] else ''} of {seq_len} "
            f"steps at initialization, {how} in {res.history.iterations} iterations (test MSE "
            f"{fmt(res.test_loss, '.3g')}){later}")


def run_one(run: Run, args, workdir: Path) -> dict:
    t0 = time.perf_counter()
    model = rnndiag.init_model(run.cell, input_size(TASK), args.hidden, init=run.init, seed=args.seed,
                               forget_bias=run.forget_bias)
    at_init = diagnose_on_task(model, TASK, args.seq_len, args.batch, args.seed)
    print(f"[{run.key}] {run.label}: verdict at init: {describe(summarize(at_init))}", flush=True)
    cfg = TrainConfig(task=TASK, seq_len=args.seq_len, batch_size=args.batch, steps=run.cap, optimizer="adam",
                      lr=run.lr, clip="global_norm", clip_threshold=1.0, seed=args.seed, schedule="log",
                      diag_points=8)
    res, curve = train_until_solved(model, cfg, args.check_every, workdir, run.key)
    first = res.history.diag[0] if res.history.diag else None
    if first is not None and first.iteration == 0:
        curve.insert(0, (0, first.test_loss))  # before any update
    after = None
    if not res.diverged:
        after = diagnose_on_task(res.model, TASK, args.seq_len, args.batch, args.seed, res.readout_w, res.readout_b)
    note = learning_note(at_init, after, res)
    result = InitResult(run.init, model.init, at_init, res, after, note)
    wall = time.perf_counter() - t0
    d = result.to_dict()
    d["after_training"] = d.get("after_training")
    for which, diag in (("at_init", at_init), ("after_training", after)):
        if diag is not None:  # for the figure only (not written to metrics.json)
            flow = diag.gradient_flow.median_last_step
            d[f"_curve_{which}"] = flow - flow[-1]
    d.update({"key": run.key, "label": run.label, "cell": run.cell, "lr": run.lr, "iteration_cap": run.cap,
              "forget_bias": run.forget_bias, "iterations": res.history.iterations, "outcome": outcome(res),
              "solved_at": res.history.iterations if outcome(res) == "solved" else None,
              "test_mse_curve": curve, "wall_time_s": wall,
              "extra_note": extra_note(d["at_init"], d["after_training"], res, args.seq_len)})
    report_run(d, args)
    return d


def report_run(d: dict, args) -> None:
    after = d["after_training"]
    print(f"[{d['key']}] training: {d['outcome']}: test MSE {fmt(d['training']['final_test_loss'], '.4g')} "
          f"(baseline {fmt(d['training']['baseline'], '.4g')}) after {d['iterations']} iterations "
          f"(cap {d['iteration_cap']}, Adam lr {d['lr']:g}, checked every {args.check_every})")
    if d["solved_at"] is not None:
        print(f"[{d['key']}] solved: test MSE < {SOLVED} after {d['solved_at']} iterations")
    elif not d["training"]["diverged"]:
        print(f"[{d['key']}] not solved: test MSE >= {SOLVED} after the cap of {d['iteration_cap']} iterations")
    if after is not None:
        print(f"[{d['key']}] verdict after training: {describe(after)}")
    for n in (d["note"], d["extra_note"]):
        if n:
            print(f"[{d['key']}] note: {n}")
    print(f"[{d['key']}] wall time: {d['wall_time_s']:.1f} s", flush=True)


def figures(results: list[dict], seq_len: int) -> dict:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    figs = {}
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, d in enumerate(results):
        points = [(i, v) for i, v in d["test_mse_curve"] if v is not None]
        if points:
            ax.plot(*zip(*points), "o-", ms=3, lw=1.2, color=colors[k % len(colors)], label=d["label"])
    ax.axhline(1 / 6, color="grey", ls=":", lw=1, label="baseline 1/6")
    ax.axhline(SOLVED, color="black", ls="--", lw=0.8, label=f"solved ({SOLVED})")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("held-out MSE")
    ax.set_title(f"Adding problem, T = {seq_len}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    figs["test_mse"] = fig
    fig = Figure(figsize=(7, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for k, d in enumerate(results):
        for which, style in (("at_init", "-"), ("after_training", "--")):
            flow = d.get(f"_curve_{which}")
            if flow is not None:
                ax.plot(np.arange(len(flow)), flow, style, lw=1.2, color=colors[k % len(colors)],
                        label=f"{d['key']} ({'init' if which == 'at_init' else 'trained'})")
    ax.axhline(-3, color="grey", ls=":", lw=1, label="horizon factor 1e-3")
    ax.set_xlabel("timestep t (loss at the last step)")
    ax.set_ylabel("log10 ||dL/dh_t|| rel. to the last step")
    ax.set_ylim(bottom=-12)
    ax.set_title("Gradient flow of the task loss")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    figs["grad_flow"] = fig
    return figs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes and 100 iterations per run (for the tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=None, help="comma-separated run keys (rnn_tutorial,gru,lstm,rnn_identity,"
                   "rnn_orthogonal)")
    p.add_argument("--check-every", type=int, default=None, help="iterations between checks of the held-out MSE "
                   "[default: 250; --quick: 50]")
    p.add_argument("--reports", type=Path, default=DEFAULT_REPORTS, help="parent folder of the report folder")
    args = p.parse_args(argv)
    args.hidden, args.batch, args.seq_len, check = (16, 32, 50, 50) if args.quick else (64, 64, 100, 250)
    args.check_every = args.check_every or check
    runs = runs_for(args.quick)
    if args.only:
        keys = {k.strip() for k in args.only.split(",")}
        runs = [r for r in runs if r.key in keys]
    out = fresh_report_dir(args.reports, "adding_problem" + ("-quick" if args.quick else ""))
    print(f"adding problem, T = {args.seq_len}, H = {args.hidden}, B = {args.batch}, seed {args.seed}; "
          f"solved = held-out MSE < {SOLVED}")
    t_all = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="rnndiag-adding-") as tmp:
        for run in runs:
            d = run_one(run, args, Path(tmp))
            results.append(d)
    columns = ["run", "verdict at init", "horizon", "decay log10/step", "top Lyapunov", "iterations", "test MSE",
               "outcome", "verdict after", "horizon after", "top Lyapunov after", "wall s"]
    rows = []
    for d in results:
        at, af = d["at_init"], d["after_training"] or {}
        rows.append([d["label"], at["verdict"], f"{at['horizon_steps']}{'+' if at['horizon_censored'] else ''}",
                     fmt(at["decay_per_step"], "+.3f"), fmt(at["top_lyapunov"], "+.3f"), str(d["iterations"]),
                     fmt(d["training"]["final_test_loss"], ".4f"), d["outcome"], af.get("verdict", "n/a"),
                     f"{af['horizon_steps']}{'+' if af['horizon_censored'] else ''}" if af else "n/a",
                     fmt(af.get("top_lyapunov"), "+.3f"), f"{d['wall_time_s']:.0f}"])
    print_table(f"adding problem T = {args.seq_len}: diagnosis at initialization and after training", columns, rows)
    total = time.perf_counter() - t_all
    metrics = {"example": "adding_problem", "rnndiag_version": rnndiag.__version__, "quick": args.quick,
               "task": TASK, "seq_len": args.seq_len, "hidden_size": args.hidden, "batch_size": args.batch,
               "seed": args.seed, "solved_threshold": SOLVED, "check_every": args.check_every,
               "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
               "total_wall_time_s": total, "runs": [{k: v for k, v in d.items() if not k.startswith("_")}
                                                     for d in results]}
    write_json_report(out, metrics, figures(results, args.seq_len))
    print(f"report: {out}")
    print(f"total wall time: {total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
