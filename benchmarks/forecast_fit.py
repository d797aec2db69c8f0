"""Fit and score the trainability forecast against the PyTorch labels of ``forecast_labels.py``.

Steps (each resumable, each writes a file next to this script):

    python benchmarks/forecast_fit.py --measure   # rnndiag's forecast measurements of every labelled run
                                                  # (sweep engine -> forecast_evidence.sqlite -> .jsonl)
    python benchmarks/forecast_fit.py --fit       # fit rnndiag.forecast's models on the tuning part; prints the
                                                  # COEFFICIENTS table to paste into rnndiag/forecast.py
    python benchmarks/forecast_fit.py --score     # held-out scores, baselines, seed agreement, reliability diagram

The measurement of a run is exactly what ``rnndiag forecast`` measures for that configuration (same weights: the
labels' initial weights come from ``rnndiag.init_model`` with the same seed); the labels' SGD learning rate is the
nominal one x 30, so the forecast is asked about that.

Tuning part: seed 0 of the configurations outside the held-out slices (``forecast_labels.split``). Held out: every
other run -- seed 1 of those configurations, and both seeds of every configuration with sequence length 50, hidden
size 32 or learning rate 3e-3.

Baselines on the same held-out runs: the verdict at initialization of the release this issue started from
(``healthy`` => trains; rnndiag 0.1.0 at commit 5ceb75d, whose rules this change leaves as they were), a zero-cost
proxy (the global gradient norm at initialization, thresholded on the tuning part) and a reduced-training proxy of
the same compute (the held-out loss after the forecast's probe, thresholded on the tuning part).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EVIDENCE_DB = HERE / "forecast_evidence.sqlite"
EVIDENCE = HERE / "forecast_evidence.jsonl"
SCORES = HERE / "forecast_scores.json"
DIAGRAM = HERE / "forecast_reliability.png"


def budget_of(c: dict):
    from rnndiag.forecast import Budget

    sgd = c["optimizer"] == "sgd"
    return Budget(steps=c["budget"], optimizer=c["optimizer"], lr=c["lr"] * (30 if sgd else 1), batch_size=32,
                  clip="global_norm" if c["clip"] is not None else "none", clip_threshold=c["clip"])


def model_of(c: dict, seed: int):
    from rnndiag import init_model
    from rnndiag.tasks import input_size

    return init_model(c["cell"], input_size(c["task"]), c["hidden_size"], init=c["init"], gain=c["gain"],
                      forget_bias=c["forget_bias"], seed=seed)


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, float) and not math.isfinite(v):
            v = "-inf" if v < 0 else ("inf" if v > 0 else None)
        elif isinstance(v, (np.floating, np.integer)):
            v = v.item()
        out[k] = v
    return out


def measure_point(params: dict) -> dict:
    """rnndiag.forecast.measure for one labelled run (configuration, seed)."""
    import forecast_labels as labels

    from rnndiag.experiments import diagnose_on_task
    from rnndiag.forecast import measure

    c = labels.all_configs()[params["config"]]
    model = model_of(c, params["seed"])
    m = measure(model, c["task"], c["seq_len"], budget_of(c), seed=params["seed"])
    # for the baselines only, not part of the forecast (nor of its cost): the diagnosis at initialization
    d = diagnose_on_task(model, c["task"], c["seq_len"], 32, params["seed"])
    m.update(verdict_init=d.verdict, global_grad_norm_init=d.global_grad_norm)
    return _jsonable(m)


def _number(v):
    if v == "-inf":
        return -math.inf
    if v == "inf":
        return math.inf
    return v


def trained(run: dict, fraction: float | None = None) -> bool:
    """The label at the forecast's default target (``rnndiag.forecast.TARGET_FRACTION`` x the baseline): the
    held-out loss reached it at one of the run's evaluations (a run stopped at 0.1 x the baseline passed every
    looser target on the way)."""
    from rnndiag.forecast import TARGET_FRACTION

    best = run["best_eval_loss"]
    return best is not None and best <= (fraction or TARGET_FRACTION) * run["baseline"]


def load_joined() -> list[dict]:
    """Every run with both its label (``trains`` at the forecast's default target) and its measurements."""
    from rnndiag.forecast import TARGET_FRACTION

    labels = {(r["config"], r["seed"]): {**r, "trains": trained(r)}
              for r in map(json.loads, (HERE / "forecast_labels.jsonl").open())}
    out = []
    for line in EVIDENCE.open():
        e = json.loads(line)
        key = (e["config"], e["seed"])
        if key in labels:
            measured = {k: _number(v) for k, v in e["measured"].items()}
            measured["target_loss"] = TARGET_FRACTION * measured["baseline"]  # the label's target
            measured.setdefault("hidden_size", labels[key]["hidden_size"])
            out.append({**labels[key], "measured": measured})
    return out


def feature_rows(runs, method: str):
    from rnndiag import forecast as fc

    names = fc.PROBE_FEATURES if method == "probe" else fc.ZERO_COST_FEATURES
    X = []
    for r in runs:
        f = fc.features(r["measured"], budget_of(r), r["task"], r["seq_len"], r["cell"])
        X.append([f[n] for n in names])
    return np.asarray(X), names


L2_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def _cv_brier(X, y, names, l2: float, folds: int = 5) -> float:
    """Brier score of ``l2`` in ``folds``-fold cross-validation on the tuning runs (fixed interleaved folds)."""
    from rnndiag import forecast as fc

    err = []
    for k in range(folds):
        test = np.arange(len(y)) % folds == k
        coef = fc.fit_logistic(X[~test], y[~test], names, l2=l2)  # raw units
        z = coef["intercept"] + X[test] @ np.array([coef[n] for n in names])
        err.extend((1 / (1 + np.exp(-z)) - y[test]) ** 2)
    return float(np.mean(err))


def fit(runs, l2: float | None = None) -> dict:
    """Both models of rnndiag.forecast on the tuning runs; the L2 strength by 5-fold cross-validation there."""
    from rnndiag import forecast as fc

    tune = [r for r in runs if r["split"] == "tune"]
    y = np.array([r["trains"] for r in tune], dtype=float)
    table = {}
    for method in ("probe", "zero_cost"):
        rows = [r for r in tune if method == "zero_cost" or fc.method_of(r["measured"]) == "probe"]
        yy = np.array([r["trains"] for r in rows], dtype=float)
        X, names = feature_rows(rows, method)
        strength = l2 if l2 is not None else min(L2_GRID, key=lambda a: _cv_brier(X, yy, names, a))
        table[method] = fc.centered(fc.fit_logistic(X, yy, names, l2=strength), X, names)
        print(f"{method}: {len(rows)} tuning runs ({yy.mean():.0%} train), l2 {strength:g}, cross-validated Brier "
              f"{_cv_brier(X, yy, names, strength):.3f}")
    table["observed"] = observed_counts(tune)
    print(f"tuning runs: {len(tune)} ({y.mean():.0%} train); observed {table['observed']}")
    return table


def observed_counts(tune) -> dict:
    """How the tuning runs whose probe diverged, or already reached the target, turned out (the observations
    rnndiag.forecast.observed turns into a probability)."""
    from rnndiag import forecast as fc

    out = {name: {"runs": 0, "trained": 0} for name in fc.SETTLING_OUTCOMES}
    for r in tune:
        name = fc.probe_outcome(r["measured"])
        if name:
            out[name]["runs"] += 1
            out[name]["trained"] += int(r["trains"])
    return out


def threshold_rule(values, y):
    """The threshold and direction that maximise tuning accuracy: (threshold, sign) with prediction
    sign * (value - threshold) > 0."""
    values, y = np.asarray(values, dtype=float), np.asarray(y, dtype=bool)
    best = (-1.0, 0.0, 1)
    for t in np.unique(values):
        for sign in (1, -1):
            acc = float(((sign * (values - t) > 0) == y).mean())
            if acc > best[0]:
                best = (acc, float(t), sign)
    return best[1], best[2]


def scores(pred, y, prob=None) -> dict:
    pred, y = np.asarray(pred, dtype=bool), np.asarray(y, dtype=bool)
    tpr = float((pred & y).sum() / max(1, y.sum()))
    tnr = float((~pred & ~y).sum() / max(1, (~y).sum()))
    out = {"accuracy": float((pred == y).mean()), "balanced_accuracy": (tpr + tnr) / 2, "runs": int(y.size)}
    if prob is not None:
        prob = np.asarray(prob, dtype=float)
        out["brier"] = float(((prob - y) ** 2).mean())
        out["coverage"] = float(((prob <= 0.3) | (prob >= 0.7)).mean())
        decided = (prob <= 0.3) | (prob >= 0.7)
        out["accuracy_decided"] = float((pred[decided] == y[decided]).mean()) if decided.any() else None
    return out


def _probe_ratio(r):
    t = r["measured"].get("probe_test_loss")
    return math.log10(t / r["measured"]["baseline"]) if t else 3.0


def score(runs) -> dict:
    from rnndiag import forecast as fc

    tune = [r for r in runs if r["split"] == "tune"]
    held = [r for r in runs if r["split"] != "tune"]
    y_t = np.array([r["trains"] for r in tune])
    y = np.array([r["trains"] for r in held])
    probs = []
    for r in held:
        model = model_of(r, r["seed"])
        f = fc.decide(r["measured"], model, r["task"], r["seq_len"], budget_of(r))
        probs.append(f.probability)
    probs = np.array(probs)
    out = {"held_out": {"runs": len(held), "train_share": float(y.mean()),
                        "parts": {p: sum(r["split"] == p for r in held) for p in ("seed", "slice")}},
           "forecast": scores(probs >= 0.5, y, probs)}
    out["baseline_verdict"] = scores([r["measured"]["verdict_init"] == "healthy" for r in held], y)
    def gn(r):
        return math.log10(r["measured"]["global_grad_norm_init"]) if r["measured"].get("global_grad_norm_init") \
            else -30
    t, s = threshold_rule([gn(r) for r in tune], y_t)
    out["baseline_zero_cost"] = {**scores([s * (gn(r) - t) > 0 for r in held], y),
                                 "rule": f"log10 global gradient norm at init {'>' if s > 0 else '<'} {t:.3g}"}
    t, s = threshold_rule([_probe_ratio(r) for r in tune], y_t)
    out["baseline_reduced_training"] = {**scores([s * (_probe_ratio(r) - t) > 0 for r in held], y),
                                        "rule": f"log10(held-out loss after the probe / baseline) "
                                                f"{'>' if s > 0 else '<'} {t:.3g}"}
    for part in ("seed", "slice"):
        idx = [i for i, r in enumerate(held) if r["split"] == part]
        out[f"forecast_{part}"] = scores(probs[idx] >= 0.5, y[idx], probs[idx])
    # the held-out runs of the first sample alone (the 466 scored before the extension added tuning data and
    # held-out seeds): the same runs as the first fit's score, so the two fits compare like for like
    import forecast_labels as labels

    idx = [i for i, r in enumerate(held) if r["config"] < labels.N_CONFIGS]
    out["forecast_first_sample"] = scores(probs[idx] >= 0.5, y[idx], probs[idx])
    # what the probe adds: the zero-cost model alone on the same runs
    zc = np.array([fc.predict(fc.features(r["measured"], budget_of(r), r["task"], r["seq_len"], r["cell"]),
                              "zero_cost")[0] for r in held])
    out["forecast_zero_cost_only"] = scores(zc >= 0.5, y, zc)
    costs = [r["measured"]["seconds"] / (r["budget"] * r["measured"]["step_seconds"]) for r in runs
             if r["measured"].get("step_seconds")]
    out["cost_fraction"] = {"median": float(np.median(costs)), "max": float(max(costs)), "runs": len(costs),
                            "untimed": len(runs) - len(costs)}
    out["reliability"] = reliability(probs, y)
    return out


def reliability(probs, y, bins: int = 10) -> list[dict]:
    edges = np.linspace(0, 1, bins + 1)
    out = []
    for lo, hi in itertools.pairwise(edges):
        sel = (probs >= lo) & ((probs < hi) | (hi == 1.0))
        if sel.any():
            out.append({"from": float(lo), "to": float(hi), "runs": int(sel.sum()),
                        "mean_probability": float(probs[sel].mean()), "share_trained": float(y[sel].mean())})
    return out


def draw_reliability(rel: list[dict], path=DIAGRAM) -> None:
    from rnndiag.render.figures import new_axes

    fig, ax = new_axes(4.2, 4.2)  # a Figure on the Agg canvas, as rnndiag's reports draw them (no pyplot state)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    x = [b["mean_probability"] for b in rel]
    ax.plot(x, [b["share_trained"] for b in rel], "o-", color="#1f6feb", label="forecast (held-out runs)")
    for b in rel:
        ax.annotate(str(b["runs"]), (b["mean_probability"], b["share_trained"]), textcoords="offset points",
                    xytext=(4, -10), fontsize=7, color="0.3")
    ax.set_xlabel("forecast probability of training")
    ax.set_ylabel("share of runs that trained")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Reliability on held-out runs", fontsize=10)
    fig.savefig(path, dpi=110)


def seed_agreement(runs) -> dict:
    """How often the two seeds of one configuration get the same label: the ceiling of any forecast that cannot
    see the data order."""
    by = {}
    for r in runs:
        by.setdefault(r["config"], []).append(r["trains"])
    pairs = [v for v in by.values() if len(v) == 2]
    return {"configurations": len(pairs), "agree": float(np.mean([a == b for a, b in pairs])) if pairs else None}


def markdown(out: dict) -> str:
    """The README's table of held-out scores."""
    rows = [("forecast (rnndiag.forecast)", out["forecast"]),
            ("today's verdict at init (healthy => trains)", out["baseline_verdict"]),
            ("zero-cost proxy: " + out["baseline_zero_cost"]["rule"], out["baseline_zero_cost"]),
            ("reduced training: " + out["baseline_reduced_training"]["rule"], out["baseline_reduced_training"])]
    lines = ["| on held-out runs | accuracy | balanced accuracy | Brier | coverage |", "|---|---|---|---|---|"]
    for name, sc in rows:
        brier = f"{sc['brier']:.3f}" if "brier" in sc else "-"
        cov = f"{sc['coverage']:.0%}" if "coverage" in sc else "-"
        lines.append(f"| {name} | {sc['accuracy']:.1%} | {sc['balanced_accuracy']:.1%} | {brier} | {cov} |")
    return "\n".join(lines)


def export_evidence(db_path=EVIDENCE_DB, out=EVIDENCE) -> int:
    import sqlite3

    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    rows = conn.execute("SELECT params, metrics FROM points WHERE status = 'done'").fetchall()
    conn.close()
    def kept(m: dict) -> dict:  # the probe's loss curve is for reports; the features do not use it
        return {k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in m.items() if k != "probe_curve"}

    lines = sorted(({**json.loads(p), "measured": kept(json.loads(m))} for p, m in rows),
                   key=lambda r: (r["config"], r["seed"]))
    tmp = Path(str(out) + ".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in lines))
    os.replace(tmp, out)
    return len(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", action="store_true")
    ap.add_argument("--export", action="store_true")
    ap.add_argument("--fit", action="store_true")
    ap.add_argument("--score", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--l2", type=float, default=None, help="L2 strength (default: cross-validated)")
    args = ap.parse_args(argv)
    if args.measure:
        import forecast_labels as labels

        from rnndiag.sweep import run

        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
        t0 = time.perf_counter()

        def progress(state):
            if (state.done + state.failed) % 20 == 0:
                print(f"{state.done + state.skipped}/{state.total} measured, {state.failed} failed, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)

        result = run(labels.grid(), measure_point, EVIDENCE_DB, workers=args.workers, progress=progress,
                     extend=True)  # the evidence database grows with the labels
        print(f"{result.counts} in {result.wall_s:.0f} s ({result.mode})")
        print(f"{export_evidence()} measured runs -> {EVIDENCE}")
    if args.export:
        print(f"{export_evidence()} measured runs -> {EVIDENCE}")
    if args.fit:
        from rnndiag import forecast as fc

        table = fit(load_joined(), args.l2)
        print("COEFFICIENTS = " + json.dumps(table, indent=4))
        fc.COEFFICIENTS.update(table)  # --score below scores this fit (paste it into rnndiag/forecast.py to ship it)
    if args.score:
        runs = load_joined()
        out = {"seed_agreement": seed_agreement(runs), **score(runs)}
        SCORES.write_text(json.dumps(out, indent=1) + "\n")
        draw_reliability(out["reliability"])
        print(json.dumps({k: v for k, v in out.items() if k != "reliability"}, indent=1))
        print(markdown(out))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    from forecast_fit import main as _main

    sys.exit(_main())
