"""``analyze``: one call from weights and inputs to a :class:`Diagnosis`.

Data flow: model + x -> :func:`rnndiag.bptt` (the trace) -> spectra, gradient flow, Jacobian products, Lyapunov
exponents, gate statistics (per layer) -> the rule table in :mod:`.verdict` -> a frozen :class:`Diagnosis`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field

import numpy as np

from .._validation import check_array
from .._version import __version__
from ..cells import is_gated
from ..engine import Trace, bptt, check_lengths, padding_mask, reverse_time
from ..jsonsafe import finite_or_none, jsonable, list_or_none
from ..model import RNNModel
from ..norms import global_norm
from .flow import GradientFlow
from .gates import GateStats
from .lyapunov import LyapunovSpectrum
from .measure import first_nonfinite, measure_layer, start_vectors
from .settings import HORIZON_FACTOR, AnalysisSettings, analysis_settings, probe_grad_h, probe_vectors
from .spectral import WeightSpectrum, weight_spectra
from .verdict import SEVERITY, STAGES, THRESHOLDS, Magnitudes, RuleHit, advice, layer_verdict

INPUT_SOURCES = ("user", "synthetic", "given")  # the user's data (a capture, an input file); generated; an array
LOSS_SOURCES = ("user", "task", "probe", "given")  # captured; a built-in task's; the probe <u, h>; a grad_h given
SOURCE_WORDS = {"user": "the user's", "synthetic": "synthetic", "given": "a given", "task": "a built-in task's",
                "probe": "a probe"}


@dataclass(frozen=True)
class NonFinite:
    """Where the run stopped being finite."""

    kind: str  # "state" or "gradient"
    layer: int
    step: int  # time step (for a reverse direction too)
    direction: int | None = None  # 0 forward, 1 reverse; None for a one-way model

    def to_dict(self) -> dict:
        out = {"kind": self.kind, "layer": self.layer, "step": self.step}
        if self.direction is not None:
            out["direction"] = "reverse" if self.direction else "forward"
        return out


@dataclass(frozen=True)
class LayerDiagnosis:
    layer: int
    spectrum: WeightSpectrum
    flow: GradientFlow
    lyapunov: LyapunovSpectrum
    gates: GateStats
    verdict: str
    detail: str
    rule: RuleHit
    forget_bias: float | None  # LSTM: mean effective forget-gate bias b_ih_f + b_hh_f
    direction: int = 0  # 0 forward, 1 reverse

    @property
    def name(self) -> str:
        """``layer 0``, or ``layer 0 reverse``."""
        return f"layer {self.layer}" + (" reverse" if self.direction else "")

    def to_dict(self) -> dict:
        ly = self.lyapunov
        return {
            "layer": self.layer,
            "direction": "reverse" if self.direction else "forward",
            "name": self.name,
            "verdict": self.verdict,
            "verdict_detail": self.detail,
            "rule": self.rule.to_dict(),
            "spectral_radius": self.spectrum.spectral_radius,
            "sigma_max": self.spectrum.sigma_max,
            "lyapunov_exponents": list_or_none(ly.exponents),
            "lyapunov_top": finite_or_none(ly.top),
            "decay_per_step": finite_or_none(self.flow.fit.rate),
            "horizon_steps": self.flow.horizon.steps,
            "forget_bias": finite_or_none(self.forget_bias),
            "spectrum": self.spectrum.to_dict(),
            "lyapunov": ly.to_dict(),
            "gradient_flow": self.flow.to_dict(),
            "gates": self.gates.to_dict(),
        }


@dataclass(frozen=True)
class Diagnosis:
    """Everything ``analyze`` measured and concluded. ``to_dict()`` is JSON-safe (no NaN: null, with a reason)."""

    cell: str
    input_size: int
    hidden_size: int
    num_layers: int
    seq_len: int
    batch_size: int
    seed: int | None
    init: str
    dtype: str
    loss: str
    verdict: str  # "vanishing", "exploding" or "healthy"
    verdict_detail: str
    confidence: str  # "high" or "low"
    caveats: tuple[str, ...]  # why the evidence may not decide (these make confidence "low")
    notes: tuple[str, ...]  # how the numbers were obtained (sampling, truncation)
    advice: tuple[str, ...]
    rules: tuple[RuleHit, ...]
    layers: tuple[LayerDiagnosis, ...]
    nonfinite: NonFinite | None
    global_grad_norm: float | None
    suggested_clip_norm: float | None
    settings: AnalysisSettings
    trace: Trace | None = field(default=None, repr=False, compare=False)
    bidirectional: bool = False
    proj_size: int = 0
    source_dtype: str | None = None  # the weights' stored dtype when not the computed one (float16, bfloat16)
    sequence_lengths: tuple[int, ...] | None = None  # per-sequence lengths, when they differ from seq_len
    dropout: str = "none between layers"  # what was replayed between layers
    stage: str = "unknown"  # the weights: "init" (at initialization), "trained", "unknown"
    input_source: str = "given"  # see INPUT_SOURCES
    loss_source: str = "probe"  # see LOSS_SOURCES
    dependency_length: int | None = None  # the steps the horizon is judged against (None: seq_len)
    warnings: tuple[str, ...] = ()  # what the reader must know before trusting the numbers
    input_label: str | None = None  # one line on the input (a file, a task, a capture)

    @property
    def looked_at(self) -> str:
        """One line: which weights, which input, which loss (``trained weights, the user's input, the user's
        loss``)."""
        weights = {"init": "weights at initialization", "trained": "trained weights",
                   "unknown": "weights of unknown stage (pass --stage init|trained)"}[self.stage]
        inp = f"{SOURCE_WORDS[self.input_source]} input" + (f" ({self.input_label})" if self.input_label else "")
        return f"{weights}; {inp}; {SOURCE_WORDS[self.loss_source]} loss ({self.loss})"

    @property
    def architecture(self) -> str:
        """One line: cell, sizes, directions and layers (``lstm, hidden 8, proj 4, bidirectional, 2 layer(s)``)."""
        parts = [self.cell, f"hidden {self.hidden_size}"]
        if self.proj_size:
            parts.append(f"proj {self.proj_size}")
        if self.bidirectional:
            parts.append("bidirectional")
        parts.append(f"{self.num_layers} layer(s)")
        if self.source_dtype:
            parts.append(f"{self.source_dtype} weights computed in {self.dtype}")
        return ", ".join(parts)

    @property
    def gradient_flow(self) -> GradientFlow:
        """The last layer's gradient flow (where the loss looks); its forward direction when bidirectional (every
        direction's is in ``layers``)."""
        return self.layers[-2 if self.bidirectional else -1].flow

    def to_dict(self) -> dict:
        gf = self.gradient_flow
        flow = gf.to_dict()
        analysed = gf.grad_norm_per_sequence.shape[0]
        if analysed < self.seq_len:  # the run overflowed: per-step lists keep length T, null after the overflow
            pad = [None] * (self.seq_len - analysed)
            flow = {k: (v + pad if isinstance(v, list) and len(v) == analysed and k != "horizon_per_sequence"
                        else v) for k, v in flow.items()}
        return jsonable({
            "rnndiag_version": __version__,
            "looked_at": self.looked_at,
            "stage": self.stage,
            "input_source": self.input_source,
            "loss_source": self.loss_source,
            "warnings": list(self.warnings),
            "dependency_length": self.dependency_length or self.seq_len,
            "cell": self.cell,
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "init": self.init,
            "dtype": self.dtype,
            "weights_dtype": self.source_dtype or self.dtype,
            "bidirectional": self.bidirectional,
            "num_directions": 2 if self.bidirectional else 1,
            "proj_size": self.proj_size,
            "sequence_lengths": list(self.sequence_lengths) if self.sequence_lengths is not None else None,
            "dropout": self.dropout,
            "loss": self.loss,
            "verdict": self.verdict,
            "verdict_detail": self.verdict_detail,
            "confidence": self.confidence,
            "caveats": list(self.caveats),
            "notes": list(self.notes),
            "advice": list(self.advice),
            "rules": [r.to_dict() for r in self.rules],
            "thresholds": dict(THRESHOLDS),
            "nonfinite": self.nonfinite.to_dict() if self.nonfinite else None,
            "global_grad_norm": finite_or_none(self.global_grad_norm),
            "suggested_clip_norm": finite_or_none(self.suggested_clip_norm),
            "settings": self.settings.to_dict(),
            "layers": [ld.to_dict() for ld in self.layers],
            "gradient_flow": {k: flow[k] for k in (
                "grad_norm", "grad_norm_mean", "grad_norm_min", "grad_norm_max", "log10_last_step_grad_norm",
                "log10_jacobian_product_norm", "log10_step_jacobian_norm", "decay_per_step", "decay_fit_r2",
                "decay_fit_note", "jacobian_decay_per_step", "horizon_steps", "horizon_censored", "horizon_factor",
                "horizon_extrapolated", "jacobian_sampled_sequences", "jacobian_norm_method")},
            "analysed_steps": analysed,
            "null_means": "a value that is undefined or non-finite (NaN/Inf) in the run; see nonfinite and notes",
        })


