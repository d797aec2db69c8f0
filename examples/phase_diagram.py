"""A known phase diagram, reproduced with ``rnndiag sweep``: the order-chaos transition of random tanh networks.

A tanh RNN with no input (``input_scale=0``; the initial state h0 ~ N(0, 1), since 0 is a fixed point) and
recurrent weights either Gaussian N(0, g^2/N) (``init=xavier_normal``: zero biases) or a random orthogonal matrix
times g (``init=orthogonal``), H = 256, judged at T = 200, 4 seeds per setting, gains from 0.5 to 3. Mean-field
theory (Molgedey, Schuchhardt & Schuster 1992; Poole et al. 2016) predicts the top Lyapunov exponent: ln g below
g = 1 (the state decays to 0, where the Jacobian is W itself), and above it the chaotic value
0.5 ln(g^2 E[sech^4(sqrt(q*) z)]) for the Gaussian case, crossing 0 at g = 1.

The script runs the sweep through the command line (its report and database go to
``reports/phase-<time>/``), then checks, from the sweep's metrics.json:

* for g <= 0.9 the measured top exponent (median over seeds) is within 0.02 of ln g for the orthogonal scheme
  (whose spectral radius is g exactly); for the Gaussian one it is within 0.02 of ln rho(W), the exact exponent
  of a decayed finite network -- ln g is its N -> infinity limit, and at N = 256 the edge of the Gaussian
  spectrum lies above g: measured +0.026 to +0.027 above ln g (median of 4 seeds; +0.013 to +0.061 per seed);
* for the Gaussian case it is within 0.02 of the mean-field value at g = 1.5, 2 and 3, and changes sign
  between g = 0.95 and g = 1.25;

and prints the measured numbers next to the predictions. A second, small sweep with the adding task's inputs
(``input_scale=1``) shows measured values only: with inputs there is no closed form to compare with.

Run: ``python examples/phase_diagram.py`` (a few minutes on 2 cores); ``--quick``: H = 64, T = 60, 2 seeds, fewer
gains, the checks printed but not enforced (for the tests).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys

from _shared import DEFAULT_REPORTS, console, fresh_report_dir

from rnndiag.analysis.meanfield import mean_field_exponent

FULL = {"gains": "0.5,0.7,0.9,0.95,1.0,1.05,1.1,1.25,1.5,2.0,2.5,3.0", "hidden": 256, "seq_len": 200,
        "seeds": "0..3"}
QUICK = {"gains": "0.5,0.9,1.0,1.5,3.0", "hidden": 64, "seq_len": 60, "seeds": "0..1"}
TOL = 0.02


def sweep(folder, name: str, grid: list[str], formats: str) -> dict:
    db, out = folder / f"{name}.sqlite", folder / name
    cmd = [sys.executable, "-m", "rnndiag", "sweep", *[a for g in grid for a in ("--grid", g)], "--db", str(db),
           "--out", str(out), "--format", formats, "--quiet"]
    console.print("$ rnndiag sweep " + " ".join(cmd[4:]))
    subprocess.run(cmd, check=True)
    return json.loads((out / "metrics.json").read_text())


def medians(metrics: dict) -> dict[tuple[str, float], float]:
    """(init, gain) -> the median top exponent over the seeds."""
    table = metrics["phases"]["lyapunov_top"]
    return {(init, float(g)): z for init, row in zip(table["y"], table["z"]) for g, z in zip(table["x"], row)}


def log_radius(metrics: dict) -> dict[tuple[str, float], float]:
    """(init, gain) -> the median over seeds of ln rho(W_hh): the exact top exponent of a decayed network."""
    out: dict[tuple[str, float], list] = {}
    for p in metrics["points"]:
        if p["status"] == "done" and p.get("spectral_radius"):
            out.setdefault((p["init"], float(p["gain"])), []).append(math.log(p["spectral_radius"]))
    return {k: sorted(v)[len(v) // 2] if len(v) % 2 else sum(sorted(v)[len(v) // 2 - 1 : len(v) // 2 + 1]) / 2
            for k, v in out.items()}


def check(measured: dict, radius: dict, quick: bool) -> list[str]:
    """The predictions: ln g below g = 1 (N -> inf; at finite N the decayed network's exponent is ln rho(W),
    whose edge lies above g by O(N^-1/2) for a Gaussian matrix: both are printed), the mean-field value above."""
    failures = []
    console.print(f"{'init':>14} {'gain':>5} {'measured':>9} {'predicted':>10} {'diff':>7} {'ln rho(W)':>10} "
                  f"{'diff':>7}")
    for (init, g), lam in sorted(measured.items()):
        pred = math.log(g) if g <= 1 else (mean_field_exponent(g) if init == "xavier_normal" else None)
        diff = None if pred is None or lam is None else lam - pred
        rho = radius.get((init, g)) if g <= 1 else None
        console.print(f"{init:>14} {g:5.2f} {lam:+9.4f} {'' if pred is None else f'{pred:+10.4f}'} "
                      f"{'' if diff is None else f'{diff:+7.4f}'} {'' if rho is None else f'{rho:+10.4f}'} "
                      f"{'' if rho is None else f'{lam - rho:+7.4f}'}")
        if g <= 0.9 and init == "orthogonal" and abs(diff) > TOL:  # rho = g exactly
            failures.append(f"orthogonal g = {g}: measured {lam:+.4f}, ln g {pred:+.4f} (off by {diff:+.4f})")
        if g <= 0.9 and init == "xavier_normal" and abs(lam - rho) > TOL:
            failures.append(f"Gaussian g = {g}: measured {lam:+.4f}, ln rho(W) {rho:+.4f}")
        if init == "xavier_normal" and g in (1.5, 2.0, 3.0) and abs(diff) > TOL:
            failures.append(f"Gaussian g = {g}: measured {lam:+.4f}, mean field {pred:+.4f} (off by {diff:+.4f})")
    gauss = sorted((g, lam) for (init, g), lam in measured.items() if init == "xavier_normal")
    crossing = [(a, b) for (a, la), (b, lb) in itertools.pairwise(gauss) if la < 0 <= lb]
    where = f"between g = {crossing[0][0]} and {crossing[0][1]}" if crossing else "nowhere"
    console.print(f"the Gaussian case's top exponent changes sign {where}")
    if not quick and not (crossing and crossing[0][0] >= 0.95 and crossing[0][1] <= 1.25):
        failures.append(f"the sign change is {where}, not within g = 0.95 .. 1.25")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; checks printed, not enforced")
    parser.add_argument("--reports", default=str(DEFAULT_REPORTS))
    args = parser.parse_args()
    s = QUICK if args.quick else FULL
    folder = fresh_report_dir(args.reports, "phase")
    formats = "json" if args.quick else "html,png,json"
    base = [f"gain={s['gains']}", "init=xavier_normal,orthogonal", f"seed={s['seeds']}",
            f"hidden_size={s['hidden']}", f"seq_len={s['seq_len']}", "batch_size=4", "cell=rnn_tanh"]
    zero = sweep(folder, "zero-input", [*base, "input_scale=0"], formats)
    console.print(f"zero input: {zero['counts']['done']} points in {zero['wall_s']:.1f} s ({zero['mode']})")
    failures = check(medians(zero), log_radius(zero), args.quick)
    task = sweep(folder, "adding-inputs", [f"gain={s['gains']}", "init=xavier_normal", "seed=0",
                                           f"hidden_size={s['hidden']}", f"seq_len={s['seq_len']}", "batch_size=4",
                                           "task=adding"], formats)
    row = medians(task)
    console.print("with the adding task's inputs (measured only): " + ", ".join(
        f"g {g:g}: {lam:+.3f}" for (_, g), lam in sorted(row.items()) if lam is not None))
    for f in failures:
        console.print(f"[red]check failed:[/red] {f}")
    console.print(f"reports: {folder}")
    if failures and not args.quick:
        return 1
    console.print("all checks passed" if not args.quick else "quick run: checks printed, not enforced")
    return 0


if __name__ == "__main__":
    sys.exit(main())
