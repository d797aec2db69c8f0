"""What ``rnndiag sweep`` computes at a point: the same library calls as ``rnndiag analyze`` (and, with
``train_steps``, ``rnndiag train``), and the numbers a phase diagram needs.

A point is a dict over :data:`AXES` (unset axes take :data:`DEFAULTS`). With ``input_scale`` 1 the analysis is
exactly ``rnndiag analyze --cell C --init I --hidden-size H --num-layers L --task TASK --seq-len T --batch-size B
--seed S`` (and ``--gain``/``--forget-bias`` when set): the same numbers, bit for bit at the same BLAS thread
count. Another ``input_scale`` multiplies the task's inputs; 0 is zero input, and then the initial state is drawn
h0 ~ N(0, 1) from the seed (the fixed point 0 would show nothing) and the probe loss is used -- the setting of
mean-field theory (:mod:`rnndiag.analysis.meanfield`).
"""

from __future__ import annotations

import math

import numpy as np

from ..cells import CELLS
from ..clip import STRATEGIES
from ..init import SCHEMES
from ..tasks import LOSS_TASKS, TASKS
from ..train import OPTIMIZERS

DEFAULTS = {"cell": "rnn_tanh", "init": "pytorch", "gain": None, "forget_bias": None, "hidden_size": 32,
            "num_layers": 1, "seq_len": 100, "batch_size": 32, "input_scale": 1.0, "task": "adding", "seed": 0,
            "train_steps": 0, "lr": 1e-3, "optimizer": "adam", "clip": "global_norm", "clip_threshold": 1.0}
CHOICES = {"cell": CELLS, "init": SCHEMES, "task": TASKS, "optimizer": OPTIMIZERS, "clip": STRATEGIES}
POSITIVE_INTS = ("hidden_size", "num_layers", "seq_len", "batch_size")
AXES = tuple(DEFAULTS)
# the numbers a phase diagram can show, as the point's metrics name them
PHASE_METRICS = ("horizon_fraction", "lyapunov_top", "decay_per_step", "final_test_loss")


def check_grid_axes(grid: dict) -> None:
    """Every axis a known one and every value of the right kind; one ValueError naming the axis and value."""
    for name, values in grid.items():
        if name not in DEFAULTS:
            raise ValueError(f"unknown axis {name!r}: rnndiag sweep takes {', '.join(AXES)}")
        for v in values:
            _check_value(name, v)
    tasks = grid.get("task", (DEFAULTS["task"],))
    if any(grid.get("train_steps", (0,))) and any(t not in LOSS_TASKS for t in tasks):
        raise ValueError(f"training needs a task with a loss ({', '.join(LOSS_TASKS)}); the grid has task noise")


def _check_value(name: str, v) -> None:
    if name in CHOICES:
        if v not in CHOICES[name]:
            raise ValueError(f"axis {name}: unknown value {v!r}; choose from {', '.join(CHOICES[name])}")
    elif name in (*POSITIVE_INTS, "seed", "train_steps"):
        least = 0 if name in ("seed", "train_steps") else 1
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise ValueError(f"axis {name}: {v!r} is not a {'non-negative' if least == 0 else 'positive'} integer")
    elif name in ("gain", "lr", "clip_threshold"):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"axis {name}: {v!r} is not a positive number")
    elif name in ("forget_bias", "input_scale"):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"axis {name}: {v!r} is not a finite number")


def resolved(params: dict) -> dict:
    """The point's parameters with every unset axis at its default."""
    return {**DEFAULTS, **params}


def build_model(p: dict):
    from .. import init_model
    from ..tasks import input_size

    return init_model(p["cell"], input_size(p["task"]), p["hidden_size"], num_layers=p["num_layers"], init=p["init"],
                      seed=p["seed"], gain=p["gain"] if p["init"] not in ("tutorial", "pytorch") else None,
                      forget_bias=p["forget_bias"])


def analysis_point(params: dict) -> dict:
    """The analysis (and, with ``train_steps``, the training) of one point; a JSON-able dict of its numbers."""
    from ..analysis import analyze
    from ..experiments import diagnose_problem
    from ..tasks import task_problem

    p = resolved(params)
    model = build_model(p)
    problem = task_problem(p["task"], p["seq_len"], p["batch_size"], p["seed"],
                           model.num_directions * model.output_size, input_size=model.input_size, dtype=model.dtype)
    if p["input_scale"] == 1:
        diag, _ = diagnose_problem(model, problem, p["seed"])
    else:
        x = problem.x * p["input_scale"]
        state0 = None
        if p["input_scale"] == 0:
            rng = np.random.default_rng([p["seed"], 7])
            h0 = rng.standard_normal((model.num_layers, x.shape[1], model.hidden_size))
            state0 = (h0, np.zeros_like(h0)) if model.has_cell_state else h0
        diag = analyze(model, x, state0=state0, seed=p["seed"], input_source="synthetic",
                       input_label=f"task {p['task']} inputs x {p['input_scale']:g}")
    out = summary(diag)
    if p["train_steps"]:
        out["trained"] = _train(model, p)
    return out


def summary(diag) -> dict:
    """The numbers of a diagnosis a sweep keeps: the model's verdict and, per layer, the flow and exponents."""
    top = diag.layers[-1]
    hz = top.flow.horizon
    out = {"verdict": diag.verdict, "confidence": diag.confidence, "rule": top.rule.rule,
           "horizon_steps": hz.steps, "horizon_censored": hz.censored, "seq_len": diag.seq_len,
           "horizon_fraction": hz.steps / diag.seq_len, "decay_per_step": _f(top.flow.fit.rate),
           "lyapunov_top": _f(top.lyapunov.top), "spectral_radius": _f(top.spectrum.spectral_radius),
           "sigma_max": _f(top.spectrum.sigma_max), "global_grad_norm": _f(diag.global_grad_norm),
           "layers": [{"name": ld.name, "verdict": ld.verdict, "horizon_steps": ld.flow.horizon.steps,
                       "lyapunov_top": _f(ld.lyapunov.top), "decay_per_step": _f(ld.flow.fit.rate)}
                      for ld in diag.layers]}
    return out


def _f(v):
    return None if v is None or not math.isfinite(v) else float(v)


def _train(model, p: dict) -> dict:
    from ..experiments import diagnose_on_task
    from ..train import TrainConfig, train

    cfg = TrainConfig(task=p["task"], seq_len=p["seq_len"], batch_size=p["batch_size"], steps=p["train_steps"],
                      optimizer=p["optimizer"], lr=p["lr"], clip=p["clip"],
                      clip_threshold=p["clip_threshold"] if p["clip"] != "none" else None, seed=p["seed"])
    result = train(model, cfg)
    out = {"steps": result.history.iterations, "diverged": result.diverged, "final_test_loss": _f(result.test_loss),
           "baseline": _f(result.baseline), "failure": result.failure}
    if not result.diverged and result.failure is None:
        after = diagnose_on_task(result.model, p["task"], p["seq_len"], p["batch_size"], p["seed"], result.readout_w,
                                 result.readout_b)
        out["after"] = summary(after)
    return out


def memory_estimate(params: dict) -> int:
    """The point's estimated peak memory in bytes (for the message of a worker that died)."""
    from ..memory import estimate_analyze
    from ..tasks import input_size

    p = resolved(params)
    e = estimate_analyze(p["cell"], input_size(p["task"]), p["hidden_size"], p["num_layers"], p["seq_len"],
                         p["batch_size"], task=p["task"] if p["input_scale"] == 1 else None)
    return int(e.peak_bytes)
