"""Agreement with PyTorch's nn.RNN / nn.LSTM / nn.GRU (and the *Cell modules for per-step gradients)."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import CELLS, assert_close, random_state0
from hypothesis import given, settings
from hypothesis import strategies as st

import rnndiag

torch = pytest.importorskip("torch", reason="torch is not installed: the PyTorch reference tests need it")

pytestmark = pytest.mark.torch

ATOL64 = 1e-10


def _torch_module(model, dtype=torch.float64):
    kw = {"num_layers": model.num_layers, "bias": model.bias}
    if model.cell.startswith("rnn"):
        mod = torch.nn.RNN(model.input_size, model.hidden_size, nonlinearity=model.nonlinearity, **kw)
    else:
        cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[model.cell]
        mod = cls(model.input_size, model.hidden_size, **kw)
    mod = mod.to(dtype)
    mod.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.params.items()}, strict=True)
    return mod


def _torch_run(model, x, g, state0, dtype=torch.float64):
    """Torch's outputs and gradients of ``L = sum(g * out)``, as numpy arrays."""
    mod = _torch_module(model, dtype)
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    L, B, H = model.num_layers, x.shape[1], model.hidden_size
    if state0 is None:  # what rnndiag means by no initial state
        zeros = np.zeros((L, B, H))
        state0 = (zeros, zeros) if model.cell == "lstm" else zeros
    if model.cell == "lstm":
        h0 = torch.tensor(state0[0], dtype=dtype, requires_grad=True)
        c0 = torch.tensor(state0[1], dtype=dtype, requires_grad=True)
        out, (h_n, c_n) = mod(xt, (h0, c0))
    else:
        h0 = torch.tensor(state0, dtype=dtype, requires_grad=True)
        c0 = c_n = None
        out, h_n = mod(xt, h0)
    (out * torch.tensor(g, dtype=dtype)).sum().backward()
    res = {
        "h": out, "h_n": h_n, "c_n": c_n, "grad_x": xt.grad, "grad_h0": h0.grad,
        "grad_c0": c0.grad if c0 is not None else None,
        **{f"param_grads[{k}]": p.grad for k, p in mod.named_parameters()},
    }
    return {k: v.detach().numpy() for k, v in res.items() if v is not None}


def _ours(tr):
    res = {"h": tr.h, "h_n": tr.h_n, "c_n": tr.c_n, "grad_x": tr.grad_x, "grad_h0": tr.grad_h0,
           "grad_c0": tr.grad_c0, **{f"param_grads[{k}]": v for k, v in tr.param_grads.items()}}
    return {k: v for k, v in res.items() if v is not None}


def _compare(model, x, g, state0, atol=ATOL64, dtype=torch.float64):
    tr = rnndiag.bptt(model, x, g, state0)
    ours, theirs = _ours(tr), _torch_run(model, x, g, state0, dtype)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert_close(f"{model.describe()} {key}", ours[key], theirs[key], atol, relative=False)
    return tr


def _problem(cell, I, H, L, T, B, bias, seed, with_state=True):
    rng = np.random.default_rng(seed)
    model = rnndiag.init_model(cell, I, H, num_layers=L, bias=bias, seed=rng)
    x = rng.standard_normal((T, B, I))
    g = rng.standard_normal((T, B, H))
    state0 = random_state0(cell, L, B, H, rng) if with_state else None
    return model, x, g, state0


# --------------------------------------------------------------------------------------------------
CASES = [  # (I, H, num_layers, T, B, bias, with_state)
    (3, 5, 1, 7, 3, True, True),
    (4, 3, 2, 6, 2, True, True),
    (2, 4, 3, 5, 2, False, True),
    (3, 4, 2, 1, 1, True, True),  # T=1, B=1
    (1, 1, 1, 4, 2, False, False),  # H=1, zero initial state
    (5, 6, 3, 8, 3, True, False),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "I{}-H{}-L{}-T{}-B{}-{}-{}".format(
    *c[:5], "bias" if c[5] else "nobias", "state0" if c[6] else "zero0"))
@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch_float64(cell, case, seed):
    """Outputs, h_n/c_n, every param grad, grad_x, grad_h0/grad_c0 agree with torch to 1e-10 (max abs)."""
    I, H, L, T, B, bias, with_state = case
    _compare(*_problem(cell, I, H, L, T, B, bias, seed, with_state))


@settings(max_examples=30, deadline=None, database=None)
@given(
    cell=st.sampled_from(CELLS),
    I=st.integers(1, 4), H=st.integers(1, 5), L=st.integers(1, 3),
    T=st.integers(1, 6), B=st.integers(1, 3),
    bias=st.booleans(), with_state=st.booleans(),
    init=st.sampled_from(rnndiag.SCHEMES),
    seed=st.integers(0, 2**32 - 1),
)
def test_matches_torch_random_architectures(cell, I, H, L, T, B, bias, with_state, init, seed):
    """Property: for any small architecture and any init scheme, ours == torch in float64."""
    rng = np.random.default_rng(seed)
    model = rnndiag.init_model(cell, I, H, num_layers=L, bias=bias, init=init, seed=rng)
    x = rng.standard_normal((T, B, I))
    g = rng.standard_normal((T, B, H))
    state0 = random_state0(cell, L, B, H, rng) if with_state else None
    _compare(model, x, g, state0)


