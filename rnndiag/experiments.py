"""Comparisons that answer "which initialization?" and "which clipping?" with evidence.

``compare_inits`` diagnoses every scheme at initialization on the same task and, with ``train_steps``, again after
a short training run (so a gated cell whose gates learn to open is not left called hopeless). ``compare_clipping``
trains the same model from the same seed under several clipping strategies and recommends one, saying why.
Both return frozen dataclasses with ``to_dict()``; renderers draw them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .analysis import HORIZON_FACTOR, Diagnosis, analyze
from .analysis.verdict import SEVERITY
from .clip import ClipStats, clip_stats
from .engine import forward
from .init import check_scheme, init_model
from .jsonsafe import finite_or_none, jsonable
from .model import RNNModel
from .tasks import AnalysedLoss, Problem, task_problem
from .train import TrainConfig, TrainResult, train

LEARNED_FRACTION = 0.5  # final test loss below this fraction of the baseline: the task was learned


def diagnose_problem(model: RNNModel, problem: Problem, seed: int, *, steps: str | None = None,
                     horizon_factor: float = HORIZON_FACTOR, stage: str | None = None,
                     dependency_length: int | None = None) -> tuple[Diagnosis, AnalysedLoss]:
    """``analyze`` of ``model`` on the problem's batch with its loss (:meth:`Problem.analysed_loss`: the task's own
    through the problem's readout, or the probe where ``steps`` asks for other steps or the states overflowed);
    returns the diagnosis and the loss it differentiated."""
    h = None
    if problem.own_loss_applies(steps):
        with np.errstate(all="ignore"):
            h = forward(model, problem.x).h
    loss = problem.analysed_loss(h, steps)
    diag = analyze(model, problem.x, grad_h=loss.grad_h, seed=seed, loss=loss.steps, horizon_factor=horizon_factor,
                   loss_label=loss.label, stage=stage, input_source="synthetic",
                   loss_source="task" if loss.grad_h is not None else "probe", dependency_length=dependency_length,
                   input_label=f"task {problem.batch.name}, T = {problem.x.shape[0]}, B = {problem.x.shape[1]}")
    return diag, loss


def diagnose_on_task(model: RNNModel, task: str, seq_len: int, batch_size: int, seed: int,
                     w=None, b=None) -> Diagnosis:
    """``analyze`` with the task's own loss through a readout (the trained one ``w, b``, or the seeded random one),
    on the seed's diagnosis batch: what ``rnndiag analyze --task`` and ``rnndiag init`` report."""
    problem = task_problem(task, seq_len, batch_size, seed, model.num_directions * model.output_size,
                           readout_wb=None if w is None else (w, b), dtype=model.dtype)
    return diagnose_problem(model, problem, seed)[0]


@dataclass(frozen=True)
class InitResult:
    scheme: str
    label: str
    at_init: Diagnosis
    trained: TrainResult | None = field(default=None, repr=False)
    after: Diagnosis | None = None
    note: str | None = None  # e.g. "learned although the gradient vanished at initialization"
    forecast: object | None = None  # rnndiag.forecast.Forecast, with ``forecast_steps``

    @property
    def final_loss(self) -> float | None:
        return None if self.trained is None else self.trained.test_loss

    @property
    def learned(self) -> bool:
        """Trained, and the final test loss is below ``LEARNED_FRACTION`` of the task's baseline."""
        return self.trained is not None and _learned(self.trained)

    def to_dict(self) -> dict:
        d = {"scheme": self.scheme, "label": self.label, "at_init": summarize(self.at_init), "note": self.note}
        if self.forecast is not None:
            d["forecast"] = self.forecast.to_dict()
        if self.trained is not None:
            h = self.trained.history
            d["training"] = {"steps": h.iterations, "final_test_loss": finite_or_none(self.final_loss),
                             "baseline": self.trained.baseline, "diverged": self.trained.diverged,
                             "stopped": h.stopped, "loss": h.loss}
            d["after_training"] = summarize(self.after) if self.after is not None else None
        return d


