"""Per-layer measurements of one recorded run: gradient flow (BPTT norms, the last-step curve, Jacobian products,
decay rate, horizon), Lyapunov exponents, gate statistics and the forget-gate bias. No verdict here: the rule
table in :mod:`.verdict` reads what these functions return.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cells import cell_module, gate_rows
from ..engine import LayerTrace
from ..model import RNNModel
from .flow import GradientFlow, fit_decay, horizon, last_step_chain, per_sequence_horizon
from .gates import GateStats, gate_stats
from .jacobians import product_norms
from .lyapunov import LyapunovSpectrum, lyapunov_spectrum
from .settings import AnalysisSettings

CHUNK_STEPS = 256  # steps per slice when scanning a (T, B, H) array: no full-size float64 temporary


@dataclass(frozen=True)
class LayerMeasurements:
    """What :func:`measure_layer` found in one layer."""

    flow: GradientFlow
    lyapunov: LyapunovSpectrum
    gates: GateStats
    forget_bias: float | None  # mean effective forget-gate bias b_ih_f + b_hh_f (cells with a forget gate)


def step_norms(a: np.ndarray) -> np.ndarray:
    """``||a[t, b]||`` (T, B) in float64, ``CHUNK_STEPS`` steps at a time."""
    out = np.empty(a.shape[:2])
    for s in range(0, a.shape[0], CHUNK_STEPS):
        out[s : s + CHUNK_STEPS] = np.linalg.norm(a[s : s + CHUNK_STEPS].astype(np.float64, copy=False), axis=2)
    return out


def first_nonfinite(arr: np.ndarray, reverse: bool = False) -> int | None:
    """The first (or, with ``reverse``, the last) step of a (T, ...) array holding NaN or Inf, or None."""
    T = arr.shape[0]
    ok = np.concatenate([np.isfinite(arr[s : s + CHUNK_STEPS]).reshape(min(CHUNK_STEPS, T - s), -1).all(axis=1)
                         for s in range(0, T, CHUNK_STEPS)])
    if ok.all():
        return None
    bad = np.nonzero(~ok)[0]
    return int(bad[-1] if reverse else bad[0])


def start_vectors(model: RNNModel, lt: LayerTrace, settings: AnalysisSettings, grad_h: np.ndarray,
                  probe_start: np.ndarray) -> np.ndarray:
    """The state-space vectors (B, S) the last-step curve starts from: the loss's own gradient at the last step
    where the loss looks there (last layer, ``loss="last"``, non-zero), the probe's unit vectors elsewhere; zero
    on a cell state."""
    start_h = probe_start
    if lt.layer == model.num_layers - 1 and settings.loss == "last":
        given = np.asarray(grad_h[-1], dtype=np.float64)
        use = np.linalg.norm(given, axis=1) > 0
        start_h = np.where(use[:, None], given, probe_start)
    start = np.zeros((start_h.shape[0], model.state_size))
    start[:, : model.hidden_size] = start_h
    return start


def _bptt_is_the_last_step_chain(lt: LayerTrace, model: RNNModel, settings: AnalysisSettings, grad_h,
                                 grad_norm) -> bool:
    """Whether BPTT already gave ``||dl/dh_t||`` of the last-step loss for every sequence: the last layer, a loss
    on the last step only and non-zero there, and no norm below the normal range (no precision lost to
    underflow) or non-finite. Then the separate VJP chain would only repeat it."""
    if lt.layer != model.num_layers - 1 or settings.loss != "last" or grad_h[:-1].any():
        return False
    tiny = np.finfo(lt.h.dtype).tiny / np.finfo(lt.h.dtype).eps
    return bool(np.all(np.isfinite(grad_norm)) and grad_norm.min() > tiny)


def forget_bias(model: RNNModel, layer: int) -> float | None:
    """The mean effective forget-gate bias ``b_ih_f + b_hh_f`` of a layer, or None (no forget gate, no bias)."""
    gate = cell_module(model.cell).FORGET_GATE
    if gate is None or not model.bias:
        return None
    rows = gate_rows(model.cell, gate, model.hidden_size)
    return float((model.params[f"bias_ih_l{layer}"][rows] + model.params[f"bias_hh_l{layer}"][rows]).mean())


def measure_layer(model: RNNModel, lt: LayerTrace, settings: AnalysisSettings, grad_h: np.ndarray,
                  start: np.ndarray, seed: int | None) -> LayerMeasurements:
    """Every measurement of one layer from its trace (after BPTT)."""
    batch = np.asarray(settings.batch_sample)
    grad_norm = step_norms(lt.grad_h)  # (T, B)
    with np.errstate(all="ignore"):
        if _bptt_is_the_last_step_chain(lt, model, settings, grad_h, grad_norm):
            log_last = np.log10(grad_norm)
        else:
            log_last = last_step_chain(lt, start)
        norms = product_norms(lt, batch)
        lyap = lyapunov_spectrum(lt, batch, k=settings.lyapunov_k, warmup=settings.lyapunov_warmup,
                                 reortho_every=settings.reortho_every, q0=settings.q0, seed=seed or 0)
    med = np.median(log_last, axis=1)
    fit = fit_decay(med)
    flow = GradientFlow(lt.layer, grad_norm, log_last, norms.log10_product, norms.log10_step,
                        settings.batch_sample, fit, fit_decay(np.median(norms.log10_product, axis=1)),
                        horizon(med, settings.horizon_factor, fit.rate),
                        per_sequence_horizon(log_last, settings.horizon_factor), norms.method)
    return LayerMeasurements(flow, lyap, gate_stats(lt), forget_bias(model, lt.layer))
