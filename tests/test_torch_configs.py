"""Every nn.RNN/LSTM/GRU configuration against PyTorch, step by step.

For each configuration (bidirectional, stacked, ``proj_size``, a packed variable-length batch, given initial
states, dropout between layers, float16/bfloat16 weights, ``batch_first``) three things are compared, float64:

* the fused ``torch.nn`` module's outputs, final states and autograd gradients (inputs, initial states, every
  parameter) against :func:`rnndiag.bptt`;
* an UNROLLED torch reference -- one cell step at a time, written here from the module's own parameters with
  torch ops, ``retain_grad()`` on every step's state -- whose outputs must first equal the fused module's; its
  ``h_t.grad`` (``c_t.grad``) is the TOTAL ``dL/dh_t`` per step, layer and direction, compared against every
  :class:`rnndiag.LayerTrace`'s ``grad_h`` (``grad_c``), in processing order and in time order, and as norms;
* the loss is ``sum(g * output) + sum(g_h * h_n) (+ sum(g_c * c_n))`` with random ``g``, or the final-state terms
  alone.

Errors are relative: ``max|ours - theirs| / max|theirs|``. Run with ``-rP`` (or ``-s``) to see the largest error
observed per case.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import rnndiag
from rnndiag.model import RNNModel

torch = pytest.importorskip("torch", reason="torch is not installed: the PyTorch reference tests need it")
F = torch.nn.functional
pack_padded_sequence = torch.nn.utils.rnn.pack_padded_sequence
pad_packed_sequence = torch.nn.utils.rnn.pad_packed_sequence

pytestmark = pytest.mark.torch

TOL = 1e-10  # ours vs torch, float64, relative
TOL_REF = 1e-12  # the unrolled reference vs the fused module (same ops, same dtype)
PARAM_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


# -- comparison --------------------------------------------------------------------------------------------------
def rel_err(ours, theirs) -> float:
    """``max|ours - theirs| / max|theirs|`` (the absolute difference when ``theirs`` is all zeros)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    diff = float(np.max(np.abs(ours - theirs))) if ours.size else 0.0
    scale = float(np.max(np.abs(theirs))) if theirs.size else 0.0
    return diff / scale if scale > 0 else diff


class Checker:
    """Compares arrays, fails with ours vs theirs printed, and keeps the largest error seen."""

    def __init__(self, case: str):
        self.case = case
        self.errors: dict[str, float] = {}

    def __call__(self, name: str, ours, theirs, tol: float = TOL) -> float:
        ours, theirs = (a.detach().numpy() if isinstance(a, torch.Tensor) else a for a in (ours, theirs))
        ours, theirs = np.asarray(ours), np.asarray(theirs)
        assert ours.shape == theirs.shape, f"{self.case} {name}: shape ours {ours.shape} vs theirs {theirs.shape}"
        assert np.isfinite(ours).all(), f"{self.case} {name}: ours has NaN/Inf:\n{ours}"
        err = rel_err(ours, theirs)
        if not err <= tol:
            with np.printoptions(precision=12, threshold=400, linewidth=120):
                raise AssertionError(
                    f"{self.case} {name}: relative error {err:.3e} > {tol:.0e}\n"
                    f"ours ({ours.dtype}):\n{ours}\ntheirs ({theirs.dtype}):\n{theirs}\n"
                    f"|diff|:\n{np.abs(ours.astype(np.float64) - theirs.astype(np.float64))}")
        self.errors[name] = err
        return err

    def report(self) -> None:
        """Print the largest error of ours vs torch and of the unrolled reference vs the fused module."""
        for label, names in (("ours vs torch", [n for n in self.errors if not n.startswith("unrolled")]),
                             ("unrolled vs fused", [n for n in self.errors if n.startswith("unrolled")])):
            if names:
                worst = max(names, key=self.errors.get)
                print(f"[{self.case}] {label}: {len(names)} quantities, max relative error "
                      f"{self.errors[worst]:.2e} ({worst})")