# ----------------------------------------------------------------------------------------------------------------
def _quiet_overflow(fn):
    """Overflow in an exploding network is a measurement, not a warning: it is recorded in ``nonfinite``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            return fn(*args, **kwargs)

    return wrapper


ANALYZE_CONTEXT = """What :func:`analyze` looks at, said in every output and read by the rules:
``stage`` ("init", "trained" or "unknown"; default the model's own: "init" for :func:`rnndiag.init_model`,
"unknown" for loaded weights); ``input_source`` ("user", "synthetic" or "given", the default); ``loss_source``
("user", "task", "probe" or "given"; default "probe" without ``grad_h``, else "given"); ``input_label`` (one line
naming the input); ``dependency_length`` (the steps the task needs the gradient to reach, default the sequence
length: the horizon is judged against it); ``earlier_grad_norms`` (global gradient norms of earlier captures of the
same run, for the spike rule)."""


@dataclass(frozen=True)
class _Context:
    """What an analysis looks at, beside the arrays: said in every output and read by the rules."""

    stage: str
    input_source: str
    loss_source: str
    dependency_length: int | None
    earlier_grad_norms: tuple[float, ...]
    input_label: str | None
    loss_label: str
    dropout_replayed: bool


def _context(model, probe_used: bool, *, stage, input_source, loss_source, dependency_length, earlier_grad_norms,
             input_label, loss_label, dropout_replayed) -> _Context:
    """The checked context of one analysis (one ``ValueError`` per bad value)."""
    stage = model.stage if stage is None else stage
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}")
    input_source = input_source or "given"
    loss_source = loss_source or ("probe" if probe_used else "given")
    if input_source not in INPUT_SOURCES:
        raise ValueError(f"input_source must be one of {', '.join(INPUT_SOURCES)}; got {input_source!r}")
    if loss_source not in LOSS_SOURCES:
        raise ValueError(f"loss_source must be one of {', '.join(LOSS_SOURCES)}; got {loss_source!r}")
    if probe_used and loss_source != "probe":
        raise ValueError(f"loss_source {loss_source!r} needs the loss's gradient: pass grad_h")
    if dependency_length is not None and (isinstance(dependency_length, bool) or
                                          not isinstance(dependency_length, (int, np.integer)) or
                                          dependency_length < 1):
        raise ValueError(f"dependency_length must be a positive integer (steps); got {dependency_length!r}")
    norms = tuple(float(v) for v in (earlier_grad_norms or ()))
    if any(not math.isfinite(v) or v < 0 for v in norms):
        raise ValueError("earlier_grad_norms must be finite non-negative numbers")
    return _Context(stage, input_source, loss_source, None if dependency_length is None else int(dependency_length),
                    norms, None if input_label is None else str(input_label), str(loss_label), dropout_replayed)


@_quiet_overflow
def analyze(model: RNNModel, x=None, *, loss: str = "last", grad_h=None, state0=None, seed: int | None = 0,
            horizon_factor: float = HORIZON_FACTOR, batch_sample="auto", lyapunov_k: int | None = None,
            lyapunov_warmup: int | None = None, reortho_every: int = 1, q0: str | None = None,
            keep_trace: bool = False, loss_label: str | None = None, lengths=None, batch_first: bool = False,
            dropout_masks=None, grad_state_n=None, stage: str | None = None, input_source: str | None = None,
            loss_source: str | None = None, dependency_length: int | None = None, earlier_grad_norms=None,
            input_label: str | None = None, module: str | None = None) -> Diagnosis:
    """Diagnose the gradient flow of ``model`` on ``x`` (T, B, I).

    ``loss``: ``"last"`` (gradient injected at the last step) or ``"all"`` (every step); without ``grad_h`` the
    probe loss ``<u, h_T>`` (or ``sum_t <u_t, h_t>``) with seeded random unit vectors is used, so the norms measure
    the network, not the data. ``grad_h`` (T, B, H) is a task's gradient on the outputs, used as given.
    ``batch_sample``: which sequences get the Jacobian products and Lyapunov exponents -- ``"auto"`` (all when
    cheap, else as many as about twice the BPTT's cost allows), ``"all"``, a count, or a list of indices.
    ``reortho_every``: steps between the Lyapunov frame's QR factorisations (default 1: with more, the frame can
    collapse before the QR on contracting Jacobians, and a dead ReLU unit's -inf exponent comes out finite).
    ``loss_label`` names the loss in the results (default: ``probe (last)``, ``probe (all)`` or ``given grad_h``).
    ``lengths`` (B,): each sequence's own number of steps (a padded batch); each sequence's flow is then measured
    over its own steps, counted back from its own end. ``batch_first``: ``x`` (and ``grad_h``) are (B, T, ...).
    ``dropout_masks``: the masks between layers of a train-mode replay (see :func:`rnndiag.forward`); without
    them dropout is not replayed (eval mode), and the diagnosis says so. Bidirectional models are measured per
    direction; the probe's "last step" is each direction's own last (a loss on ``h_n``). ``grad_state_n``: the
    loss's gradient on the final states, as :func:`rnndiag.bptt` takes it.

    What it looks at -- ``stage``, ``input_source``, ``loss_source``, ``input_label``, ``dependency_length``,
    ``earlier_grad_norms`` -- is said in every output and read by the rules (see :data:`ANALYZE_CONTEXT`).
    ``model`` may be a :class:`rnndiag.capture.Capture` alone (``module`` chooses among its recurrent modules):
    the user's input, initial states and loss, replayed exactly (:func:`rnndiag.capture.analyze_capture`).

    >>> from rnndiag import init_model
    >>> m = init_model("rnn_tanh", 2, 16, init="tutorial", seed=0)
    >>> d = analyze(m, np.random.default_rng(0).standard_normal((50, 4, 2)))
    >>> d.verdict
    'vanishing'
    """
    from ..capture import Capture, analyze_capture
    if isinstance(model, Capture):
        _capture_holds(x=x, grad_h=grad_h, state0=state0, lengths=lengths, dropout_masks=dropout_masks,
                       grad_state_n=grad_state_n, loss_label=loss_label, batch_first=batch_first or None,
                       loss=None if loss == "last" else loss)
        return analyze_capture(model, module, stage=stage, dependency_length=dependency_length, seed=seed,
                               horizon_factor=horizon_factor, batch_sample=batch_sample, lyapunov_k=lyapunov_k,
                               lyapunov_warmup=lyapunov_warmup, reortho_every=reortho_every, q0=q0,
                               keep_trace=keep_trace)
    if not isinstance(model, RNNModel) or x is None:
        raise TypeError(f"model must be an RNNModel (from init_model or load_weights) with its input x (T, B, I), or "
                        f"a Capture alone; got {type(model).__name__}{'' if x is not None else ' and no x'}")
    if batch_first:
        x, grad_h, dropout_masks = _time_major(x), _time_major(grad_h), \
            None if dropout_masks is None else [_time_major(m) for m in dropout_masks]
    x = check_array(x, "x", ("T", "B", model.input_size), model.dtype)
    T, B, _ = x.shape
    lengths = check_lengths(lengths, T, B)
    D, P = model.num_directions, model.output_size
    settings = analysis_settings(model, T, B, loss=loss, horizon_factor=horizon_factor, batch_sample=batch_sample,
                                 lyapunov_k=lyapunov_k, lyapunov_warmup=lyapunov_warmup,
                                 reortho_every=reortho_every, q0=q0, seed=seed)
    probe_used = grad_h is None
    grad_h = probe_grad_h(loss, T, B, P, seed, model.dtype, directions=D, lengths=lengths) if probe_used else \
        check_array(grad_h, "grad_h", (T, B, D * P), model.dtype)
    loss_label = (f"probe ({loss})" if probe_used else "given grad_h") if loss_label is None else loss_label
    ctx = _context(model, probe_used, stage=stage, input_source=input_source, loss_source=loss_source,
                   dependency_length=dependency_length, earlier_grad_norms=earlier_grad_norms,
                   input_label=input_label, loss_label=loss_label, dropout_replayed=dropout_masks is not None)
    with np.errstate(all="ignore"):
        trace = bptt(model, x, grad_h, state0, param_grads=True, lengths=lengths, dropout_masks=dropout_masks,
                     grad_state_n=grad_state_n)
    overflow = _state_overflow(trace)
    if overflow is not None:  # analyse the finite part, then say where it exploded
        _check_measurable(overflow, model, lengths)
        n = overflow.step
        finite = analyze(model, x[:n], grad_h=None if probe_used else grad_h[:n], state0=state0, seed=seed,
                         batch_sample=list(settings.batch_sample),
                         lyapunov_warmup=min(settings.lyapunov_warmup, n - 1), keep_trace=keep_trace,
                         dropout_masks=None if dropout_masks is None else [m[:n] for m in dropout_masks],
                         **_same_settings(settings, lyapunov_k, q0), **_context_kwargs(ctx))
        return _exploded(finite, overflow, T, grad_state_n is not None)
    measured = _measure_all(model, trace, settings, grad_h, probe_vectors(B, P, seed, D), seed)
    return _assemble(model, x, grad_h, state0, trace, settings, measured, _gradient_overflow(trace), ctx, seed,
                     keep_trace)


def _capture_holds(**given) -> None:
    """A TypeError naming the arguments of ``analyze`` that a capture already holds (its input and loss)."""
    named = [k for k, v in given.items() if v is not None]
    if named:
        raise TypeError(f"analyze(capture) takes the input and the loss from the capture; do not pass "
                        f"{', '.join(named)}")


def _same_settings(settings: AnalysisSettings, lyapunov_k, q0) -> dict:
    """The settings of an analysis, as :func:`analyze` takes them, for the analysis of its finite part."""
    return {"loss": settings.loss, "horizon_factor": settings.horizon_factor, "lyapunov_k": lyapunov_k,
            "reortho_every": settings.reortho_every, "q0": q0}


def _context_kwargs(ctx: _Context) -> dict:
    """A context as :func:`analyze`'s keyword arguments."""
    return {"stage": ctx.stage, "input_source": ctx.input_source, "loss_source": ctx.loss_source,
            "dependency_length": ctx.dependency_length, "earlier_grad_norms": ctx.earlier_grad_norms,
            "input_label": ctx.input_label, "loss_label": ctx.loss_label}


def _measure_all(model, trace, settings, grad_h, probe_start, seed) -> list:
    """:func:`measure_layer` of every layer trace: the last layer's directions start from the loss's own
    gradient where it looks at the last step, the others from the probe's vectors (B, D*P)."""
    P = model.output_size
    measured = []
    for lt in trace.layers:
        direct = _direct_gradient(grad_h, lt, P, trace.lengths) if lt.layer == model.num_layers - 1 else None
        start = start_vectors(lt, settings, direct, probe_start[:, lt.direction * P : (lt.direction + 1) * P])
        measured.append(measure_layer(model, lt, settings, direct, start, seed))
    return measured


def _time_major(a):
    """A (B, T, ...) array as (T, B, ...); anything else (None, a wrong shape for check_array to name) as given."""
    return np.swapaxes(np.asarray(a), 0, 1) if a is not None and np.ndim(a) >= 2 else a


def _check_measurable(overflow: NonFinite, model: RNNModel, lengths) -> None:
    """Whether the finite part before a state overflow can be analysed on its own; a ValueError if not."""
    if model.bidirectional or lengths is not None:
        raise ValueError(f"the state of {_where(overflow)} overflowed at step {overflow.step}: a bidirectional "
                         "model or a batch of several lengths cannot be measured on its finite part alone; "
                         "the weights or inputs are far too large (scale them down)")
    if overflow.step < 2:
        raise ValueError(f"the state overflowed at step {overflow.step} already: nothing can be measured; "
                         "the weights or inputs are far too large")


def _direct_gradient(grad_h: np.ndarray, lt, P: int, lengths) -> np.ndarray:
    """The loss's own gradient on one direction's outputs (T, B, P), in its processing order, zero past each
    sequence's length."""
    part = grad_h[:, :, lt.direction * P : (lt.direction + 1) * P]
    if lengths is not None:
        part = np.where(padding_mask(lengths, grad_h.shape[0])[:, :, None], 0.0, part)
    return part if lt.direction == 0 else reverse_time(part, lengths)


def _where(nf: NonFinite) -> str:
    return f"layer {nf.layer}" + (" reverse" if nf.direction else "")


def _state_overflow(trace: Trace) -> NonFinite | None:
    """The first layer and step where the state became non-finite, or None."""
    for lt in trace.layers:
        step = first_nonfinite(lt.h)
        if step is None and lt.c is not None:
            step = first_nonfinite(lt.c)
        if step is not None:
            return NonFinite("state", lt.layer, _time_step(lt, step), _direction(trace, lt))
    return None


def first_nonfinite_in(trace: Trace) -> NonFinite | None:
    """Where a recorded run first stops being finite: its state going forward, else its gradient going back
    (the last layer first, the latest step); None when all is finite."""
    return _state_overflow(trace) or (_gradient_overflow(trace) if trace.layers[0].grad_h is not None else None)


def _direction(trace: Trace, lt) -> int | None:
    return lt.direction if trace.model.bidirectional else None


def _time_step(lt, step: int) -> int:
    """A processing-order step of a layer trace as a time step (the reverse direction runs from the end)."""
    return step if lt.direction == 0 else lt.h.shape[0] - 1 - step


def _gradient_overflow(trace: Trace) -> NonFinite | None:
    """Where the gradient became non-finite going back: the last layer first, the latest step of that layer."""
    for lt in reversed(trace.layers):
        step = first_nonfinite(lt.grad_h, reverse=True)
        if step is not None:
            return NonFinite("gradient", lt.layer, _time_step(lt, step), _direction(trace, lt))
    return None


def _assemble(model, x, grad_h, state0, trace, settings, measured, nonfinite, ctx: _Context, seed,
              keep_trace) -> Diagnosis:
    """The verdict of every layer by the rule table, the model's (its worst layer's), caveats and advice."""
    T, B, _ = x.shape
    lengths = trace.lengths
    if lengths is not None:  # steps past the longest sequence are padding only
        T = int(lengths.max())
    grad_norm_total = global_norm(trace.param_grads)
    grad_norm_total = grad_norm_total if math.isfinite(grad_norm_total) else None
    layers = _layer_diagnoses(model, trace, measured, nonfinite, ctx, T, grad_norm_total)
    # the worst layer: exploding > vanishing > healthy; among vanishing layers the shortest horizon
    worst = max(layers, key=lambda ld: (SEVERITY[ld.verdict],
                                        -ld.flow.horizon.steps if ld.verdict == "vanishing" else 0))
    clip = _suggested_clip(model, x, grad_h, trace, state0) if worst.verdict == "exploding" else None
    caveats = _caveats(model, layers, worst.verdict, T, ctx)
    if model.num_layers > 1:
        dropout = "train-mode masks given, replayed exactly" if ctx.dropout_replayed else \
            "not replayed (eval mode): any dropout between layers is off, as in model.eval()"
    else:
        dropout = "none between layers (one layer)"
    return Diagnosis(
        cell=model.cell, input_size=model.input_size, hidden_size=model.hidden_size, num_layers=model.num_layers,
        seq_len=T, batch_size=B, seed=seed if isinstance(seed, int) else None, init=model.init,
        dtype=str(model.dtype), loss=ctx.loss_label, verdict=worst.verdict,
        verdict_detail=worst.detail if len(layers) == 1 else f"{worst.name}: {worst.detail}",
        confidence="low" if caveats else "high", caveats=tuple(caveats),
        notes=tuple(_notes(model, settings, layers, lengths, B)),
        advice=tuple(advice(layers, model.cell, T, worst.verdict, clip, grad_norm_total, ctx.stage,
                            ctx.dependency_length, ctx.input_source == "user" and ctx.loss_source == "user")),
        rules=tuple(ld.rule for ld in layers), layers=tuple(layers), nonfinite=nonfinite,
        global_grad_norm=grad_norm_total, suggested_clip_norm=clip, settings=settings,
        trace=trace if keep_trace else None, bidirectional=model.bidirectional, proj_size=model.proj_size,
        source_dtype=model.source_dtype,
        sequence_lengths=None if lengths is None else tuple(int(n) for n in lengths), dropout=dropout,
        stage=ctx.stage, input_source=ctx.input_source, loss_source=ctx.loss_source,
        dependency_length=ctx.dependency_length, warnings=tuple(_warnings(ctx, model)), input_label=ctx.input_label)


def _layer_diagnoses(model, trace, measured, nonfinite, ctx: _Context, T: int, grad_norm_total) -> list:
    """Each layer trace's verdict by the rule table, with the sizes the magnitude rules read."""
    earlier = ctx.earlier_grad_norms
    median = float(np.median(earlier)) if len(earlier) >= THRESHOLDS["grad_spike_history"] else None
    top = (model.num_layers - 1, 0)
    layers = []
    for lt, spectrum, m in zip(trace.layers, weight_spectra(model), measured):
        nf = nonfinite if nonfinite is not None and (nonfinite.layer, nonfinite.direction or 0) == \
            (lt.layer, lt.direction) else None
        sizes = _magnitudes(model, trace, lt, ctx)
        if (lt.layer, lt.direction) == top:
            sizes = dataclasses.replace(sizes, global_norm=grad_norm_total, earlier_median=median)
        v, detail, rule = layer_verdict(lt.layer, T, m.flow, m.lyapunov.top, nf.step if nf else None,
                                        nonfinite.kind if nonfinite else None, sizes, ctx.dependency_length)
        layers.append(LayerDiagnosis(lt.layer, spectrum, m.flow, m.lyapunov, m.gates, v, detail, rule,
                                     m.forget_bias, lt.direction))
    return layers


def _magnitudes(model: RNNModel, trace: Trace, lt, ctx: _Context) -> Magnitudes:
    """One layer trace's parameter and gradient norms, its largest weight and PyTorch's init bound."""
    suffix = f"_l{lt.layer}" + ("_reverse" if lt.direction else "")
    names = [k for k in model.params if k.endswith(suffix)]
    param_norm = math.sqrt(sum(float(np.sum(np.square(model.params[k], dtype=np.float64))) for k in names))
    grads = [trace.param_grads[k] for k in names if trace.param_grads and k in trace.param_grads]
    grad_norm = global_norm(dict(enumerate(grads))) if grads else None
    biggest = max(float(np.max(np.abs(model.params[k]))) for k in names if k.startswith("weight_"))
    return Magnitudes(grad_norm, param_norm, biggest, 1.0 / math.sqrt(model.hidden_size),
                      ctx.loss_source == "user" and ctx.stage == "trained")


def _notes(model, settings, layers, lengths, B: int) -> list[str]:
    """How the numbers were obtained: sampling, directions, projections, dtypes."""
    notes = []
    sampled = len(layers[-1].flow.jacobian_batch)
    if lengths is not None:
        notes.append(f"sequences of {int(lengths.min())} to {int(lengths.max())} steps: each sequence's gradient "
                     f"flow is measured over its own steps, counted back from its own last step; Jacobian "
                     f"products and Lyapunov exponents use the {sampled} sampled sequence(s) of the longest "
                     f"length among those sampled")
    elif len(settings.batch_sample) < B:
        notes.append(f"Jacobian products and Lyapunov exponents were computed on {len(settings.batch_sample)} of "
                     f"{B} sequences (batch_sample) to bound the cost")
    if model.bidirectional:
        notes.append("bidirectional: each direction is measured on its own, in its own processing order (the "
                     "reverse direction's step k is time T-1-k); the probe's last step is each direction's last")
    if model.proj_size:
        notes.append(f"LSTM with proj_size {model.proj_size}: the state is [h ({model.proj_size}); c "
                     f"({model.hidden_size})] and the spectra are of the {model.proj_size}x{model.proj_size} "
                     "products W_hr W_h(gate)")
    if model.source_dtype:
        notes.append(f"weights stored as {model.source_dtype}, computed in {model.dtype}")
    return notes


def _warnings(ctx: _Context, model: RNNModel) -> list[str]:
    """What the reader must know first: loaded weights diagnosed on synthetic input or a probe loss."""
    out = []
    if model.loaded and ctx.stage != "init" and (ctx.input_source == "synthetic" or ctx.loss_source == "probe"):
        what = " and ".join(w for w, on in (("synthetic input", ctx.input_source == "synthetic"),
                                            ("a probe loss", ctx.loss_source == "probe")) if on)
        out.append(f"{'trained' if ctx.stage == 'trained' else 'loaded'} weights diagnosed on {what}: the numbers "
                   f"describe this network on that, not your run; record a capture of your data and loss "
                   f"(rnndiag.pytorch.capture) and use --capture")
    return out


def _suggested_clip(model, x, grad_h, trace, state0) -> float | None:
    """Global gradient norm of the same loss over only its last few steps (no long-range explosion in it)."""
    if model.bidirectional or trace.lengths is not None:
        return None  # a truncated window is not defined for a reverse direction or sequences of several lengths
    T = x.shape[0]
    w = min(T, THRESHOLDS["clip_window"])
    s0 = state0 if w == T else trace.state0_after(T - w - 1)
    masks = None if trace.dropout_masks is None else [m[T - w :] for m in trace.dropout_masks]
    with np.errstate(all="ignore"):
        tr = bptt(model, x[T - w :], grad_h[T - w :], s0, dropout_masks=masks)
    norm = global_norm(tr.param_grads)
    return norm if math.isfinite(norm) and norm > 0 else None


def _caveats(model, layers, verdict, T, ctx: _Context) -> list[str]:
    out = []
    if is_gated(model.cell) and verdict == "vanishing" and ctx.stage != "trained":
        out.append("gated cell: at these weights the gradient vanishes, but the gates can learn to hold memory "
                   "(forget/update gate towards 1); whether they will is not decidable from one snapshot -- "
                   "compare with a diagnosis after a short training run")
    fl = layers[-1].flow
    if fl.fit.reason:
        out.append(f"no decay rate: {fl.fit.reason}")
    if fl.horizon.censored and T < THRESHOLDS["short_sequence"]:
        out.append(f"the gradient survives all {T} steps, but a sequence this short says little about longer ones")
    need = ctx.dependency_length
    if need is not None and need > T and any(ld.flow.horizon.censored for ld in layers if ld.verdict == "healthy"):
        out.append(f"the dependency length {need} is longer than the {T} steps analysed: the gradient reaches all "
                   f"{T}, but whether it reaches {need} is not measured -- analyse sequences of {need} steps")
    return out


def _exploded(sub: Diagnosis, nonfinite: NonFinite, T: int, dropped_final: bool = False) -> Diagnosis:
    hit = RuleHit("non_finite", nonfinite.layer, "exploding", float(nonfinite.step), None,
                  f"the {nonfinite.kind} of layer {nonfinite.layer} became non-finite (overflow) at step "
                  f"{nonfinite.step}; the measurements cover steps 0..{nonfinite.step - 1}")
    fix = "clip the global gradient norm and lower the learning rate" if sub.stage == "trained" else \
        "scale the recurrent weights down (orthogonal init, gain 1) and clip the global gradient norm"
    adv = (f"the state overflowed at step {nonfinite.step} of {T}: {fix}", *sub.advice)
    return dataclasses.replace(sub, seq_len=T, verdict="exploding", verdict_detail=f"exploded at step {nonfinite.step}",
                               nonfinite=nonfinite, rules=(hit, *sub.rules), advice=adv,
                               notes=(*sub.notes, f"measurements cover the {nonfinite.step} finite steps only",
                                      *(["the loss's gradient on the final states (h_n, c_n) lies past the "
                                         "overflow and is left out of the finite part"] if dropped_final else [])))
