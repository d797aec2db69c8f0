r"""Trainability forecast: will this model learn this task within this training budget?

The verdict describes the gradient at the current weights; whether a model *trains* also depends on what the
gates can learn, the optimizer and the budget. The forecast measures, within 10% of the budget's compute:

* **zero-cost evidence** at the initial weights: the gradient's *reach* -- the median over the steps where the
  task's information enters (adding: the first half; copy: the 10 symbols) of
  :math:`\log_{10} \|\partial L/\partial x_t\| / \|\partial L/\partial x_{T-1}\|` (negative: it vanishes on
  the way back; positive: it grows) -- the input horizon, the hidden state's scale (log10 RMS: small weights
  start in a slow, near-linear regime), the top Lyapunov exponent, and for gated cells the *gate sensitivity*:
  the reach and horizon again with the memory gate's bias (LSTM forget, GRU update) raised by :data:`GATE_SHIFT`,
  which is what training a gate can do; with them the cell, the optimizer and learning rate, the budget, the task,
  the dependency length and the hidden size;
* a **probe**: rnndiag's own training of the same configuration (task, optimizer, learning rate, batch size,
  clipping) for as many steps as the remaining compute allows, stopped by the clock: the held-out loss after it
  against the target, the trend of the training loss extrapolated to the budget (a power law over the probe's
  second half), the reach again at the probed weights, divergence and gradient spikes.

A logistic model turns the features (:data:`FEATURES`) into a probability with the coefficients in
:data:`COEFFICIENTS`, fitted on the tuning part of labels PyTorch made (``benchmarks/forecast_labels.py``,
``benchmarks/forecast_fit.py``); every forecast lists each feature's value and its contribution to the log-odds.
Where the budget leaves too few probe steps (:data:`MIN_PROBE_STEPS`), the zero-cost model decides and says so;
a probe that diverged or already reached the target is an observation that decides by itself (:func:`observed`).
A probability between 0.3 and 0.7 is undecided: the forecast says so and suggests the budget at which it would
decide.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np

from .analysis.flow import horizon as horizon_of
from .analysis.settings import HORIZON_FACTOR
from .cells import cell_module, gate_rows, is_gated
from .engine import backward, forward
from .jsonsafe import finite_or_none, jsonable
from .model import RNNModel
from .tasks import COPY_LENGTH, DIAGNOSIS_STREAM, task_problem
from .train import TrainConfig, train

TASKS = ("adding", "adding_hs97", "copy")  # the tasks the forecast was calibrated on
TARGET_FRACTION = 0.1  # default success criterion: the held-out loss reaches 0.1 x the trivial baseline
MAX_COST_FRACTION = 0.1  # the forecast's compute: at most this share of the budget's
PROBE_RESERVE = 0.92  # the probe stops when the forecast has used this share of its allowance (the rest: margin)
MIN_PROBE_STEPS = 20  # fewer affordable probe steps than this: the zero-cost model decides
GATE_SHIFT = 2.0  # the memory gate's bias moves by this much in the sensitivity measurement
UNDECIDED = (0.3, 0.7)  # probabilities in this open interval are "cannot decide"
DIAGNOSIS_BATCH = 32  # sequences of the zero-cost measurements
TIMING_STEPS = 4  # training steps that measure the step time where no probe is affordable

# name -> (what it is, clip range); every feature is in the units given, clipped before the model sees it
FEATURES = {
    "reach_init": ("log10 gradient reach at the initial weights, where it falls (0 where it grows)", (-20.0, 0.0)),
    "growth_init": ("log10 gradient growth at the initial weights, where it grows (0 where it falls)", (0.0, 20.0)),
    "reach_gate": ("log10 gradient reach the memory gate can give: the better of the reach with its bias + 2 and "
                   "without (0 for plain RNNs, which have no gate to learn)", (-20.0, 0.0)),
    "state_scale": ("log10 RMS of the hidden state on the task's inputs at the initial weights: a tiny state "
                    "(small weights) starts in a slow, near-linear regime", (-6.0, 1.0)),
    "gated": ("1 for LSTM and GRU, 0 for plain RNNs", (0.0, 1.0)),
    "lstm": ("1 for LSTM (gated: LSTM against GRU), 0 otherwise", (0.0, 1.0)),
    "relu": ("1 for the ReLU RNN (plain: ReLU against tanh), 0 otherwise", (0.0, 1.0)),
    "lyapunov": ("top Lyapunov exponent at the initial weights, nats/step", (-2.0, 2.0)),
    "log_lr": ("log10 learning rate", (-6.0, 1.0)),
    "log_lr_squared": ("(log10 learning rate)^2: too small and too large both fail", (0.0, 36.0)),
    "log_steps": ("log10 budget steps", (0.0, 6.0)),
    "sgd": ("1 for SGD with momentum, 0 for Adam", (0.0, 1.0)),
    "relu_log_lr": ("log10 learning rate for the ReLU RNN (0 otherwise): its unbounded activation makes it the "
                    "most sensitive to the rate", (-6.0, 1.0)),
    "sgd_log_lr": ("log10 learning rate for SGD (0 for Adam): the two optimizers' rates differ in scale",
                   (-6.0, 1.0)),
    "copy": ("1 for the copy task, 0 for adding", (0.0, 1.0)),
    "log_dependency": ("log10 of the dependency length (adding: T; copy: T + 10)", (0.3, 4.0)),
    "log_hidden": ("log10 hidden size", (0.0, 4.0)),
    "plain_probe_loss": ("log10(held-out loss after the probe / target) for plain RNNs (0 for LSTM and GRU: after "
                         "a tenth of the budget a gated cell's loss showed no consistent sign)", (-2.0, 2.0)),
}
ZERO_COST_FEATURES = ("reach_init", "growth_init", "state_scale", "reach_gate", "gated", "lstm", "relu", "lyapunov",
                      "log_lr", "log_lr_squared", "log_steps", "sgd", "sgd_log_lr", "relu_log_lr", "copy",
                      "log_dependency", "log_hidden")
PROBE_FEATURES = (*ZERO_COST_FEATURES, "plain_probe_loss")
# measured and reported with every probe, but not in the model (cross-validation on the tuning runs found they
# added noise, or a sign that makes no sense): the training loss's trend extrapolated to the budget, a gated
# cell's probe loss, the reach at the probed weights, the largest gradient spike. Two probe outcomes are not
# features but observations (COEFFICIENTS["observed"]): a probe that diverged, and one that already reached the
# target.

# The fitted logistic models: log-odds = intercept + sum(coefficient x (clipped feature - centre)), features in
# FEATURES' units, centres their means over the tuning runs. Fitted by benchmarks/forecast_fit.py --fit on the
# tuning part of benchmarks/forecast_labels.jsonl (seed 0 of the 574 configurations outside the held-out slices,
# 42% of which train; L2 strength by 5-fold cross-validation), 2026-12-07; the README has the held-out scores.
# The features beyond the gradient's (cell, state scale, the rate per optimizer and for ReLU, the probe's loss for
# plain RNNs only) were chosen by cross-validation on the tuning runs alone. "observed": the tuning runs whose probe
# diverged or already reached the target (at the label's target), and how many of them trained.
COEFFICIENTS = {
    "probe": {
        "intercept": -2.69167,
        "coefficients": {
            "reach_init": 0.0617874, "growth_init": -1.43974, "state_scale": 1.56809, "reach_gate": -0.581581,
            "gated": 3.09586, "lstm": -2.44566, "relu": 0.987425, "lyapunov": -0.043536, "log_lr": 0.833696,
            "log_lr_squared": -0.894386, "log_steps": 6.99924, "sgd": -5.65967, "sgd_log_lr": 0.678953,
            "relu_log_lr": -2.15874, "copy": -7.84119, "log_dependency": -6.03535, "log_hidden": 1.19661,
            "plain_probe_loss": -5.74234
        },
        "centers": {
            "reach_init": -4.99453, "growth_init": 0.497054, "state_scale": -1.06904, "reach_gate": -0.495757,
            "gated": 0.552265, "lstm": 0.33101, "relu": 0.275261, "lyapunov": -0.444138, "log_lr": -2.44623,
            "log_lr_squared": 6.66284, "log_steps": 3.02203, "sgd": 0.137631, "sgd_log_lr": -0.148027,
            "relu_log_lr": -0.685592, "copy": 0.0801394, "log_dependency": 1.42055, "log_hidden": 1.54186,
            "plain_probe_loss": 0.503934
        },
    },
    "zero_cost": {
        "intercept": -2.92375,
        "coefficients": {
            "reach_init": 0.0970154, "growth_init": -2.09945, "state_scale": 1.75668, "reach_gate": -0.715368,
            "gated": 9.67796, "lstm": -2.70384, "relu": 1.33371, "lyapunov": -0.341194, "log_lr": 0.0206105,
            "log_lr_squared": -1.20677, "log_steps": 7.98233, "sgd": -6.27572, "sgd_log_lr": 0.748238,
            "relu_log_lr": -2.28828, "copy": -9.36929, "log_dependency": -6.62445, "log_hidden": 1.63896
        },
        "centers": {
            "reach_init": -4.99453, "growth_init": 0.497054, "state_scale": -1.06904, "reach_gate": -0.495757,
            "gated": 0.552265, "lstm": 0.33101, "relu": 0.275261, "lyapunov": -0.444138, "log_lr": -2.44623,
            "log_lr_squared": 6.66284, "log_steps": 3.02203, "sgd": 0.137631, "sgd_log_lr": -0.148027,
            "relu_log_lr": -0.685592, "copy": 0.0801394, "log_dependency": 1.42055, "log_hidden": 1.54186
        },
    },
    "observed": {
        "probe_diverged": {"runs": 6, "trained": 0},
        "probe_reached_target": {"runs": 18, "trained": 18},
    },
}


@dataclass(frozen=True)
class Budget:
    """The training the user plans: what the forecast answers about."""

    steps: int
    optimizer: str = "adam"
    lr: float = 1e-3
    batch_size: int = 32
    momentum: float = 0.9
    clip: str = "global_norm"
    clip_threshold: float | None = 1.0
    target_loss: float | None = None  # None: TARGET_FRACTION x the task's trivial baseline

    def __post_init__(self):
        TrainConfig(steps=self.steps, optimizer=self.optimizer, lr=self.lr, batch_size=self.batch_size,
                    momentum=self.momentum, clip=self.clip, clip_threshold=self.clip_threshold)  # validates
        if self.target_loss is not None and not (isinstance(self.target_loss, (int, float)) and
                                                 math.isfinite(self.target_loss) and self.target_loss > 0):
            raise ValueError(f"target_loss must be a positive finite number; got {self.target_loss!r}")


@dataclass(frozen=True)
class Reach:
    """How far back the task loss's gradient reaches, from one forward and backward pass."""

    reach: float  # log10 median over the source steps of ||dL/dx_t|| / ||dL/dx_{T-1}|| (< 0 vanishing, > 0 growing)
    horizon_steps: int
    horizon_censored: bool
    state_scale: float  # log10 RMS of the top layer's output h over the batch and all steps (-inf: all zero)