def summarize(d: Diagnosis) -> dict:
    ld = d.layers[0]
    gs = ld.gates
    sat = {k: s.left_saturated + s.right_saturated for k, s in gs.gates.items() if s.kind == "sigmoid"}
    return jsonable({
        "verdict": d.verdict, "verdict_detail": d.verdict_detail, "confidence": d.confidence,
        "spectral_radius": ld.spectrum.spectral_radius, "sigma_max": ld.spectrum.sigma_max,
        "horizon_steps": d.gradient_flow.horizon.steps, "horizon_censored": d.gradient_flow.horizon.censored,
        "decay_per_step": d.gradient_flow.fit.rate, "top_lyapunov": ld.lyapunov.top,
        "gate_saturation": sat, "hidden_saturated": gs.hidden_saturated, "advice": list(d.advice),
    })


@dataclass(frozen=True)
class InitComparison:
    cell: str
    input_size: int
    hidden_size: int
    num_layers: int
    task: str
    seq_len: int
    seed: int
    results: tuple[InitResult, ...]  # ranked, best first
    ranking_rule: str
    train_steps: int = 0

    @property
    def trained(self) -> bool:
        return self.train_steps > 0

    @property
    def learned(self) -> tuple[InitResult, ...]:
        """The schemes whose final test loss fell below ``LEARNED_FRACTION`` of the task's baseline."""
        return tuple(r for r in self.results if r.learned)

    def to_dict(self) -> dict:
        return jsonable({"command": "init", "cell": self.cell, "input_size": self.input_size,
                         "hidden_size": self.hidden_size, "num_layers": self.num_layers, "task": self.task,
                         "seq_len": self.seq_len, "seed": self.seed, "ranking_rule": self.ranking_rule,
                         "ranking": [r.scheme for r in self.results], "results": [r.to_dict() for r in self.results]})


def compare_inits(cell: str, input_size: int, hidden_size: int, *, schemes, num_layers: int = 1, task: str = "adding",
                  seq_len: int = 100, batch_size: int = 32, seed: int = 0, gain: float | None = None,
                  forget_bias: float | None = None, train_steps: int = 0, train_kwargs: dict | None = None,
                  progress: Callable[[str], None] | None = None, forecast_steps: int = 0) -> InitComparison:
    """Diagnose each initialization scheme (and train it for ``train_steps`` when > 0, and forecast whether it
    trains within ``forecast_steps`` when > 0); ranked, best first: by the training's final loss, else by the
    forecast's probability, else by the diagnosis at initialization."""
    results = []
    for scheme in schemes:
        scheme = check_scheme(scheme)
        g = gain if scheme not in ("tutorial", "pytorch") else None
        model = init_model(cell, input_size, hidden_size, num_layers=num_layers, init=scheme, seed=seed, gain=g,
                           forget_bias=forget_bias)
        if progress:
            progress(f"{scheme}: diagnosing at initialization")
        try:
            at_init = diagnose_on_task(model, task, seq_len, batch_size, seed)
        except ValueError as exc:  # e.g. a state that overflows at once: say which scheme
            raise ValueError(f"init {model.init}: {exc}") from None
        trained = after = note = None
        if train_steps > 0:
            if progress:
                progress(f"{scheme}: training {train_steps} steps")
            cfg = TrainConfig(task=task, seq_len=seq_len, steps=train_steps, seed=seed, **(train_kwargs or {}))
            trained = train(model, cfg)
            if not trained.diverged:
                after = diagnose_on_task(trained.model, task, seq_len, batch_size, seed, trained.readout_w,
                                         trained.readout_b)
            note = learning_note(at_init, after, trained)
        fc = _forecast_scheme(model, scheme, task, seq_len, seed, at_init, forecast_steps, train_kwargs, progress)
        results.append(InitResult(scheme, model.init, at_init, trained, after, note, fc))
    if train_steps > 0:
        rule = "final test loss on held-out data, lowest first (diverged runs last)"
        key = lambda r: (r.trained.diverged, r.final_loss if r.final_loss is not None else math.inf)  # noqa: E731
    elif forecast_steps > 0:
        rule = f"forecast probability of reaching the target loss within {forecast_steps} steps, highest first"
        key = lambda r: (-r.forecast.probability, SEVERITY[r.at_init.verdict],  # noqa: E731
                         -r.at_init.gradient_flow.horizon.steps)
    else:
        rule = ("at initialization: healthy before vanishing before exploding, then the longer gradient horizon, "
                "then the top Lyapunov exponent closer to 0")
        key = lambda r: (SEVERITY[r.at_init.verdict], -r.at_init.gradient_flow.horizon.steps,  # noqa: E731
                         abs(r.at_init.layers[0].lyapunov.top))
    results.sort(key=key)
    return InitComparison(cell, input_size, hidden_size, num_layers, task, seq_len, seed, tuple(results), rule,
                          train_steps)