# -- modules and problems ----------------------------------------------------------------------------------------
def make_module(cell, I, H, L=1, *, bias=True, bidirectional=False, proj=0, dropout=0.0, seed=0, batch_first=False):
    torch.manual_seed(seed)
    kw = {"num_layers": L, "bias": bias, "bidirectional": bidirectional, "dropout": dropout,
          "batch_first": batch_first}
    if cell.startswith("rnn"):
        mod = torch.nn.RNN(I, H, nonlinearity=cell[4:], **kw)
    elif cell == "lstm":
        mod = torch.nn.LSTM(I, H, proj_size=proj, **kw)
    else:
        mod = torch.nn.GRU(I, H, **kw)
    return mod.double()


def model_of(mod, cell) -> RNNModel:
    params = {k: v.detach().numpy().copy() for k, v in mod.state_dict().items()}
    return RNNModel(cell, mod.input_size, mod.hidden_size, mod.num_layers, mod.bias, params,
                    bidirectional=mod.bidirectional, proj_size=getattr(mod, "proj_size", 0))


def make_problem(model: RNNModel, T, B, rng, *, lengths=None, state0=False, loss="outputs+states"):
    """x (T, B, I), state0, grad on the outputs (or None), grad on (h_n, c_n), all numpy float64."""
    LD, P, H = model.num_layers * model.num_directions, model.output_size, model.hidden_size
    x = rng.standard_normal((T, B, model.input_size))
    s0 = None
    if state0:
        h0 = 0.5 * rng.standard_normal((LD, B, P))
        s0 = (h0, 0.5 * rng.standard_normal((LD, B, H))) if model.has_cell_state else h0
    g_out = rng.standard_normal((T, B, model.num_directions * P)) if loss == "outputs+states" else None
    g_hn = rng.standard_normal((LD, B, P))
    g_cn = rng.standard_normal((LD, B, H)) if model.has_cell_state else None
    lengths = None if lengths is None else np.asarray(lengths, np.int64)
    return {"x": x, "state0": s0, "lengths": lengths, "g_out": g_out, "g_hn": g_hn, "g_cn": g_cn}


def _initial(model: RNNModel, state0, B):
    """Fresh leaf tensors h0, c0 (zeros when no state0 is given), requiring grad."""
    LD, P, H = model.num_layers * model.num_directions, model.output_size, model.hidden_size
    if state0 is None:
        h0, c0 = np.zeros((LD, B, P)), (np.zeros((LD, B, H)) if model.has_cell_state else None)
    elif model.has_cell_state:
        h0, c0 = state0
    else:
        h0, c0 = state0, None
    h0t = torch.tensor(h0, requires_grad=True)
    c0t = None if c0 is None else torch.tensor(c0, requires_grad=True)
    return h0t, c0t


def _loss(prob, out, h_n, c_n):
    loss = (h_n * torch.from_numpy(prob["g_hn"])).sum()
    if prob["g_out"] is not None:
        loss = loss + (out * torch.from_numpy(prob["g_out"])).sum()
    if c_n is not None:
        loss = loss + (c_n * torch.from_numpy(prob["g_cn"])).sum()
    return loss


def run_fused(mod, model: RNNModel, prob, *, batch_first=False):
    """The fused module's outputs and autograd gradients (numpy), time-major. ``lengths``: a packed batch."""
    x, lengths = prob["x"], prob["lengths"]
    T, B = x.shape[:2]
    mod.zero_grad(set_to_none=True)
    xt = torch.tensor(np.swapaxes(x, 0, 1).copy() if batch_first else x, requires_grad=True)
    h0, c0 = _initial(model, prob["state0"], B)
    inp = xt if lengths is None else pack_padded_sequence(xt, torch.from_numpy(lengths), batch_first=batch_first,
                                                          enforce_sorted=False)
    out, state = mod(inp, (h0, c0) if c0 is not None else h0)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    if batch_first:
        out = out.transpose(0, 1)
    h_n, c_n = state if c0 is not None else (state, None)
    _loss(prob, out, h_n, c_n).backward()
    res = {"h": out, "h_n": h_n, "c_n": c_n, "grad_x": xt.grad, "grad_h0": h0.grad,
           "grad_c0": None if c0 is None else c0.grad}
    res = {k: v.detach().numpy().copy() for k, v in res.items() if v is not None}
    if batch_first:
        res["grad_x"] = np.swapaxes(res["grad_x"], 0, 1)
    res["params"] = {k: p.grad.detach().numpy().copy() for k, p in mod.named_parameters()}
    mod.zero_grad(set_to_none=True)
    return res