@dataclass(frozen=True)
class Forecast:
    """The answer and everything it rests on (``to_dict`` is metrics.json's ``forecast`` object)."""

    trains: bool
    probability: float
    decided: bool  # False: the probability is between 0.3 and 0.7
    method: str  # "probe", "zero_cost" or "observed" (a probe that diverged or reached the target)
    task: str
    seq_len: int
    target_loss: float
    baseline: float
    budget: Budget
    probe_steps: int
    cost_fraction: float
    seconds: float
    step_seconds: float  # median wall time of one rnndiag training step of this model (this thread count)
    features: dict[str, float]
    contributions: dict[str, float]  # each feature's term in the log-odds
    measured: dict[str, object]  # the raw numbers behind the features
    reasons: tuple[str, ...]  # the evidence in words, most telling first
    suggestion: str | None  # where undecided: the budget at which the forecast would decide
    looked_at: str = field(default="")

    def to_dict(self) -> dict:
        rule = (f"logistic model '{self.method}' (rnndiag.forecast.COEFFICIENTS): log-odds = intercept + "
                "sum(coefficient x (feature - centre)); trains if probability >= 0.5; undecided between "
                f"{UNDECIDED[0]} and {UNDECIDED[1]}")
        if self.method == "observed":
            rule = ("observed (rnndiag.forecast.COEFFICIENTS['observed']): a probe that diverged or already reached "
                    "the target sets the probability to the share of labelled tuning runs with that outcome that "
                    "trained, (trained + 1) / (runs + 2); the probe model's terms are shown beside it")
        return jsonable({
            "trains": self.trains, "probability": self.probability, "decided": self.decided,
            "target_loss": self.target_loss, "baseline": self.baseline, "budget_steps": self.budget.steps,
            "probe_steps": self.probe_steps, "cost_fraction": finite_or_none(self.cost_fraction),
            "seconds": self.seconds, "step_seconds": self.step_seconds, "task": self.task, "seq_len": self.seq_len,
            "budget": dataclasses.asdict(self.budget), "looked_at": self.looked_at,
            "evidence": {"method": self.method, "rule": rule, "features": self.features,
                         "contributions": self.contributions, "measured": self.measured,
                         "reasons": list(self.reasons)},
            "suggestion": self.suggestion,
        })


