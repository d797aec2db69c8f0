"""``analyze``: one call from weights and inputs to a :class:`Diagnosis`.

Data flow: model + x -> :func:`rnndiag.bptt` (the trace) -> spectra, gradient flow, Jacobian products, Lyapunov
exponents, gate statistics (per layer) -> the rule table in :mod:`.verdict` -> a frozen :class:`Diagnosis`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from .._validation import check_array, make_rng
from .._version import __version__
from ..clip import global_norm
from ..engine import Trace, bptt
from ..model import RNNModel
from ._common import finite_or_none, jsonable, list_or_none
from .flow import GradientFlow, fit_decay, horizon, last_step_chain, per_sequence_horizon
from .gates import GateStats, gate_stats
from .jacobians import PRODUCT_TOL, product_norms
from .lyapunov import LyapunovSpectrum, lyapunov_spectrum
from .spectral import WeightSpectrum, weight_spectra
from .verdict import SEVERITY, THRESHOLDS, RuleHit, advice, layer_verdict

LOSSES = ("last", "all")


@dataclass(frozen=True)
class NonFinite:
    """Where the run stopped being finite."""

    kind: str  # "state" or "gradient"
    layer: int
    step: int

    def to_dict(self) -> dict:
        return {"kind": self.kind, "layer": self.layer, "step": self.step}


@dataclass(frozen=True)
class LayerDiagnosis:
    layer: int
    spectrum: WeightSpectrum
    flow: GradientFlow
    lyapunov: LyapunovSpectrum | None
    gates: GateStats
    verdict: str
    detail: str
    rule: RuleHit
    forget_bias: float | None  # LSTM: mean effective forget-gate bias b_ih_f + b_hh_f

    def to_dict(self) -> dict:
        ly = self.lyapunov
        return {
            "layer": self.layer,
            "verdict": self.verdict,
            "verdict_detail": self.detail,
            "rule": self.rule.to_dict(),
            "spectral_radius": self.spectrum.spectral_radius,
            "sigma_max": self.spectrum.sigma_max,
            "lyapunov_exponents": list_or_none(ly.exponents) if ly is not None else [],
            "lyapunov_top": finite_or_none(ly.top) if ly is not None else None,
            "decay_per_step": finite_or_none(self.flow.fit.rate),
            "horizon_steps": self.flow.horizon.steps,
            "forget_bias": finite_or_none(self.forget_bias),
            "spectrum": self.spectrum.to_dict(),
            "lyapunov": ly.to_dict() if ly is not None else None,
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
    settings: dict = field(default_factory=dict)
    trace: Trace | None = field(default=None, repr=False, compare=False)

    @property
    def gradient_flow(self) -> GradientFlow:
        """The last layer's gradient flow (where the loss looks)."""
        return self.layers[-1].flow

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
            "cell": self.cell,
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "init": self.init,
            "dtype": self.dtype,
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
            "settings": self.settings,
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
def probe_vectors(B: int, H: int, seed: int | None) -> np.ndarray:
    """The probe's seeded random unit vectors u (B, H) at the last step."""
    u = make_rng(seed).standard_normal((B, H))
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def probe_grad_h(loss: str, T: int, B: int, H: int, seed: int | None, dtype) -> np.ndarray:
    """The probe loss's gradient: seeded random unit vectors u at the last step (or u_t at every step)."""
    g = np.zeros((T, B, H), dtype)
    if loss == "last":
        g[-1] = probe_vectors(B, H, seed)
    else:
        rng = make_rng(seed)
        for t in range(T):  # drawn step by step: the same u_t for any T' >= t
            u = rng.standard_normal((B, H))
            g[t] = u / np.linalg.norm(u, axis=1, keepdims=True)
    return g