def _forecast_scheme(model, scheme, task, seq_len, seed, at_init, steps, train_kwargs, progress):
    """The trainability forecast of one scheme's model (None when ``steps`` is 0)."""
    if steps <= 0:
        return None
    from .forecast import Budget, forecast

    if progress:
        progress(f"{scheme}: forecasting training within {steps} steps")
    kw = {k: v for k, v in (train_kwargs or {}).items() if k in ("lr", "optimizer", "momentum", "batch_size")}
    return forecast(model, task, seq_len, Budget(steps=steps, **kw), seed=seed, diagnosis=at_init)


def _learned(trained: TrainResult) -> bool:
    base, final = trained.baseline, trained.test_loss
    return base is not None and final is not None and final < LEARNED_FRACTION * base


def learning_note(at_init: Diagnosis, after: Diagnosis | None, trained: TrainResult) -> str | None:
    if trained.diverged:
        return f"training diverged: {trained.history.stopped}"
    base, final = trained.baseline, trained.test_loss
    learned = _learned(trained)
    h0 = at_init.gradient_flow.horizon
    if at_init.verdict == "vanishing" and learned:
        h1 = after.gradient_flow.horizon if after is not None else None
        grew = f"; horizon {h0.steps} -> {h1.steps}{'+' if h1.censored else ''} steps" if h1 is not None else ""
        return (f"learned although the gradient vanished at initialization (test loss {final:.3g} vs baseline "
                f"{base:.3g}){grew}: the gates learned to hold memory")
    if at_init.verdict == "vanishing" and not learned and final is not None and base is not None:
        return f"did not learn in {trained.history.iterations} steps (test loss {final:.3g}, baseline {base:.3g})"
    return None


# -- clipping ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipRun:
    strategy: str
    threshold: float | None
    trained: TrainResult = field(repr=False)
    stats: ClipStats
    oscillation: float  # std / mean of the loss over the last fifth of the run

    @property
    def label(self) -> str:
        return self.strategy if self.threshold is None else f"{self.strategy}:{self.threshold:g}"

    def to_dict(self) -> dict:
        h = self.trained.history
        return jsonable({"label": self.label, "strategy": self.strategy, "threshold": self.threshold,
                         "diverged": self.trained.diverged, "stopped": h.stopped, "failure": self.trained.failure,
                         "final_test_loss": self.trained.test_loss, "baseline": self.trained.baseline,
                         "oscillation": self.oscillation, **self.stats.to_dict(), "loss": h.loss,
                         "grad_norm": h.grad_norm})


@dataclass(frozen=True)
class ClipComparison:
    cell: str
    task: str
    seq_len: int
    seed: int
    runs: tuple[ClipRun, ...]
    recommended: str | None
    reasons: tuple[str, ...]

    def to_dict(self) -> dict:
        return jsonable({"command": "clip", "cell": self.cell, "task": self.task, "seq_len": self.seq_len,
                         "seed": self.seed, "recommended": self.recommended, "reasons": list(self.reasons),
                         "runs": [r.to_dict() for r in self.runs]})