# -- measurements ---------------------------------------------------------------------------------------------
def dependency_length(task: str, seq_len: int) -> int:
    """Steps between where the task's information enters and where the loss looks."""
    return seq_len + COPY_LENGTH if task == "copy" else seq_len


def source_steps(task: str, seq_len: int) -> slice:
    """The steps where the task's information enters: adding, the first half (the first marker); copy, the
    symbols."""
    return slice(0, COPY_LENGTH) if task == "copy" else slice(0, max(1, seq_len // 2))


def gradient_reach(model: RNNModel, problem, task: str, seq_len: int) -> Reach:
    """One forward and backward pass of the task loss through the problem's readout; see :class:`Reach`. The
    gradient is taken on the inputs, ||dL/dx_t||: how much the loss can learn from what
    enters at step t, whatever the cell keeps its memory in (h, or an LSTM's c)."""
    with np.errstate(all="ignore"):
        fwd = forward(model, problem.x)
        _, grad_h, _, _ = problem.loss_and_grads(fwd.h.astype(np.float64))
        trace = backward(fwd, grad_h.astype(model.dtype), param_grads=False)
        log10 = np.log10(np.median(np.linalg.norm(trace.grad_x.astype(np.float64), axis=2), axis=1))
        rms = float(np.sqrt(np.mean(np.square(fwd.h.astype(np.float64)))))
    scale = math.log10(rms) if rms > 0 and math.isfinite(rms) else (-math.inf if rms == 0 else math.inf)
    ref = float(log10[-1])  # the input at the last step: the loss sees it directly
    if not math.isfinite(ref):  # a loss gradient that died (0) or overflowed (inf, NaN)
        return Reach(-math.inf if ref == -math.inf else math.inf, 0, False, scale)
    log10 = np.where(np.isnan(log10), np.inf, log10)  # NaN: an overflow on the way back
    reach = float(np.median(log10[source_steps(task, seq_len)]) - ref)
    hz = horizon_of(log10, HORIZON_FACTOR, None)
    return Reach(reach, hz.steps, hz.censored, scale)


def shift_memory_gate(model: RNNModel, delta: float) -> RNNModel | None:
    """The model with every layer's memory-gate bias (LSTM forget, GRU update) raised by ``delta``: longer memory;
    None for cells without a memory gate or without biases."""
    gate = cell_module(model.cell).MEMORY_GATE
    if gate is None or not model.bias:
        return None
    params = dict(model.params)
    for name in params:
        if name.startswith("bias_ih_l"):
            b = params[name].copy()
            b[gate_rows(model.cell, gate, model.hidden_size)] += delta
            params[name] = b
    return model.with_params(params)


def zero_cost(model: RNNModel, task: str, seq_len: int, seed: int, diagnosis=None) -> dict:
    """The measurements at the given weights: the gradient's reach on the inputs and, for gated cells, the reach
    with the memory gate's bias raised (two forward and backward passes each); with a ``diagnosis`` already made
    at these weights, its verdict, horizon and Lyapunov exponent too."""
    problem = task_problem(task, seq_len, DIAGNOSIS_BATCH, seed, model.num_directions * model.output_size,
                           stream=DIAGNOSIS_STREAM, input_size=model.input_size, dtype=model.dtype)
    base = gradient_reach(model, problem, task, seq_len)
    shifted_model = shift_memory_gate(model, GATE_SHIFT)
    shifted = gradient_reach(shifted_model, problem, task, seq_len) if shifted_model is not None else base
    # the state scale kept finite (+-30: zero or overflowed) so that metrics.json carries it as a number
    out = {"reach_init": base.reach, "state_scale_init": min(max(base.state_scale, -30.0), 30.0),
           "input_horizon_init": base.horizon_steps,
           "input_horizon_init_censored": base.horizon_censored,
           "reach_gate": shifted.reach, "input_horizon_gate": shifted.horizon_steps,
           "input_horizon_gate_censored": shifted.horizon_censored, "verdict": None}
    if diagnosis is not None:
        top = diagnosis.layers[-1]
        out.update(verdict=diagnosis.verdict, horizon_steps=top.flow.horizon.steps,
                   lyapunov_top=finite_or_none(top.lyapunov.top))
    return out


def _loss_trend(losses: list[float]) -> float | None:
    """Slope of log10(training loss) against log10(step) over the probe's second half, from the means of four
    windows (a batch's loss is noisy); None for fewer than 8 steps."""
    n = len(losses)
    if n < 8:
        return None
    windows = np.array_split(np.arange(n // 2, n), 4)  # steps (0-based) of the second half, in four windows
    loss = np.asarray(losses, dtype=np.float64)
    x = np.log10([w.mean() + 1.0 for w in windows])
    y = np.log10([max(float(loss[w].mean()), 1e-12) for w in windows])
    if not np.isfinite(y).all():
        return None
    return float(np.polyfit(x, y, 1)[0])


def run_probe(model: RNNModel, task: str, seq_len: int, seed: int, budget: Budget, deadline, max_steps: int,
              clock=time.perf_counter) -> dict:
    """rnndiag's training of the configuration, stopped when ``deadline(step_seconds)`` says the allowance is used
    (or after ``max_steps``): the losses, the step times, the probed model and readout."""
    cfg = TrainConfig(task=task, seq_len=seq_len, batch_size=budget.batch_size, steps=max(1, max_steps),
                      optimizer=budget.optimizer, lr=budget.lr, momentum=budget.momentum, clip=budget.clip,
                      clip_threshold=budget.clip_threshold, seed=seed, diag_points=2,
                      eval_batch=max(budget.batch_size, 64))
    times: list[float] = []
    last = [clock()]

    def progress(i, loss, norm):
        now = clock()
        times.append(now - last[0])
        last[0] = now
        return not deadline(float(np.median(times)))

    t0 = clock()
    result = train(model, cfg, progress=progress)
    return {"result": result, "step_times": times, "seconds": clock() - t0}


def method_of(measured: dict) -> str:
    """"probe" where the probe ran its minimum of steps (or diverged trying), else "zero_cost"."""
    ran = measured.get("probe_steps", 0) >= MIN_PROBE_STEPS
    return "probe" if ran or (measured.get("probe_planned") and measured.get("probe_diverged")) else "zero_cost"


# -- features and the model ----------------------------------------------------------------------------------
def _clipped(name: str, value) -> float:
    lo, hi = FEATURES[name][1]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return lo if name.startswith(("reach", "lyapunov")) else hi
    return float(min(max(value, lo), hi))


def features(measured: dict, budget: Budget, task: str, seq_len: int, cell: str, *, budget_steps=None) -> dict:
    """The model's inputs from the measured numbers (``budget_steps``: another budget, for what-ifs)."""
    steps = budget_steps or budget.steps
    target = measured["target_loss"]
    lr = math.log10(budget.lr)
    f = {"reach_init": min(measured["reach_init"], 0.0), "growth_init": max(measured["reach_init"], 0.0),
         "state_scale": measured["state_scale_init"],
         "reach_gate": min(max(measured["reach_gate"], measured["reach_init"]), 0.0) if is_gated(cell) else 0.0,
         "gated": 1.0 if is_gated(cell) else 0.0, "lstm": 1.0 if cell == "lstm" else 0.0,
         "relu": 1.0 if cell == "rnn_relu" else 0.0, "lyapunov": measured.get("lyapunov_top") or 0.0,
         "log_lr": lr, "log_lr_squared": lr * lr, "log_steps": math.log10(steps),
         "sgd": 1.0 if budget.optimizer == "sgd" else 0.0,
         "sgd_log_lr": lr if budget.optimizer == "sgd" else 0.0, "relu_log_lr": lr if cell == "rnn_relu" else 0.0,
         "copy": 1.0 if task == "copy" else 0.0,
         "log_dependency": math.log10(dependency_length(task, seq_len)),
         "log_hidden": math.log10(measured["hidden_size"])}
    if method_of(measured) == "probe":
        test = measured.get("probe_test_loss")
        f["plain_probe_loss"] = 0.0 if is_gated(cell) else (math.log10(test / target) if test else None)
    return {name: _clipped(name, value) for name, value in f.items()}


def predict(feats: dict, method: str) -> tuple[float, dict]:
    """(probability, each feature's term in the log-odds) under the fitted model ``method``: a term is the
    coefficient times the feature's distance from its centre (its mean over the tuning runs), so it says how much
    this feature moves the odds away from those of a typical configuration."""
    model = COEFFICIENTS[method]
    terms = {name: c * (feats[name] - model["centers"][name]) for name, c in model["coefficients"].items()}
    z = model["intercept"] + sum(terms.values())
    return 1.0 / (1.0 + math.exp(-min(max(z, -40.0), 40.0))), terms


def fit_logistic(X: np.ndarray, y: np.ndarray, names, l2: float = 1.0) -> dict:
    """L2-regularised logistic regression on standardised features (the intercept is not penalised), in raw units:
    ``{"intercept": b, name: c, ...}`` with log-odds = b + sum(c x feature)."""
    from scipy.optimize import minimize

    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    mu, sd = X.mean(axis=0), X.std(axis=0)
    sd[sd == 0] = 1.0
    Z = (X - mu) / sd

    def loss(w):
        z = w[0] + Z @ w[1:]
        nll = np.logaddexp(0.0, z).sum() - y @ z
        p = 1.0 / (1.0 + np.exp(-z))
        grad = np.concatenate([[(p - y).sum()], Z.T @ (p - y)]) + l2 * np.concatenate([[0.0], w[1:]])
        return nll + 0.5 * l2 * (w[1:] @ w[1:]), grad

    w = minimize(loss, np.zeros(X.shape[1] + 1), jac=True, method="L-BFGS-B").x
    coef = w[1:] / sd
    return {"intercept": float(w[0] - coef @ mu), **{n: float(c) for n, c in zip(names, coef)}}


def centered(raw: dict, X: np.ndarray, names) -> dict:
    """A :func:`fit_logistic` table as :data:`COEFFICIENTS` holds it: the features' centres (their means over
    ``X``), the coefficients, and the intercept at the centres (the log-odds of a typical configuration)."""
    centers = {n: float(v) for n, v in zip(names, np.asarray(X, dtype=np.float64).mean(axis=0))}
    coefficients = {n: raw[n] for n in names}
    return {"intercept": raw["intercept"] + sum(coefficients[n] * centers[n] for n in names),
            "coefficients": coefficients, "centers": centers}


# -- the forecast ---------------------------------------------------------------------------------------------
def check_forecastable(model: RNNModel, task: str) -> str:
    """The task's canonical name; one line naming the fix for a task or model the forecast does not cover."""
    from .tasks import check_task
    from .tasks import input_size as task_input_size

    task = check_task(task)
    if task not in TASKS:
        raise ValueError(f"the forecast is calibrated on the {', '.join(TASKS)} tasks; got {task!r}: choose one of "
                         "them, or train with rnndiag train to see")
    if model.bidirectional or model.proj_size:
        raise ValueError("the forecast probes by training, which rnndiag does for one-way models without proj_size")
    if model.input_size != task_input_size(task):
        raise ValueError(f"the {task} task feeds {task_input_size(task)} input channels but the model takes "
                         f"{model.input_size}; choose a task that fits")
    return task


def measure(model: RNNModel, task: str, seq_len: int, budget: Budget, *, seed: int = 0, diagnosis=None,
            clock=time.perf_counter) -> dict:
    """Every number the forecast uses, measured within :data:`MAX_COST_FRACTION` of the budget's compute (see the
    module docstring); ``diagnosis``: one already made at these weights (``rnndiag analyze --forecast``), reused."""
    task = check_forecastable(model, task)
    t0 = clock()
    measured = zero_cost(model, task, seq_len, seed, diagnosis)
    measured["zero_cost_seconds"] = clock() - t0
    baseline = task_problem(task, seq_len, 1, seed, model.output_size, input_size=model.input_size).batch.baseline
    target = budget.target_loss if budget.target_loss is not None else TARGET_FRACTION * baseline
    measured.update(baseline=baseline, target_loss=target, diagnosis_reused=diagnosis is not None,
                    hidden_size=model.hidden_size)
    allowance = MAX_COST_FRACTION * budget.steps
    affordable = int(PROBE_RESERVE * allowance)

    # what follows the probe (its held-out loss, the reach at the probed weights) costs about what the zero-cost
    # measurements did, plus a step or two: kept in reserve, so that tiny models with fixed overheads stay within
    post = measured["zero_cost_seconds"]

    def deadline(step_s: float) -> bool:  # another step and the work after the probe would pass the allowance
        return clock() - t0 + post + 3 * step_s >= PROBE_RESERVE * allowance * step_s

    probing = affordable >= MIN_PROBE_STEPS
    # without a probe, four steps still measure the step time (the first and last run the scheduled diagnostics)
    probe = run_probe(model, task, seq_len, seed, budget, deadline if probing else (lambda s: False),
                      affordable if probing else TIMING_STEPS, clock)
    result, times = probe["result"], probe["step_times"]
    h = result.history
    steps = h.iterations
    plain = times[1:-1] if len(times) >= TIMING_STEPS else times  # the steps without scheduled diagnostics
    # a probe that diverged at its first step timed none: its whole time then counts as one step (an upper bound)
    step = float(np.median(plain)) if plain else probe["seconds"] / (steps + 1)
    measured.update(step_seconds=step, probe_steps=steps if probing else 0,
                    probe_planned=probing, probe_diverged=result.diverged, probe_stopped=h.stopped)
    if measured.get("lyapunov_top") is None and h.diag:  # the probe's diagnostic at iteration 0: the weights given
        measured["lyapunov_top"] = finite_or_none(h.diag[0].layers[-1].top_lyapunov)
    if probing and steps:
        losses = [v for v in h.loss if math.isfinite(v)]
        tail = losses[-max(1, len(losses) // 4):]
        norms = np.asarray(h.grad_norm, dtype=np.float64)
        norms = norms[np.isfinite(norms) & (norms > 0)]
        every = max(1, len(h.loss) // 100)
        measured.update(probe_curve=[[i + 1, finite_or_none(v)] for i, v in enumerate(h.loss)][::every],
                        probe_test_loss=finite_or_none(result.test_loss) if not result.diverged else None,
                        probe_end_loss=float(np.mean(tail)) if tail else None, probe_trend=_loss_trend(losses),
                        probe_spike=float(np.log10(norms.max() / np.median(norms))) if norms.size else None)
        if not result.diverged:
            problem = task_problem(task, seq_len, DIAGNOSIS_BATCH, seed, model.output_size,
                                   readout_wb=(result.readout_w, result.readout_b), input_size=model.input_size,
                                   dtype=model.dtype)
            after = gradient_reach(result.model, problem, task, seq_len)
            measured.update(reach_probe=after.reach, input_horizon_probe=after.horizon_steps,
                            input_horizon_probe_censored=after.horizon_censored)
    measured["seconds"] = clock() - t0
    return measured


def forecast(model: RNNModel, task: str, seq_len: int, budget: Budget, *, seed: int = 0, diagnosis=None,
             looked_at: str | None = None) -> Forecast:
    """Whether ``model`` reaches the target loss on ``task`` within ``budget`` (see the module docstring).

    >>> from rnndiag import init_model
    >>> f = forecast(init_model("gru", 2, 16, seed=0), "adding", 20, Budget(steps=300))
    >>> 0.0 <= f.probability <= 1.0 and f.cost_fraction is not None
    True
    """
    measured = measure(model, task, seq_len, budget, seed=seed, diagnosis=diagnosis)
    return decide(measured, model, task, seq_len, budget, looked_at=looked_at)


SETTLING_OUTCOMES = {"probe_diverged": "the probe diverged at this learning rate",
                     "probe_reached_target": "the probe already reached the target"}


def probe_outcome(measured: dict) -> str | None:
    """The probe outcome that settles the question (a key of :data:`SETTLING_OUTCOMES`), or None."""
    if method_of(measured) != "probe":
        return None
    if measured.get("probe_diverged"):
        return "probe_diverged"
    test = measured.get("probe_test_loss")
    return "probe_reached_target" if test is not None and test <= measured["target_loss"] else None


def observed(measured: dict) -> tuple[str, float, str] | None:
    """A probe outcome that settles the question (COEFFICIENTS["observed"]): (name, probability, words) -- the
    probability from the labelled tuning runs with the same outcome, (trained + 1) / (runs + 2) -- or None."""
    name = probe_outcome(measured)
    if name is None:
        return None
    what = SETTLING_OUTCOMES[name]
    seen = COEFFICIENTS["observed"][name]
    p = (seen["trained"] + 1) / (seen["runs"] + 2)
    return name, p, (f"{what}: of the {seen['runs']} labelled tuning runs whose probe did so, {seen['trained']} "
                     f"trained; probability ({seen['trained']} + 1) / ({seen['runs']} + 2) = {p:.2f}")


def decide(measured: dict, model: RNNModel, task: str, seq_len: int, budget: Budget, *,
           looked_at: str | None = None) -> Forecast:
    """The forecast from measured numbers (:func:`measure`): features, probability, words, suggestion. A probe
    that diverged or already reached the target decides by :func:`observed`; the model's terms are still shown."""
    model_method = method_of(measured)
    feats = features(measured, budget, task, seq_len, model.cell)
    p, terms = predict(feats, model_method)
    settled = observed(measured)
    if settled is not None:
        p = settled[1]
    decided = not (UNDECIDED[0] < p < UNDECIDED[1])
    step_s = measured.get("step_seconds")
    cost = measured["seconds"] / (budget.steps * step_s) if step_s else math.inf
    suggestion = None if decided else _suggest(measured, model, task, seq_len, budget, model_method)
    stage = {"init": "at initialization", "trained": "trained"}.get(model.stage, "loaded from a file")
    seen = looked_at or (f"{model.describe()} ({stage}) on the synthetic {task} task, T = {seq_len}; the task's "
                         f"own loss through a seeded readout; a probe trained by rnndiag")
    method = "observed" if settled else model_method
    return Forecast(p >= 0.5, p, decided, method, task, seq_len, measured["target_loss"], measured["baseline"],
                    budget, measured.get("probe_steps", 0), cost, measured["seconds"], step_s or math.nan, feats,
                    terms, dict(measured), tuple(([settled[2]] if settled else [])
                                                 + _reasons(measured, model, task, seq_len, budget,
                                                            model_method, p, terms)),
                    suggestion, seen)


def _suggest(measured, model, task, seq_len, budget, method) -> str:
    for k in (2, 4, 8, 16):
        steps = budget.steps * k
        p, _ = predict(features(measured, budget, task, seq_len, model.cell, budget_steps=steps), method)
        if p >= UNDECIDED[1]:
            return (f"undecided at {budget.steps} steps; at {steps} steps the same evidence forecasts trains "
                    f"(p = {p:.2f})")
    larger = max(MIN_PROBE_STEPS * 10 if method == "zero_cost" else budget.steps * 4, budget.steps * 2)
    return (f"undecided: no budget up to {16 * budget.steps} steps decides from this evidence; forecasting a budget "
            f"of {larger} steps gives the probe about {int(MAX_COST_FRACTION * PROBE_RESERVE * larger)} steps to "
            "look further")


def _steps(n, censored) -> str:
    return f">= {n}" if censored else str(n)


def _reasons(m: dict, model: RNNModel, task: str, seq_len: int, budget: Budget, method: str, p: float,
             terms: dict) -> list[str]:
    dep = dependency_length(task, seq_len)
    out = []
    if method == "probe":
        test = m.get("probe_test_loss")
        line = (f"probe: {m['probe_steps']} rnndiag training steps of the {budget.steps}-step budget: held-out loss "
                f"{'non-finite' if test is None else format(test, '.4g')} (target {m['target_loss']:.4g}, trivial "
                f"baseline {m['baseline']:.4g})")
        if m.get("probe_trend") is not None and m.get("probe_end_loss"):
            extrap = m["probe_end_loss"] * (budget.steps / m["probe_steps"]) ** min(max(m["probe_trend"], -3), 0.5)
            line += (f"; training loss falls as step^{m['probe_trend']:.2f}, extrapolated {extrap:.3g} at "
                     f"{budget.steps} steps")
        out.append(line)
        if m.get("probe_diverged"):
            out.append(f"the probe diverged: {m.get('probe_stopped')}")
    else:
        ran = f"the probe could run only {m['probe_steps']} steps" if m.get("probe_planned") else \
            "it affords fewer than " + str(MIN_PROBE_STEPS) + " probe steps"
        out.append(f"zero-cost evidence only: within {MAX_COST_FRACTION:.0%} of a {budget.steps}-step budget {ran}")
    reach = m["reach_init"]
    out.append(f"gradient reach at these weights: the loss's gradient on the inputs where the {task} task's "
               f"information enters is {_pow10(reach)} of its value at the last step (input horizon "
               f"{_steps(m['input_horizon_init'], m['input_horizon_init_censored'])} steps; the dependency spans "
               f"{dep}); hidden state RMS {_pow10(_unclamped(m['state_scale_init']))}"
               + (" (tiny: the weights start in the slow, near-linear regime)"
                  if m["state_scale_init"] < -1.5 else ""))
    gate = cell_module(model.cell).MEMORY_GATE_NAME
    if gate is not None:
        line = (f"{gate} gate bias sensitivity: input horizon "
                f"{_steps(m['input_horizon_init'], m['input_horizon_init_censored'])} -> "
                f"{_steps(m['input_horizon_gate'], m['input_horizon_gate_censored'])} steps with the bias "
                f"+{GATE_SHIFT:g}")
        if m.get("input_horizon_probe") is not None:
            line += (f"; after {m['probe_steps']} probe steps the horizon is "
                     f"{_steps(m['input_horizon_probe'], m['input_horizon_probe_censored'])} steps")
        out.append(line)
    dep_reached = m["input_horizon_init_censored"] or m["input_horizon_init"] >= dep
    if m["reach_init"] > 1:
        flow = f"the gradient grows on the way back at these weights ({_pow10(m['reach_init'])}): exploding"
    elif dep_reached:
        flow = "the gradient reaches the whole dependency at these weights"
    else:
        flow = f"the gradient vanishes at these weights (input horizon {m['input_horizon_init']} of {dep} steps)"
    if m.get("verdict") is not None:
        flow += f"; the verdict is {m['verdict']} (gradient horizon {m['horizon_steps']} of {seq_len} steps)"
    if not dep_reached and p >= 0.5 and gate is not None:
        flow += f", yet the {gate} gate can learn to hold memory: forecast to train"
    elif dep_reached and p < 0.5:
        flow += ", yet a gradient that flows at the start does not make this budget enough"
    out.append(flow)
    top = sorted(terms.items(), key=lambda kv: -abs(kv[1]))[:4]
    out.append("largest terms in the log-odds: " + ", ".join(f"{k} {v:+.2f}" for k, v in top))
    return out


def _unclamped(scale: float) -> float:
    """The state scale as measured: +-30 is how :func:`zero_cost` keeps an overflowed or all-zero state finite."""
    return math.inf if scale >= 30.0 else (-math.inf if scale <= -30.0 else scale)


def _pow10(x: float) -> str:
    if not math.isfinite(x):
        return "0 (underflowed)" if x < 0 else "inf"
    return f"10^{x:.1f}"