def _auto_sample(model: RNNModel, T: int, B: int, k: int) -> int:
    """How many sequences the Jacobian products and Lyapunov exponents can afford: about 2x the BPTT's flops,
    and never less than what ~0.1 s of work buys (so small problems use the whole batch).

    Per sequence and step: the product ``P_t J_t`` (LSTM: ``4 S H^2`` through J's left block column; GRU/RNN:
    ``2 H^3`` on the formed J), its norm (``16 S^2`` per thin product with the 8-dimensional tracked subspace, a
    few such a step), ~40 Lanczos steps of one ``J v`` and one ``u^T J`` (``2 G H^2`` each) for ``||J_t||``, and
    the Lyapunov frame (k Jacobian-vector products and a QR).
    """
    G, H, I, L, S = model.gate_count, model.hidden_size, model.input_size, model.num_layers, model.state_size
    bptt_flops = 6.0 * T * B * G * H * (H + I) * L
    product = 4.0 * S * H * H if model.cell == "lstm" else 2.0 * H**3
    per_seq = T * L * (product + 16.0 * S * S + 160.0 * G * H * H + 2.0 * k * G * H * H + 4.0 * S * k * k)
    return int(max(1, min(B, max(2.0 * bptt_flops, 1e9) // per_seq)))


def _step_norms(a: np.ndarray, chunk: int = 256) -> np.ndarray:
    """``||a[t, b]||`` (T, B) in float64, a few steps at a time (no full-size temporary)."""
    out = np.empty(a.shape[:2])
    for s in range(0, a.shape[0], chunk):
        out[s : s + chunk] = np.linalg.norm(a[s : s + chunk].astype(np.float64, copy=False), axis=2)
    return out


def _first_nonfinite(arr: np.ndarray, reverse: bool = False) -> int | None:
    ok = np.concatenate([np.isfinite(arr[s : s + 256]).reshape(min(256, arr.shape[0] - s), -1).all(axis=1)
                         for s in range(0, arr.shape[0], 256)])
    if ok.all():
        return None
    bad = np.nonzero(~ok)[0]
    return int(bad[-1] if reverse else bad[0])


def _quiet_overflow(fn):
    """Overflow in an exploding network is a measurement, not a warning: it is recorded in ``nonfinite``."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            return fn(*args, **kwargs)

    return wrapper


@_quiet_overflow
def analyze(
    model: RNNModel,
    x,
    *,
    loss: str = "last",
    grad_h=None,
    state0=None,
    seed: int | None = 0,
    horizon_factor: float = 1e-3,
    batch_sample="auto",
    lyapunov_k: int | None = None,
    lyapunov_warmup: int | None = None,
    reortho_every: int = 1,
    q0: str | None = None,
    keep_trace: bool = False,
    loss_label: str | None = None,
) -> Diagnosis:
    """Diagnose the gradient flow of ``model`` on ``x`` (T, B, I).

    ``loss``: ``"last"`` (gradient injected at the last step) or ``"all"`` (every step); without ``grad_h`` the
    probe loss ``<u, h_T>`` (or ``sum_t <u_t, h_t>``) with seeded random unit vectors is used, so the norms measure
    the network, not the data. ``grad_h`` (T, B, H) is a task's gradient on the outputs, used as given.
    ``batch_sample``: which sequences get the Jacobian products and Lyapunov exponents -- ``"auto"`` (all when
    cheap, else as many as about twice the BPTT's cost allows), ``"all"``, a count, or a list of indices.
    ``reortho_every``: steps between the Lyapunov frame's QR factorisations. The exponents do not depend on it in
    exact arithmetic, but with more than one step the frame's columns can collapse before the QR (singular or
    strongly contracting Jacobians: a dead ReLU unit's -inf exponent comes out finite), so the default is 1.

    >>> from rnndiag import init_model
    >>> m = init_model("rnn_tanh", 2, 16, init="tutorial", seed=0)
    >>> d = analyze(m, np.random.default_rng(0).standard_normal((50, 4, 2)))
    >>> d.verdict
    'vanishing'
    """
    if not isinstance(model, RNNModel):
        raise TypeError(f"model must be an RNNModel (from init_model or load_weights); got {type(model).__name__}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}")
    if isinstance(horizon_factor, bool) or not isinstance(horizon_factor, (int, float)) or \
            not 0 < horizon_factor < 1:
        raise ValueError(f"horizon_factor must be in (0, 1), e.g. 1e-3; got {horizon_factor!r}")
    x = check_array(x, "x", ("T", "B", model.input_size), model.dtype)
    T, B, _ = x.shape
    H, S = model.hidden_size, model.state_size
    if lyapunov_k is not None and (isinstance(lyapunov_k, bool) or not isinstance(lyapunov_k, (int, np.integer))
                                   or not 1 <= lyapunov_k <= S):
        raise ValueError(f"lyapunov_k must be an integer from 1 to the state size {S}; got {lyapunov_k!r}")
    k = int(lyapunov_k) if lyapunov_k is not None else min(S, 32)
    warmup = min(T // 10, 100) if lyapunov_warmup is None else lyapunov_warmup
    if isinstance(warmup, bool) or not isinstance(warmup, (int, np.integer)) or not 0 <= warmup < T:
        raise ValueError(f"lyapunov_warmup must be an integer in 0..{T - 1}; got {warmup!r}")
    if isinstance(reortho_every, bool) or not isinstance(reortho_every, (int, np.integer)) or reortho_every < 1:
        raise ValueError(f"reortho_every must be a positive integer; got {reortho_every!r}")
    probe_used = grad_h is None
    if probe_used:
        grad_h = probe_grad_h(loss, T, B, H, seed, model.dtype)
        loss_name = f"probe ({loss})"
    else:
        grad_h = check_array(grad_h, "grad_h", (T, B, H), model.dtype)
        loss_name = "given grad_h"
    if loss_label is not None:
        loss_name = str(loss_label)
    batch = _batch_indices(batch_sample, model, T, B, k, seed)
    settings = {"horizon_factor": horizon_factor, "lyapunov_k": k, "lyapunov_warmup": int(warmup),
                "reortho_every": int(reortho_every), "batch_sample": [int(b) for b in batch], "loss": loss}

    with np.errstate(all="ignore"):
        trace = bptt(model, x, grad_h, state0, param_grads=True)

    # where did it stop being finite?
    nonfinite = None
    for lt in trace.layers:
        step = _first_nonfinite(lt.h)
        if step is None and lt.c is not None:
            step = _first_nonfinite(lt.c)
        if step is not None:
            nonfinite = NonFinite("state", lt.layer, step)
            break
    if nonfinite is not None:
        if nonfinite.step < 2:
            raise ValueError(f"the state overflowed at step {nonfinite.step} already: nothing can be measured; "
                             "the weights or inputs are far too large")
        # analyse the finite part, then say where it exploded
        sub = analyze(model, x[: nonfinite.step], loss=loss,
                      grad_h=None if probe_used else grad_h[: nonfinite.step],
                      state0=state0, seed=seed, horizon_factor=horizon_factor, batch_sample=list(batch),
                      lyapunov_k=lyapunov_k, lyapunov_warmup=min(warmup, nonfinite.step - 1),
                      reortho_every=reortho_every, q0=q0, keep_trace=keep_trace, loss_label=loss_label)
        return _exploded(sub, nonfinite, T)
    for lt in reversed(trace.layers):
        step = _first_nonfinite(lt.grad_h, reverse=True)
        if step is not None:
            nonfinite = NonFinite("gradient", lt.layer, step)
            break

    spectra = weight_spectra(model)
    layers: list[LayerDiagnosis] = []
    probe_start = probe_vectors(B, H, seed)
    for lt, spectrum in zip(trace.layers, spectra):
        start_h = probe_start
        if lt.layer == model.num_layers - 1 and loss == "last":
            given = np.asarray(grad_h[-1], dtype=np.float64)
            use = np.linalg.norm(given, axis=1) > 0
            start_h = np.where(use[:, None], given, probe_start)
        start = np.concatenate([start_h, np.zeros_like(start_h)], axis=1) if model.cell == "lstm" else start_h
        grad_norm = _step_norms(lt.grad_h)  # (T, B)
        with np.errstate(all="ignore"):
            if _bptt_is_the_last_step_chain(lt, model, loss, grad_h, grad_norm):
                log_last = np.log10(grad_norm)
            else:
                log_last = last_step_chain(lt, start)
            log_prod, log_step, converged = product_norms(lt, batch)
            lyap = lyapunov_spectrum(lt, batch, k=k, warmup=warmup, reortho_every=reortho_every, q0=q0, seed=seed or 0)
        med = np.median(log_last, axis=1)
        fit = fit_decay(med)
        jfit = fit_decay(np.median(log_prod, axis=1))
        flow = GradientFlow(lt.layer, grad_norm, log_last, log_prod, log_step, tuple(int(b) for b in batch), fit,
                            jfit, horizon(med, horizon_factor, fit.rate),
                            per_sequence_horizon(log_last, horizon_factor),
                            ("SVD" if S <= 96 else "Lanczos "
                             f"(relative tolerance {PRODUCT_TOL:g})") + ("" if converged else " (not fully converged)"))
        gs = gate_stats(lt)
        fb = None
        if model.cell == "lstm" and model.bias:
            p = model.params
            fb = float((p[f"bias_ih_l{lt.layer}"][H : 2 * H] + p[f"bias_hh_l{lt.layer}"][H : 2 * H]).mean())
        nf_step = nonfinite.step if nonfinite is not None and nonfinite.layer == lt.layer else None
        v, detail, rule = layer_verdict(lt.layer, T, flow, lyap.top, nf_step,
                                        nonfinite.kind if nonfinite else None)
        layers.append(LayerDiagnosis(lt.layer, spectrum, flow, lyap, gs, v, detail, rule, fb))

    worst = max(layers, key=lambda ld: SEVERITY[ld.verdict])
    verdict = worst.verdict
    detail = worst.detail if len(layers) == 1 else f"layer {worst.layer}: {worst.detail}"
    grad_norm_total = global_norm(trace.param_grads)
    clip = _suggested_clip(model, x, grad_h, trace, state0) if verdict == "exploding" else None
    caveats = _caveats(model, layers, verdict, T)
    notes = []
    if len(batch) < B:
        notes.append(f"Jacobian products and Lyapunov exponents were computed on {len(batch)} of {B} sequences "
                     f"(batch_sample) to bound the cost")
    confidence = "low" if caveats else "high"
    adv = advice(layers, model.cell, T, verdict, clip,
                 grad_norm_total if math.isfinite(grad_norm_total) else None)
    return Diagnosis(model.cell, model.input_size, H, model.num_layers, T, B, seed if isinstance(seed, int) else None,
                     model.init, str(model.dtype), loss_name, verdict, detail, confidence, tuple(caveats), tuple(notes),
                     tuple(adv),
                     tuple(ld.rule for ld in layers), tuple(layers), nonfinite,
                     grad_norm_total if math.isfinite(grad_norm_total) else None, clip, settings,
                     trace if keep_trace else None)


def _bptt_is_the_last_step_chain(lt, model, loss, grad_h, grad_norm) -> bool:
    """Whether BPTT already gave ``||dl/dh_t||`` of the last-step loss for every sequence: the last layer, a loss
    on the last step only and non-zero there, and no norm below the normal range (no precision lost to
    underflow) or non-finite. Then the separate VJP chain would only repeat it."""
    if lt.layer != model.num_layers - 1 or loss != "last" or grad_h[:-1].any():
        return False
    tiny = np.finfo(lt.h.dtype).tiny / np.finfo(lt.h.dtype).eps
    return bool(np.all(np.isfinite(grad_norm)) and grad_norm.min() > tiny)


def _batch_indices(batch_sample, model, T, B, k, seed) -> np.ndarray:
    if isinstance(batch_sample, str):
        if batch_sample == "all":
            return np.arange(B)
        if batch_sample != "auto":
            raise ValueError(f"batch_sample must be 'auto', 'all', a count or a list of indices; got {batch_sample!r}")
        n = _auto_sample(model, T, B, k)
    elif isinstance(batch_sample, (int, np.integer)) and not isinstance(batch_sample, bool):
        if not 1 <= batch_sample <= B:
            raise ValueError(f"batch_sample must be between 1 and the batch size {B}; got {batch_sample}")
        n = int(batch_sample)
    else:
        idx = np.asarray(batch_sample)
        if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= B:
            raise ValueError(f"batch_sample indices must be a non-empty list of integers in 0..{B - 1}")
        return np.unique(idx)
    if n >= B:
        return np.arange(B)
    return np.sort(np.random.default_rng(seed).choice(B, n, replace=False))


def _suggested_clip(model, x, grad_h, trace, state0) -> float | None:
    """Global gradient norm of the same loss over only its last few steps (no long-range explosion in it)."""
    T = x.shape[0]
    w = min(T, THRESHOLDS["clip_window"])
    if w == T:
        s0 = state0
    else:
        h0 = np.stack([lt.h[T - w - 1] for lt in trace.layers])
        s0 = (h0, np.stack([lt.c[T - w - 1] for lt in trace.layers])) if model.cell == "lstm" else h0
    with np.errstate(all="ignore"):
        tr = bptt(model, x[T - w :], grad_h[T - w :], s0)
    norm = global_norm(tr.param_grads)
    return norm if math.isfinite(norm) and norm > 0 else None


def _caveats(model, layers, verdict, T) -> list[str]:
    out = []
    gated = model.cell in ("lstm", "gru")
    if gated and verdict == "vanishing":
        out.append("gated cell: at these weights the gradient vanishes, but the gates can learn to hold memory "
                   "(forget/update gate towards 1); whether they will is not decidable from one snapshot -- "
                   "compare with a diagnosis after a short training run")
    fl = layers[-1].flow
    if fl.fit.reason:
        out.append(f"no decay rate: {fl.fit.reason}")
    if fl.horizon.censored and T < THRESHOLDS["short_sequence"]:
        out.append(f"the gradient survives all {T} steps, but a sequence this short says little about longer ones")
    return out


def _exploded(sub: Diagnosis, nonfinite: NonFinite, T: int) -> Diagnosis:
    hit = RuleHit("non_finite", nonfinite.layer, "exploding", float(nonfinite.step), None,
                  f"the {nonfinite.kind} of layer {nonfinite.layer} became non-finite (overflow) at step "
                  f"{nonfinite.step}; the measurements cover steps 0..{nonfinite.step - 1}")
    adv = (f"the state overflowed at step {nonfinite.step} of {T}: scale the recurrent weights down (orthogonal "
           f"init, gain 1) and clip the global gradient norm", *sub.advice)
    return dataclasses.replace(sub, seq_len=T, verdict="exploding", verdict_detail=f"exploded at step {nonfinite.step}",
                               nonfinite=nonfinite, rules=(hit, *sub.rules), advice=adv,
                               notes=(*sub.notes, f"measurements cover the {nonfinite.step} finite steps only"))