# -- per-step total gradients dL/dh_t (dL/dc_t) ----------------------------------------------------
def _torch_cells(model):
    H = model.hidden_size
    cells = []
    for layer in range(model.num_layers):
        in_size = model.input_size if layer == 0 else H
        if model.cell.startswith("rnn"):
            c = torch.nn.RNNCell(in_size, H, bias=model.bias, nonlinearity=model.nonlinearity)
        else:
            c = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[model.cell](in_size, H, bias=model.bias)
        c = c.double()
        sd = {k[: -len(f"_l{layer}")]: torch.from_numpy(v.copy())
              for k, v in model.params.items() if k.endswith(f"_l{layer}")}
        c.load_state_dict(sd, strict=True)  # weight_ih, weight_hh, bias_ih, bias_hh
        cells.append(c)
    return cells


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_per_step_total_gradients_match_torch_cells(cell, num_layers):
    """trace.layers[k].grad_h[t] (grad_c[t]) == h_t.grad (c_t.grad) of an explicit loop of torch *Cells."""
    T, B, I, H = 6, 3, 3, 4
    model, x, g, state0 = _problem(cell, I, H, num_layers, T, B, True, seed=7)
    tr = rnndiag.bptt(model, x, g, state0)

    cells = _torch_cells(model)
    if cell == "lstm":
        state = [(torch.tensor(state0[0][k]), torch.tensor(state0[1][k])) for k in range(num_layers)]
    else:
        state = [torch.tensor(state0[k]) for k in range(num_layers)]
    hs = [[] for _ in range(num_layers)]
    cs = [[] for _ in range(num_layers)]
    loss = torch.zeros((), dtype=torch.float64)
    for t in range(T):
        inp = torch.tensor(x[t])
        for k, c in enumerate(cells):
            if cell == "lstm":
                h, cc = c(inp, state[k])
                cc.retain_grad()
                cs[k].append(cc)
                state[k] = (h, cc)
            else:
                h = c(inp, state[k])
                state[k] = h
            h.retain_grad()
            hs[k].append(h)
            inp = h
        loss = loss + (torch.tensor(g[t]) * inp).sum()
    loss.backward()

    for k in range(num_layers):
        lt = tr.layers[k]
        theirs_h = np.stack([h.grad.numpy() for h in hs[k]])
        assert_close(f"{cell} layer {k} grad_h", lt.grad_h, theirs_h, ATOL64, relative=False)
        assert_close(f"{cell} layer {k} h", lt.h, np.stack([h.detach().numpy() for h in hs[k]]), ATOL64,
                     relative=False)
        if cell == "lstm":
            theirs_c = np.stack([c.grad.numpy() for c in cs[k]])
            assert_close(f"lstm layer {k} grad_c", lt.grad_c, theirs_c, ATOL64, relative=False)
        else:
            assert lt.grad_c is None
    np.testing.assert_array_equal(tr.grad_h, tr.layers[-1].grad_h)


# -- float32 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_float32_stays_float32_and_matches_torch(cell):
    """A float32 model computes in float32 end to end and agrees with torch float32 to ~1e-5."""
    model64, x, g, state0 = _problem(cell, 3, 5, 2, 8, 3, True, seed=4)
    model = model64.astype(np.float32)
    assert model.dtype == np.float32
    tr = rnndiag.bptt(model, x, g, state0)  # float64 inputs are cast to the model's dtype

    f32 = np.dtype(np.float32)
    arrays = {"x": tr.x, "h": tr.h, "grad_h": tr.grad_h, "grad_x": tr.grad_x, "grad_h0": tr.grad_h0,
              "h_n": tr.h_n, "J": tr.step_jacobian(3), "jvp": tr.jvp(3, np.ones((3, model.state_size))),
              "vjp": tr.vjp(3, np.ones((3, model.state_size))), **tr.param_grads}
    if cell == "lstm":
        arrays |= {"c": tr.c, "grad_c": tr.grad_c, "grad_c0": tr.grad_c0}
    for lt in tr.layers:
        arrays |= {f"layers[{lt.layer}].{k}": v for k, v in lt.arrays.items()}
    wrong = {k: v.dtype for k, v in arrays.items() if v.dtype != f32}
    assert not wrong, f"not float32: {wrong}"

    ours = _ours(tr)
    theirs = _torch_run(model, x.astype(np.float32), g.astype(np.float32),
                        tuple(s.astype(np.float32) for s in state0) if cell == "lstm"
                        else state0.astype(np.float32), dtype=torch.float32)
    for key in theirs:
        assert_close(f"float32 {cell} {key}", ours[key], theirs[key], 1e-5)
    # and float32 is close to the float64 truth
    ref = _ours(rnndiag.bptt(model64, x, g, state0))
    for key in ref:
        assert_close(f"float32 vs float64 {cell} {key}", ours[key], ref[key], 1e-5)