def parse_strategies(text: str) -> list[tuple[str, float | None]]:
    """``"none,global_norm:1,value:5"`` -> ``[("none", None), ("global_norm", 1.0), ("value", 5.0)]``."""
    from .clip import STRATEGIES, Clipper

    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, thr = part.partition(":")
        name = name.strip().lower()
        if name not in STRATEGIES:
            raise ValueError(f"unknown clipping strategy {name!r} in {text!r}: use {', '.join(STRATEGIES)}, e.g. "
                             "none,global_norm:1,value:5,per_param:1,autoclip:10")
        if name == "none":
            out.append(("none", None))
            continue
        try:
            value = float(thr)
        except ValueError:
            raise ValueError(f"clipping strategy {part!r} needs a number after ':', e.g. {name}:1") from None
        Clipper(name, value)  # validates
        out.append((name, value))
    if not out:
        raise ValueError("no clipping strategies given; e.g. --strategies none,global_norm:1,value:5")
    return out


def compare_clipping(model: RNNModel, strategies, base: TrainConfig,
                     progress: Callable[[str], None] | None = None,
                     on_run: Callable[[list[ClipRun]], None] | None = None) -> ClipComparison:
    """Train ``model`` from the same seed under each strategy; recommend the best non-diverged one and say why.
    ``on_run(runs)`` is called with the runs finished so far after each one (to keep them as the comparison goes
    on)."""
    runs = []
    for name, thr in strategies:
        if progress:
            progress(f"training with {name}{'' if thr is None else f':{thr:g}'}")
        cfg = dataclasses.replace(base, clip=name, clip_threshold=thr)
        res = train(model, cfg)
        h = res.history
        stats = clip_stats(name, thr, h.grad_norm, h.clipped, h.cosine)
        tail = np.asarray(h.loss[-max(1, len(h.loss) // 5):], dtype=float)
        with np.errstate(over="ignore", invalid="ignore"):
            osc = float(tail.std() / tail.mean()) if tail.size and tail.mean() > 0 else math.inf
        runs.append(ClipRun(name, thr, res, stats, osc))
        if on_run is not None:
            on_run(list(runs))
    ok = [r for r in runs if not r.trained.diverged and r.trained.failure is None and r.trained.test_loss is not None]
    reasons = []
    for r in runs:
        if r.trained.diverged:
            reasons.append(f"{r.label} diverged ({r.trained.history.stopped})")
        elif r.trained.failure is not None:
            reasons.append(f"{r.label} did not finish ({r.trained.failure}); it is not ranked")
    if not ok:
        return ClipComparison(model.cell, base.task, base.seq_len, base.seed, tuple(runs), None,
                              (*reasons, "every run diverged: lower the learning rate or the recurrent gain"))
    best = min(ok, key=lambda r: r.trained.test_loss)
    baseline = best.trained.baseline
    if baseline is not None and best.trained.test_loss >= LEARNED_FRACTION * baseline:
        reasons.insert(0, f"no strategy learned the task in {best.trained.history.iterations} iterations (every test "
                          f"loss is above {LEARNED_FRACTION:g} x the baseline {baseline:.4g}); the ranking below says "
                          "which trained most stably, not which works -- train longer or change the model first")
    reasons.append(f"{best.label} reached the lowest test loss {best.trained.test_loss:.4g} "
                   f"(baseline {best.trained.baseline:.4g}), clipping {100 * best.stats.fraction_clipped:.0f}% of "
                   f"the iterations")
    for r in ok:
        if r is best:
            continue
        if r.strategy == "value" and r.stats.mean_cosine is not None:
            reasons.append(f"{r.label} turned the gradient's direction (mean cosine {r.stats.mean_cosine:.3f} when "
                           f"it fired) and ended at {r.trained.test_loss:.4g}")
        elif r.strategy == "none":
            reasons.append(f"without clipping: test loss {r.trained.test_loss:.4g}, loss oscillation "
                           f"{r.oscillation:.2f} (std/mean over the last fifth)")
    if best.stats.suggested_threshold:
        reasons.append(f"observed pre-clip norms suggest a global-norm threshold near "
                       f"{best.stats.suggested_threshold:.3g} (90th percentile)")
    return ClipComparison(model.cell, base.task, base.seq_len, base.seed, tuple(runs), best.label, tuple(reasons))