# -- the unrolled reference --------------------------------------------------------------------------------------
def rnn_step(p, x, h, relu):
    a = F.linear(x, p["weight_ih"], p["bias_ih"]) + F.linear(h, p["weight_hh"], p["bias_hh"])
    return torch.relu(a) if relu else torch.tanh(a)


def lstm_cell(p, x, h, c):
    """One LSTM step up to the new cell state: ``(c_t, o_t)``; ``h_t`` is :func:`lstm_output` of ``c_t``."""
    gates = F.linear(x, p["weight_ih"], p["bias_ih"]) + F.linear(h, p["weight_hh"], p["bias_hh"])
    i, f, g, o = gates.chunk(4, dim=1)
    return torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g), torch.sigmoid(o)


def lstm_output(p, o, c):
    """``h_t = o_t * tanh(c_t)``, or ``W_hr (o_t * tanh(c_t))`` with proj_size."""
    h = o * torch.tanh(c)
    return h if p["weight_hr"] is None else F.linear(h, p["weight_hr"])


def gru_step(p, x, h):
    i_r, i_z, i_n = F.linear(x, p["weight_ih"], p["bias_ih"]).chunk(3, dim=1)
    h_r, h_z, h_n = F.linear(h, p["weight_hh"], p["bias_hh"]).chunk(3, dim=1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


def _step_fn(cell):
    """The one-step function ``h_t = step(p, x_t, h_{t-1})`` of an RNN or GRU (None for LSTM: two stages, so
    that ``c_t.grad`` is the total gradient -- see :func:`run_unrolled`)."""
    return {"rnn_tanh": lambda *a: rnn_step(*a, relu=False), "rnn_relu": lambda *a: rnn_step(*a, relu=True),
            "gru": gru_step}.get(cell)


def reverse_index(lengths: np.ndarray, T: int) -> torch.Tensor:
    """(T, B): the time read at processing step k of the reverse direction (len_b - 1 - k), k past the length."""
    t = np.arange(T)[:, None]
    return torch.from_numpy(np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t))


