"""The rules that turn measurements into a verdict and advice -- all thresholds live in ``THRESHOLDS``.

Each layer gets one verdict from the first rule that fires, in this order:

======================  ===========================================================================  =========
rule                    fires when                                                                   verdict
======================  ===========================================================================  =========
``non_finite``          the state or the gradient became NaN/Inf at some step                        exploding
``growth``              the last-step gradient grows by more than ``growth_factor`` going back       exploding
``chaotic``             top Lyapunov exponent > ``lyapunov_chaos`` and the fitted rate is positive    exploding
``weights``             a weight lies beyond ``weights_init_bound`` x the layer's init bound          exploding
                        1/sqrt(H) (the trace of earlier exploding updates)
``grad_norm``           the user's loss's parameter-gradient norm of a layer (trained weights) is     exploding
                        above ``grad_param_ratio`` x the norm of its parameters
``grad_spike``          the global gradient norm is above ``grad_spike`` x the median of at least     exploding
                        ``grad_spike_history`` earlier captures of the same run
``horizon``             the last-step gradient falls below ``horizon_factor`` of its value within     vanishing
                        the dependency length (``--dependency-length``, default the sequence length)
``healthy``             none of the above                                                             healthy
======================  ===========================================================================  =========

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
    "weights_init_bound": 1e3,  # exploding: a weight beyond this x its layer's init bound 1/sqrt(H)
    "grad_param_ratio": 10.0,  # exploding: a layer's gradient norm (real loss) above this x its parameter norm
    "grad_spike": 10.0,  # exploding: the global gradient norm above this x the median of earlier captures
    "grad_spike_history": 3,  # earlier captures the spike rule needs
}
STAGES = ("init", "trained", "unknown")


@dataclass(frozen=True)
class Magnitudes:
    """The sizes the magnitude rules read for one layer (and direction)."""

    grad_norm: float | None  # the layer's parameter-gradient norm
    param_norm: float  # the layer's parameter norm
    max_abs_weight: float  # the largest |w| of its weight matrices
    init_bound: float  # PyTorch's init bound 1/sqrt(H)
    loss_is_real: bool  # the user's loss on trained weights: its gradient's size against the weights means something
    global_norm: float | None = None  # the whole module's gradient norm (the top layer only: the spike rule)
    earlier_median: float | None = None  # median global norm of earlier captures, when there are enough

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
                  nonfinite_kind: str | None, sizes: Magnitudes | None = None,
                  dependency_length: int | None = None) -> tuple[str, str, RuleHit]:
    """(verdict, detail, the rule that fired) for one layer; the first rule of the table that fires."""
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
    hit = magnitude_rule(layer, sizes) if sizes is not None else None
    if hit is not None:
        what = {"weights": "x the init bound", "grad_norm": "x the parameter norm", "grad_spike": "x earlier median"}
        return "exploding", f"{hit.rule}: {hit.value:.3g} {what[hit.rule]}", hit
    need = seq_len if dependency_length is None else dependency_length
    what = "sequence length" if dependency_length is None or dependency_length == seq_len else "dependency length"
    hz = flow.horizon
    if not hz.censored and hz.steps < need:
        text = (f"gradient horizon {hz.steps} steps < {what} {need}: the gradient falls below "
                f"{hz.factor:g} of its value at the loss {hz.steps} steps back")
        return "vanishing", f"horizon {hz.steps} of {need} steps", RuleHit(
            "horizon", layer, "vanishing", float(hz.steps), float(need), text)
    if not hz.censored:
        text = (f"the gradient stays within {hz.factor:g} of its value at the loss for {hz.steps} steps, beyond the "
                f"{what} {need}")
        return "healthy", f"horizon {hz.steps} >= {need} steps", RuleHit("healthy", layer, "healthy",
                                                                           float(hz.steps), float(need), text)
    detail = "gradient reaches the start of the sequence"
    if abs(lyap_top) < th["edge_band"]:
        detail = f"edge of chaos (top exponent {lyap_top:+.4f} nats/step)"
    text = f"the gradient stays within {hz.factor:g} of its value at the loss over all {seq_len} steps"
    return "healthy", detail, RuleHit("healthy", layer, "healthy", None, None, text)


def magnitude_rule(layer: int, sizes: Magnitudes) -> RuleHit | None:
    """The first magnitude rule (``weights``, ``grad_norm``, ``grad_spike``) that fires for one layer, or None."""
    th = THRESHOLDS
    ratio = sizes.max_abs_weight / sizes.init_bound
    if ratio > th["weights_init_bound"]:
        return RuleHit("weights", layer, "exploding", ratio, th["weights_init_bound"],
                       f"weights up to {sizes.max_abs_weight:.3g}: {ratio:.3g} x the layer's init bound "
                       f"1/sqrt(H) = {sizes.init_bound:.3g} (> {th['weights_init_bound']:g} x), the mark of earlier "
                       f"exploding updates")
    g = sizes.grad_norm
    if sizes.loss_is_real and g is not None and math.isfinite(g) and sizes.param_norm > 0 and \
            g > th["grad_param_ratio"] * sizes.param_norm:
        return RuleHit("grad_norm", layer, "exploding", g / sizes.param_norm, th["grad_param_ratio"],
                       f"gradient norm {g:.3g} of the layer's parameters is {g / sizes.param_norm:.3g} x their norm "
                       f"{sizes.param_norm:.3g} (> {th['grad_param_ratio']:g} x; the ratio scales with the loss: a "
                       f"sum over the batch or an AMP-scaled loss inflates it)")
    gn, med = sizes.global_norm, sizes.earlier_median
    if gn is not None and med is not None and med > 0 and gn > th["grad_spike"] * med:
        return RuleHit("grad_spike", layer, "exploding", gn / med, th["grad_spike"],
                       f"global gradient norm {gn:.3g} is {gn / med:.3g} x the median {med:.3g} of earlier captures "
                       f"(> {th['grad_spike']:g} x): a spike")
    return None


def advice(diag_layers, cell: str, seq_len: int, verdict: str, suggested_clip: float | None,
           global_norm: float | None, stage: str = "init", dependency_length: int | None = None,
           user_run: bool = False) -> list[str]:
    """Concrete advice, each line quoting the measurement behind it. At initialization (or an unknown stage)
    it speaks of initialization recipes; for trained weights of the observed run only (what the gates learned,
    where the gradient dies, what clipping would do)."""
    need = seq_len if dependency_length is None else dependency_length
    out: list[str] = []
    for ld in diag_layers:
        tag = f"{ld.name}: " if len(diag_layers) > 1 else ""
        lines = _trained_advice(ld, cell, need, suggested_clip, global_norm) if stage == "trained" else \
            _init_advice(ld, cell, need, suggested_clip, user_run)
        out.extend(tag + line for line in lines + _saturation_advice(ld))
    if verdict == "healthy" and not out:
        norm = f" at about {global_norm:.3g}" if global_norm else ""
        reach = f"dependencies of {need} steps" if need <= seq_len else f"the {seq_len} steps measured"
        out.append(f"no change needed for {reach}; keep global-norm clipping{norm} as a safety net")
    return out


def _clip_line(suggested_clip: float | None, global_norm: float | None) -> str:
    th = THRESHOLDS
    if not suggested_clip:
        return ""
    fires = ""
    if global_norm and global_norm > suggested_clip:
        fires = f"; it would fire on this batch (global norm {global_norm:.3g}) and scale the step by " \
                f"{suggested_clip / global_norm:.2g}"
    return (f"; suggested threshold {suggested_clip:.3g} (the global gradient norm of a {th['clip_window']}-step "
            f"truncated BPTT of the same loss){fires}")


def _init_advice(ld, cell: str, need: int, suggested_clip: float | None, user_run: bool = False) -> list[str]:
    sp, fl, gs = ld.spectrum, ld.flow, ld.gates
    gated, out, top = is_gated(cell), [], ld.lyapunov.top
    if ld.verdict == "vanishing":
        hz = fl.horizon
        if not gated and sp.sure_to_vanish:
            out.append(f"sigma_max(W_hh) = {sp.sigma_max:.3g} < 1/gamma = {1 / sp.gamma:g}: the gradient must "
                       f"vanish (Pascanu et al. 2013); initialise W_hh orthogonally (--init orthogonal, gain 1) or "
                       f"as the identity (--init identity)")
        if not gated:
            out.append(f"horizon {hz.steps} steps < {need} steps needed: use orthogonal init, or switch to LSTM/GRU "
                       f"for dependencies longer than {hz.steps} steps")
        else:
            again = "capture your run again after some training" if user_run else \
                "check again after some training (rnndiag train)"
            out.append(f"horizon {hz.steps} steps < {need} steps needed at these weights; a gated cell can learn to "
                       f"open its gates -- {again} before changing the architecture")
    if ld.verdict == "exploding":
        bits = [f"sigma_max {sp.sigma_max:.3g}"]
        if math.isfinite(top):
            bits.append(f"top Lyapunov exponent {top:+.3f}")
        out.append(f"{' and '.join(bits)}: clip the global gradient norm (torch.nn.utils.clip_grad_norm_)"
                   f"{_clip_line(suggested_clip, None)}")
        if not gated and sp.sigma_max > 1.0:
            out.append(f"scale W_hh down: orthogonal init with gain 1 puts sigma_max at 1 (now {sp.sigma_max:.3g})")
    fb = ld.forget_bias  # None unless the cell has a forget gate with a bias
    if fb is not None and fb < THRESHOLDS["forget_bias_low"]:
        out.append(f"forget-gate bias {fb:.2f} -> set 1 (Jozefowicz et al. 2015); the forget gate averages "
                   f"{gs.memory_gate_mean:.2f}, a memory of about {gs.memory_timescale:.1f} steps")
    return out


def _trained_advice(ld, cell: str, need: int, suggested_clip: float | None, global_norm: float | None) -> list[str]:
    """Advice on a trained model: what the run shows, never an initialization recipe."""
    fl, gs, out = ld.flow, ld.gates, []
    memory = ""
    if gs.memory_gate is not None and gs.memory_timescale is not None and math.isfinite(gs.memory_timescale):
        memory = (f"the trained {gs.memory_gate} gate averages {gs.memory_gate_mean:.2f}, a memory of about "
                  f"{gs.memory_timescale:.1f} steps; ")
    if ld.verdict == "vanishing":
        hz = fl.horizon.steps
        if is_gated(cell):
            out.append(f"{memory}the gradient from the loss dies {hz} steps back, short of the {need} steps needed: "
                       f"this run is not learning dependencies longer than about {hz} steps -- train on shorter "
                       f"sequences first and lengthen them (a curriculum), or shorten the path (skip connections, "
                       f"attention)")
        else:
            out.append(f"the gradient from the loss dies {hz} steps back, short of the {need} steps needed: a trained "
                       f"{cell} holds about {hz} steps; switch to LSTM/GRU for longer dependencies")
    if ld.verdict == "exploding":
        rule = ld.rule
        what = rule.text.split(";")[0]
        out.append(f"{what}: clip the global gradient norm (torch.nn.utils.clip_grad_norm_)"
                   f"{_clip_line(suggested_clip, global_norm)}, and lower the learning rate if it keeps firing")
        if rule.rule == "weights":
            out.append("the weights have grown far beyond their start: restart from a checkpoint taken before they "
                       "did, with clipping on")
    elif memory and ld.verdict == "healthy":
        reach = f"the {need} steps needed" if need <= fl.horizon.steps or not fl.horizon.censored else \
            f"all {fl.horizon.steps} steps measured (of the {need} needed)"
        out.append(memory.rstrip("; ") + f", and the gradient reaches {reach}: no change needed")
    return out


def _saturation_advice(ld) -> list[str]:
    th, gs, out = THRESHOLDS, ld.gates, []
    if gs.hidden_saturated is not None and gs.hidden_saturated > th["hidden_saturation"]:
        out.append(f"{100 * gs.hidden_saturated:.0f}% of hidden values are saturated (|h| > 0.9): scale the inputs "
                   f"or the input weights down")
    for name, st in gs.gates.items():
        sat = st.left_saturated + st.right_saturated
        if st.kind == "sigmoid" and sat > th["gate_saturation"]:
            out.append(f"gate {name} is saturated {100 * sat:.0f}% of the time ({100 * st.left_saturated:.0f}% < "
                       f"0.1, {100 * st.right_saturated:.0f}% > 0.9): its gradient is near zero there")
    return out
