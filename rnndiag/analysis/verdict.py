"""The rules that turn measurements into a verdict and advice -- all thresholds live in ``THRESHOLDS``.

Each layer gets one verdict from the first rule that fires, in this order:

==================  ==================================================================================  ===========
rule                fires when                                                                            verdict
==================  ==================================================================================  ===========
``non_finite``      the state or the gradient became NaN/Inf at some step                                 exploding
``growth``          the last-step gradient grows by more than ``growth_factor`` going back in time         exploding
``chaotic``         top Lyapunov exponent > ``lyapunov_chaos`` and the fitted rate is positive             exploding
``horizon``         the last-step gradient falls below ``horizon_factor`` of its value within the sequence vanishing
``healthy``         none of the above                                                                      healthy
==================  ==================================================================================  ===========

A healthy layer whose top exponent lies within ``edge_band`` of 0 is reported as at the "edge of chaos". The
model's verdict is the worst layer's (exploding > vanishing > healthy). Where the evidence cannot decide -- a
gated cell (its gates can learn to hold memory), a sequence too short to fit a rate, a horizon censored by a short
sequence -- the verdict carries a caveat and ``confidence = "low"`` instead of a guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..cells import is_gated

THRESHOLDS = {
    "growth_factor": 1e3,  # exploding: gradient k steps back > 1e3 x its value at the loss
    "lyapunov_chaos": 0.01,  # nats/step: top exponent above this -> expanding dynamics
    "edge_band": 0.01,  # |top exponent| below this -> edge of chaos
    "forget_bias_low": 0.5,  # LSTM effective forget-gate bias below this -> advise 1
    "hidden_saturation": 0.3,  # fraction of |h| > 0.9 above this -> saturation advice
    "gate_saturation": 0.5,  # fraction of a gate's values saturated above this -> gate advice
    "short_sequence": 20,  # a censored horizon on fewer steps says little
    "clip_window": 10,  # steps of the truncated-BPTT window that suggest a clipping threshold
}

SEVERITY = {"healthy": 0, "vanishing": 1, "exploding": 2}


@dataclass(frozen=True)
class RuleHit:
    """One rule that fired: its name, the layer, the number that made it fire and the threshold it crossed."""

    rule: str
    layer: int
    verdict: str
    value: float | None
    threshold: float | None
    text: str

    def to_dict(self) -> dict:
        v = self.value if self.value is None or math.isfinite(self.value) else None
        return {"rule": self.rule, "layer": self.layer, "verdict": self.verdict, "value": v,
                "threshold": self.threshold, "text": self.text}


def layer_verdict(layer: int, seq_len: int, flow, lyap_top: float, nonfinite_step: int | None,
                  nonfinite_kind: str | None) -> tuple[str, str, RuleHit]:
    """(verdict, detail, the rule that fired) for one layer."""
    th = THRESHOLDS
    if nonfinite_step is not None:
        text = f"the {nonfinite_kind} became non-finite (overflow) at step {nonfinite_step}"
        return "exploding", f"exploded at step {nonfinite_step}", RuleHit(
            "non_finite", layer, "exploding", float(nonfinite_step), None, text)
    curve = flow.median_last_step
    drop = curve[::-1] - curve[-1]  # log10 ratio k steps back vs at the loss
    finite = drop[np.isfinite(drop)]
    max_growth = float(finite.max()) if finite.size else 0.0
    if max_growth > math.log10(th["growth_factor"]):
        k = int(np.nanargmax(np.where(np.isfinite(drop), drop, np.nan)))
        text = (f"gradient {k} steps back is 10^{max_growth:.1f} times its value at the loss "
                f"(> {th['growth_factor']:g})")
        return "exploding", f"gradient grows 10^{max_growth:.1f} over {k} steps", RuleHit(
            "growth", layer, "exploding", max_growth, math.log10(th["growth_factor"]), text)
    rate = flow.fit.rate
    if lyap_top > th["lyapunov_chaos"] and rate is not None and rate > 0:
        text = (f"top Lyapunov exponent {lyap_top:+.3f} nats/step > {th['lyapunov_chaos']} and the gradient "
                f"grows {rate:+.4f} log10/step")
        return "exploding", "expanding (chaotic) dynamics", RuleHit(
            "chaotic", layer, "exploding", lyap_top, th["lyapunov_chaos"], text)
    hz = flow.horizon
    if not hz.censored:
        text = (f"gradient horizon {hz.steps} steps < sequence length {seq_len}: the gradient falls below "
                f"{hz.factor:g} of its value at the loss {hz.steps} steps back")
        return "vanishing", f"horizon {hz.steps} of {seq_len} steps", RuleHit(
            "horizon", layer, "vanishing", float(hz.steps), float(seq_len), text)
    detail = "gradient reaches the start of the sequence"
    if abs(lyap_top) < th["edge_band"]:
        detail = f"edge of chaos (top exponent {lyap_top:+.4f} nats/step)"
    text = f"the gradient stays within {hz.factor:g} of its value at the loss over all {seq_len} steps"
    return "healthy", detail, RuleHit("healthy", layer, "healthy", None, None, text)


def advice(diag_layers, cell: str, seq_len: int, verdict: str, suggested_clip: float | None,
           global_norm: float | None) -> list[str]:
    """Concrete advice, each line quoting the measurement behind it."""
    th = THRESHOLDS
    out: list[str] = []
    gated = is_gated(cell)
    for ld in diag_layers:
        sp, fl, gs = ld.spectrum, ld.flow, ld.gates
        tag = f"{ld.name}: " if len(diag_layers) > 1 else ""
        top = ld.lyapunov.top
        if ld.verdict == "vanishing":
            hz = fl.horizon
            if not gated and sp.sure_to_vanish:
                out.append(f"{tag}sigma_max(W_hh) = {sp.sigma_max:.3g} < 1/gamma = {1 / sp.gamma:g}: the gradient "
                           f"must vanish (Pascanu et al. 2013); initialise W_hh orthogonally (--init orthogonal, "
                           f"gain 1) or as the identity (--init identity)")
            if not gated:
                out.append(f"{tag}horizon {hz.steps} steps < sequence length {seq_len}: use orthogonal init, or "
                           f"switch to LSTM/GRU for dependencies longer than {hz.steps} steps")
            else:
                out.append(f"{tag}horizon {hz.steps} steps < sequence length {seq_len} at these weights; a gated "
                           f"cell can learn to open its gates -- check again after some training "
                           f"(rnndiag train) before changing the architecture")
        if ld.verdict == "exploding":
            bits = [f"sigma_max {sp.sigma_max:.3g}"]
            if math.isfinite(top):
                bits.append(f"top Lyapunov exponent {top:+.3f}")
            clip = f"; suggested threshold {suggested_clip:.3g} (the global gradient norm of a " \
                   f"{th['clip_window']}-step truncated BPTT of the same loss)" if suggested_clip else ""
            out.append(f"{tag}{' and '.join(bits)}: clip the global gradient norm "
                       f"(torch.nn.utils.clip_grad_norm_){clip}")
            if not gated and sp.sigma_max > 1.0:
                out.append(f"{tag}scale W_hh down: orthogonal init with gain 1 puts sigma_max at 1 "
                           f"(now {sp.sigma_max:.3g})")
        fb = ld.forget_bias  # None unless the cell has a forget gate with a bias
        if fb is not None and fb < th["forget_bias_low"]:
            out.append(f"{tag}forget-gate bias {fb:.2f} -> set 1 (Jozefowicz et al. 2015); the forget gate "
                       f"averages {gs.memory_gate_mean:.2f}, a memory of about {gs.memory_timescale:.1f} steps")
        if gs.hidden_saturated is not None and gs.hidden_saturated > th["hidden_saturation"]:
            out.append(f"{tag}{100 * gs.hidden_saturated:.0f}% of hidden values are saturated (|h| > 0.9): scale "
                       f"the inputs or the input weights down")
        for name, st in gs.gates.items():
            sat = st.left_saturated + st.right_saturated
            if st.kind == "sigmoid" and sat > th["gate_saturation"]:
                out.append(f"{tag}gate {name} is saturated {100 * sat:.0f}% of the time "
                           f"({100 * st.left_saturated:.0f}% < 0.1, {100 * st.right_saturated:.0f}% > 0.9): "
                           f"its gradient is near zero there")
    if verdict == "healthy" and not out:
        norm = f" at about {global_norm:.3g}" if global_norm else ""
        out.append(f"no change needed for sequences of {seq_len} steps; keep global-norm clipping{norm} as a "
                   f"safety net")
    return out
