"""Per-layer measurements of one recorded run: gradient flow (BPTT norms, the last-step curve, Jacobian products,
decay rate, horizon), Lyapunov exponents, gate statistics and the forget-gate bias. No verdict here: the rule
table in :mod:`.verdict` reads what these functions return.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..cells import cell_module, gate_rows
from ..engine import LayerTrace, at_last_step
from ..model import RNNModel
from .flow import GradientFlow, batch_median, end_aligned, fit_decay, horizon, last_step_chain, per_sequence_horizon
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


def start_vectors(lt: LayerTrace, settings: AnalysisSettings, direct: np.ndarray | None,
                  probe_start: np.ndarray) -> np.ndarray:
    """The state-space vectors (B, S) the last-step curve starts from: the loss's own gradient at the last step
    where the loss looks there (``direct``: the loss's gradient on this layer trace's outputs, processing order,
    given for the last layer; ``loss="last"``; non-zero), the probe's unit vectors ``probe_start`` (B, H)
    elsewhere; zero on a cell state."""
    start_h = probe_start
    if direct is not None and settings.loss == "last":
        given = np.asarray(at_last_step(direct, lt.lengths), dtype=np.float64)
        use = np.linalg.norm(given, axis=1) > 0
        start_h = np.where(use[:, None], given, probe_start)
    start = np.zeros((start_h.shape[0], lt.state_size))
    start[:, : lt.hidden_size] = start_h
    return start


def _bptt_is_the_last_step_chain(lt: LayerTrace, settings: AnalysisSettings, direct, grad_norm) -> bool:
    """Whether BPTT already gave ``||dl/dh_t||`` of the last-step loss for every sequence: the last layer, a loss
    on the last step only and non-zero there, sequences of one length, and no norm below the normal range (no
    precision lost to underflow) or non-finite. Then the separate VJP chain would only repeat it."""
    if direct is None or lt.lengths is not None or settings.loss != "last" or direct[:-1].any():
        return False
    tiny = np.finfo(lt.h.dtype).tiny / np.finfo(lt.h.dtype).eps
    return bool(np.all(np.isfinite(grad_norm)) and grad_norm.min() > tiny)


def forget_bias(model: RNNModel, layer: int, direction: int = 0) -> float | None:
    """The mean effective forget-gate bias ``b_ih_f + b_hh_f`` of a layer, or None (no forget gate, no bias)."""
    gate = cell_module(model.cell).FORGET_GATE
    if gate is None or not model.bias:
        return None
    rows = gate_rows(model.cell, gate, model.hidden_size)
    _, _, b_ih, b_hh = model.layer_params(layer, direction)
    return float((b_ih[rows] + b_hh[rows]).mean())


def sub_trace(lt: LayerTrace, rows: np.ndarray, steps: int) -> LayerTrace:
    """The first ``steps`` steps of the sequences ``rows``, as a trace of sequences of one length."""
    def cut(a):
        return None if a is None else a[:steps, rows]
    return LayerTrace(lt.cell, lt.layer, lt.w_hh, lt.h0[rows], None if lt.c0 is None else lt.c0[rows],
                      {k: cut(v) for k, v in lt.arrays.items()}, cut(lt.grad_h), cut(lt.grad_c), lt.direction,
                      lt.w_hr, None)


def jacobian_sample(lt: LayerTrace, batch: np.ndarray) -> tuple[np.ndarray, int]:
    """The sequences the Jacobian products and Lyapunov exponents use, and their number of steps: the sample
    itself for sequences of one length; else those of its sequences with the longest length among them (the
    products need a common end), or the longest sequences of the batch when the sample has none of that length."""
    if lt.lengths is None:
        return batch, lt.h.shape[0]
    longest = int(lt.lengths[batch].max()) if batch.size else int(lt.lengths.max())
    rows = batch[lt.lengths[batch] == longest]
    return rows, longest


def measure_layer(model: RNNModel, lt: LayerTrace, settings: AnalysisSettings, direct: np.ndarray | None,
                  start: np.ndarray, seed: int | None) -> LayerMeasurements:
    """Every measurement of one layer trace (after BPTT). With per-sequence lengths each sequence's flow is
    measured over its own steps and the per-step arrays are end-aligned (see :func:`.flow.end_aligned`)."""
    batch = np.asarray(settings.batch_sample)
    grad_norm = step_norms(lt.grad_h)  # (T, B)
    rows, steps = jacobian_sample(lt, batch)
    jac_lt = lt if lt.lengths is None else sub_trace(lt, rows, steps)
    jac_rows = rows if lt.lengths is None else np.arange(rows.size)
    with np.errstate(all="ignore"):
        if _bptt_is_the_last_step_chain(lt, settings, direct, grad_norm):
            log_last = np.log10(grad_norm)
        else:
            log_last = last_step_chain(lt, start)
        norms = product_norms(jac_lt, jac_rows)
        lyap = lyapunov_spectrum(jac_lt, jac_rows, k=settings.lyapunov_k,
                                 warmup=min(settings.lyapunov_warmup, steps - 1),
                                 reortho_every=settings.reortho_every, q0=settings.q0, seed=seed or 0)
    if lt.lengths is not None:
        grad_norm, log_last = end_aligned(grad_norm, lt.lengths), end_aligned(log_last, lt.lengths)
        lyap = dataclasses.replace(lyap, batch=tuple(int(b) for b in rows))
    med = batch_median(log_last, lt.lengths is not None)
    fit = fit_decay(med)
    flow = GradientFlow(lt.layer, grad_norm, log_last, norms.log10_product, norms.log10_step,
                        tuple(int(b) for b in rows), fit, fit_decay(batch_median(norms.log10_product, False)),
                        horizon(med, settings.horizon_factor, fit.rate),
                        per_sequence_horizon(log_last, settings.horizon_factor), norms.method, lt.lengths)
    return LayerMeasurements(flow, lyap, gate_stats(lt), forget_bias(model, lt.layer, lt.direction))