def run_unrolled(mod, model: RNNModel, prob, masks=None):
    """Step by step, per layer and direction, from ``mod``'s parameters; returns outputs, final states and every
    step's state tensor (processing order, ``retain_grad``) per layer trace k = layer * D + direction."""
    x, lengths = torch.tensor(prob["x"], requires_grad=True), prob["lengths"]
    T, B = x.shape[:2]
    D = model.num_directions
    lens = np.full(B, T) if lengths is None else lengths
    valid = torch.from_numpy(np.arange(T)[:, None] < lens[None, :])  # (T, B): step k is part of sequence b
    rev, cols = reverse_index(lens, T), torch.arange(B)
    step = _step_fn(model.cell)
    h0, c0 = _initial(model, prob["state0"], B)
    inp = x
    steps_h, steps_c, h_n, c_n = {}, {}, [], []
    for layer in range(model.num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            p = {n: getattr(mod, n + sfx, None) for n in PARAM_NAMES}
            seen = inp if d == 0 else inp[rev, cols]  # each sequence's valid part reversed
            h, c = h0[k], None if c0 is None else c0[k]
            hs, cs = [], []
            for t in range(T):
                keep = valid[t][:, None]  # a sequence past its length keeps its state (frozen)
                if c is None:
                    h_new = step(p, seen[t], h)
                else:  # h_t is computed from the c_t whose gradient is retained (the total dL/dc_t)
                    c_new, o = lstm_cell(p, seen[t], h, c)
                    c = torch.where(keep, c_new, c)
                    c.retain_grad()
                    cs.append(c)
                    h_new = lstm_output(p, o, c)
                h = torch.where(keep, h_new, h)
                h.retain_grad()
                hs.append(h)
            steps_h[k], steps_c[k] = hs, cs
            h_n.append(h)
            c_n.append(c)
            proc = torch.stack(hs)
            in_time = proc if d == 0 else proc[rev, cols]
            outs.append(torch.where(valid[:, :, None], in_time, torch.zeros_like(in_time)))
        inp = torch.cat(outs, dim=2)
        if masks is not None and layer < model.num_layers - 1:
            inp = inp * torch.from_numpy(masks[layer])
    c_n = None if c0 is None else torch.stack(c_n)
    return {"h": inp, "h_n": torch.stack(h_n), "c_n": c_n, "h0": h0, "c0": c0, "x": x,
            "steps_h": steps_h, "steps_c": steps_c, "valid": valid, "rev": rev}


def step_grads(ref, steps, k, d) -> tuple[np.ndarray, np.ndarray]:
    """The total dL/d(state) of every step of layer trace ``k`` (direction ``d``): (processing order, time order),
    zeros past each sequence's length."""
    proc = torch.stack([s.grad if s.grad is not None else torch.zeros_like(s) for s in steps[k]])
    proc = torch.where(ref["valid"][:, :, None], proc, torch.zeros_like(proc))
    in_time = proc if d == 0 else proc[ref["rev"], torch.arange(proc.shape[1])]
    return proc.numpy(), in_time.numpy()


# -- the whole comparison ----------------------------------------------------------------------------------------
def compare_all(check: Checker, mod, model: RNNModel, prob, *, masks=None, fused=None):
    """ours vs the fused module's autograd (``fused``: precomputed, e.g. by a hand-built reference) and vs the
    unrolled reference's per-step gradients. Returns our trace."""
    if fused is None:
        fused = run_fused(mod, model, prob)
    ref = run_unrolled(mod, model, prob, masks)
    # the unrolled reference IS the fused module
    for key in ("h", "h_n", "c_n"):
        if ref[key] is not None:
            check(f"unrolled {key} vs fused", ref[key], fused[key], TOL_REF)
    mod.zero_grad(set_to_none=True)
    _loss(prob, ref["h"], ref["h_n"], ref["c_n"]).backward()
    for name, p in mod.named_parameters():
        check(f"unrolled d/d{name} vs fused", p.grad, fused["params"][name], TOL_REF)
    check("unrolled grad_x vs fused", ref["x"].grad if ref["x"].grad is not None else torch.zeros_like(ref["x"]),
          fused["grad_x"], TOL_REF)
    mod.zero_grad(set_to_none=True)

    grad_state_n = (prob["g_hn"], prob["g_cn"]) if model.has_cell_state else prob["g_hn"]
    tr = rnndiag.bptt(model, prob["x"], prob["g_out"], prob["state0"], lengths=prob["lengths"],
                      dropout_masks=masks, grad_state_n=grad_state_n)
    ours = {"h": tr.h, "h_n": tr.h_n, "c_n": tr.c_n, "grad_x": tr.grad_x, "grad_h0": tr.grad_h0,
            "grad_c0": tr.grad_c0}
    for key, theirs in fused.items():
        if key != "params":
            check(key, ours[key], theirs)
    assert tr.param_grads.keys() == fused["params"].keys()
    for name, theirs in fused["params"].items():
        check(f"param_grads[{name}]", tr.param_grads[name], theirs)

    D = model.num_directions
    assert len(tr.layers) == model.num_layers * D
    for k, lt in enumerate(tr.layers):
        assert (lt.layer, lt.direction) == (k // D, k % D), f"layer trace {k} is {lt.name}"
        for what, steps, ours_g in (("grad_h", ref["steps_h"], lt.grad_h), ("grad_c", ref["steps_c"], lt.grad_c)):
            if not steps[k]:
                assert ours_g is None
                continue
            ref_proc, ref_time = step_grads(ref, steps, k, lt.direction)
            ours_time = lt.in_time_order(ours_g)
            check(f"{lt.name} {what} (processing order)", ours_g, ref_proc)
            check(f"{lt.name} {what} (time order)", ours_time, ref_time)
            # the diagnostic quantity: ||dL/dh_t|| per step (over the batch) and per (step, sequence)
            check(f"{lt.name} ||{what}|| per step", np.linalg.norm(ours_time.reshape(len(ours_time), -1), axis=1),
                  np.linalg.norm(ref_time.reshape(len(ref_time), -1), axis=1))
            check(f"{lt.name} ||{what}|| per (step, seq)", np.linalg.norm(ours_time, axis=-1),
                  np.linalg.norm(ref_time, axis=-1))
    return tr


# -- 1. the configurations ---------------------------------------------------------------------------------------
LENGTHS = [7, 3, 5, 1]  # max = T, min = 1, not sorted
CASES = {
    "gru_bidir_2layer": dict(cell="gru", I=3, H=5, L=2, bidirectional=True, T=6, B=3, state0=True),
    "lstm_proj_2layer": dict(cell="lstm", I=3, H=6, L=2, proj=3, T=6, B=3, state0=True),
    "lstm_proj_bidir_2layer": dict(cell="lstm", I=3, H=6, L=2, proj=3, bidirectional=True, T=5, B=3, state0=True),
    "lstm_bidir_packed": dict(cell="lstm", I=3, H=4, L=2, bidirectional=True, T=7, B=4, lengths=LENGTHS,
                              state0=True),
    "lstm_proj_bidir_packed": dict(cell="lstm", I=2, H=5, L=2, proj=2, bidirectional=True, T=7, B=4,
                                   lengths=LENGTHS),
    "gru_packed": dict(cell="gru", I=3, H=5, L=2, T=7, B=4, lengths=LENGTHS, state0=True),
    "gru_bidir_packed": dict(cell="gru", I=3, H=4, L=2, bidirectional=True, T=7, B=4, lengths=LENGTHS),
    "rnn_tanh_h0": dict(cell="rnn_tanh", I=3, H=5, L=2, T=8, B=3, state0=True),
    "rnn_tanh_bidir_packed_h0": dict(cell="rnn_tanh", I=3, H=4, L=2, bidirectional=True, T=7, B=4,
                                     lengths=LENGTHS, state0=True),
    "rnn_relu_h0": dict(cell="rnn_relu", I=3, H=5, L=2, T=8, B=3, state0=True),
    "rnn_relu_bidir_nobias_h0": dict(cell="rnn_relu", I=3, H=5, L=2, bidirectional=True, bias=False, T=6, B=3,
                                     state0=True),
    "lstm_dropout0.2_eval": dict(cell="lstm", I=3, H=5, L=2, dropout=0.2, T=6, B=3, state0=True),
}
MODULE_KEYS = ("bias", "bidirectional", "proj", "dropout")


@pytest.mark.parametrize("loss", ["outputs+states", "states_only"])
@pytest.mark.parametrize("case", list(CASES))
def test_config_matches_torch_per_step(case, loss):
    cfg = CASES[case]
    mod = make_module(cfg["cell"], cfg["I"], cfg["H"], cfg["L"], seed=len(case),
                      **{k: cfg[k] for k in MODULE_KEYS if k in cfg})
    mod.eval()  # dropout (when set) is off in eval mode: exact
    model = model_of(mod, cfg["cell"])
    prob = make_problem(model, cfg["T"], cfg["B"], np.random.default_rng(len(case)), lengths=cfg.get("lengths"),
                        state0=cfg.get("state0", False), loss=loss)
    check = Checker(f"{case} ({loss})")
    tr = compare_all(check, mod, model, prob)
    if prob["lengths"] is not None:  # outputs past a sequence's length are zero
        pad = np.arange(cfg["T"])[:, None] >= prob["lengths"][None, :]
        assert not tr.h[pad].any()
    check.report()


# -- half-precision weights --------------------------------------------------------------------------------------
HALF_CASES = {
    "gru_2layer": dict(cell="gru", I=3, H=5, L=2),
    "lstm_proj_bidir_2layer": dict(cell="lstm", I=3, H=6, L=2, proj=3, bidirectional=True),
}


@pytest.mark.parametrize("case", list(HALF_CASES))
@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_precision_weights(half, case):
    cfg = HALF_CASES[case]
    mod = make_module(cfg["cell"], cfg["I"], cfg["H"], cfg["L"], seed=7,
                      **{k: cfg[k] for k in MODULE_KEYS if k in cfg}).to(getattr(torch, half))
    sd = mod.state_dict()
    model32 = rnndiag.model_from_state_dict(sd)
    assert model32.dtype == np.float32
    assert (model32.cell, model32.num_layers, model32.bidirectional, model32.proj_size) == \
        (cfg["cell"], cfg["L"], cfg.get("bidirectional", False), cfg.get("proj", 0))
    for k, v in sd.items():  # float16/bfloat16 -> float32 is exact
        np.testing.assert_array_equal(model32.params[k], v.float().numpy(), err_msg=k)
    model = model32.astype("float64")
    mod64 = copy.deepcopy(mod).double()  # the same (rounded) weights, upcast exactly
    prob = make_problem(model, 6, 3, np.random.default_rng(3), state0=True)
    check = Checker(f"{half} {case}")
    compare_all(check, mod64, model, prob)
    check.report()
    if model32.source_dtype is None:
        pytest.xfail(f"model_from_state_dict does not yet record source_dtype (expected {half!r}; the loader is "
                     "being extended concurrently) -- the numeric comparison above passed")
    assert model32.source_dtype == half


# -- batch_first -------------------------------------------------------------------------------------------------
def test_batch_first_is_time_major_transposed():
    mod = make_module("lstm", 3, 5, 2, bidirectional=True, proj=2, dropout=0.5, seed=11)
    model = model_of(mod, "lstm")
    T, B = 7, 4
    rng = np.random.default_rng(11)
    prob = make_problem(model, T, B, rng, lengths=LENGTHS, state0=True)
    masks = (rng.binomial(1, 0.5, (T, B, 4)) / 0.5,)
    gsn = (prob["g_hn"], prob["g_cn"])
    tm = rnndiag.bptt(model, prob["x"], prob["g_out"], prob["state0"], lengths=prob["lengths"],
                      dropout_masks=masks, grad_state_n=gsn)
    bf = rnndiag.bptt(model, np.swapaxes(prob["x"], 0, 1), np.swapaxes(prob["g_out"], 0, 1), prob["state0"],
                      lengths=prob["lengths"], dropout_masks=(np.swapaxes(masks[0], 0, 1),), grad_state_n=gsn,
                      batch_first=True)
    check = Checker("batch_first")
    for key in ("h", "h_n", "c_n", "grad_x", "grad_h0", "grad_c0", "x"):
        check(key, getattr(bf, key), getattr(tm, key), 1e-13)  # the trace is time-major either way
    for name, g in tm.param_grads.items():
        check(f"param_grads[{name}]", bf.param_grads[name], g, 1e-13)
    for a, b in zip(bf.layers, tm.layers):
        check(f"{a.name} grad_h", a.grad_h, b.grad_h, 1e-13)
        check(f"{a.name} grad_c", a.grad_c, b.grad_c, 1e-13)
    # and both equal a batch_first torch module on the same weights (eval mode: no dropout there, so no masks)
    mod_bf = make_module("lstm", 3, 5, 2, bidirectional=True, proj=2, seed=11, batch_first=True)
    mod_bf.load_state_dict(mod.state_dict())
    theirs = run_fused(mod_bf, model, prob, batch_first=True)
    ours = rnndiag.bptt(model, np.swapaxes(prob["x"], 0, 1), np.swapaxes(prob["g_out"], 0, 1), prob["state0"],
                        lengths=prob["lengths"], grad_state_n=gsn, batch_first=True)
    for key in ("h", "h_n", "c_n", "grad_x", "grad_h0", "grad_c0"):
        check(f"torch batch_first {key}", getattr(ours, key), theirs[key])
    for name, g in theirs["params"].items():
        check(f"torch batch_first param_grads[{name}]", ours.param_grads[name], g)
    check.report()


# -- 2. dropout in train mode ------------------------------------------------------------------------------------
def _dropout_problem():
    T, B, I, H, p = 6, 4, 3, 5, 0.5
    mod = make_module("lstm", I, H, 2, dropout=p, seed=5)
    model = model_of(mod, "lstm")
    prob = make_problem(model, T, B, np.random.default_rng(5), state0=True)
    return mod, model, prob, p


def test_dropout_train_mode_with_explicit_mask_is_exact():
    """Two single-layer torch LSTMs sharing the 2-layer module's parameters, an explicit train-mode dropout mask
    between them: our bptt with that mask as ``dropout_masks`` is exact."""
    mod, model, prob, p = _dropout_problem()
    T, B, H = prob["x"].shape[0], prob["x"].shape[1], model.hidden_size
    gen = torch.Generator().manual_seed(123)
    mask = torch.bernoulli(torch.full((T, B, H), 1 - p, dtype=torch.float64), generator=gen) / (1 - p)
    assert 0 < (mask == 0).sum() < mask.numel()
    lower, upper = make_module("lstm", model.input_size, H, 1), make_module("lstm", H, H, 1)
    with torch.no_grad():
        for layer, single in enumerate((lower, upper)):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(single, f"{name}_l0").copy_(getattr(mod, f"{name}_l{layer}"))
    xt = torch.tensor(prob["x"], requires_grad=True)
    h0, c0 = _initial(model, prob["state0"], B)
    out0, (h_a, c_a) = lower(xt, (h0[0:1], c0[0:1]))
    out1, (h_b, c_b) = upper(out0 * mask, (h0[1:2], c0[1:2]))
    h_n, c_n = torch.cat([h_a, h_b]), torch.cat([c_a, c_b])
    _loss(prob, out1, h_n, c_n).backward()
    fused = {k: v.detach().numpy().copy() for k, v in
             {"h": out1, "h_n": h_n, "c_n": c_n, "grad_x": xt.grad, "grad_h0": h0.grad, "grad_c0": c0.grad}.items()}
    fused["params"] = {f"{name}_l{layer}": getattr(single, f"{name}_l0").grad.numpy().copy()
                       for layer, single in enumerate((lower, upper))
                       for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    check = Checker("lstm dropout=0.5 train, explicit mask")
    # the unrolled reference with the same mask agrees with the hand-built one; per-step grads, param grads
    compare_all(check, mod, model, prob, masks=(mask.numpy(),), fused=fused)
    check.report()


def test_dropout_train_mode_without_mask_is_not_exact():
    """A measurement: our eval-mode replay (no masks) vs the fused module's train-mode autograd. Not exact, and
    this must show (the difference is far above rounding)."""
    mod, model, prob, p = _dropout_problem()
    mod.train()
    torch.manual_seed(2024)  # the draw of the fused module's dropout mask
    theirs = run_fused(mod, model, prob)
    gsn = (prob["g_hn"], prob["g_cn"])
    ours = rnndiag.bptt(model, prob["x"], prob["g_out"], prob["state0"], grad_state_n=gsn).param_grads
    keys = list(theirs["params"])
    g_ours = np.concatenate([ours[k].ravel() for k in keys])
    g_theirs = np.concatenate([theirs["params"][k].ravel() for k in keys])
    global_norm = abs(np.linalg.norm(g_ours) - np.linalg.norm(g_theirs)) / np.linalg.norm(g_theirs)
    global_vec = np.linalg.norm(g_ours - g_theirs) / np.linalg.norm(g_theirs)
    w_o, w_t = ours["weight_hh_l0"], theirs["params"]["weight_hh_l0"]
    whh_norm = abs(np.linalg.norm(w_o) - np.linalg.norm(w_t)) / np.linalg.norm(w_t)
    whh_vec = np.linalg.norm(w_o - w_t) / np.linalg.norm(w_t)
    print(f"[dropout=0.5 train vs eval replay] global grad norm: rel. diff of norms {global_norm:.4f}, "
          f"||g_ours - g_torch|| / ||g_torch|| {global_vec:.4f}; weight_hh_l0: rel. diff of norms {whh_norm:.4f}, "
          f"||diff|| / ||grad|| {whh_vec:.4f}")
    assert global_vec > 1e-3
    assert whh_vec > 1e-3


# -- 3. errors ---------------------------------------------------------------------------------------------------
def test_lengths_longer_than_T_rejected():
    model = model_of(make_module("gru", 3, 4, 1, bidirectional=True), "gru")
    x = np.zeros((5, 3, 3))
    with pytest.raises(ValueError, match=r"lengths\[1\] = 6 is outside 1\.\.5"):
        rnndiag.bptt(model, x, None, lengths=[5, 6, 2])
    with pytest.raises(ValueError, match=r"outside 1\.\.5"):
        rnndiag.forward(model, x, lengths=[0, 2, 2])


@pytest.mark.parametrize(("cell", "proj", "bad_shape", "expected"), [
    ("gru", 0, (2, 3, 4), r"state0 must have shape \(4, 3, 4\)"),
    ("lstm", 2, (4, 3, 4), r"state0 h0 must have shape \(4, 3, 2\)"),  # h0 is (L*D, B, P), not H
])
def test_bidirectional_state0_shape_rejected(cell, proj, bad_shape, expected):
    model = model_of(make_module(cell, 3, 4, 2, bidirectional=True, proj=proj), cell)
    x = np.zeros((5, 3, 3))
    h0 = np.zeros(bad_shape)
    state0 = (h0, np.zeros((4, 3, 4))) if cell == "lstm" else h0
    with pytest.raises(ValueError, match=expected):
        rnndiag.bptt(model, x, None, state0)
