"""The engine and the analysis on every nn.RNN/LSTM/GRU configuration: projections, both directions, per-sequence
lengths, batch_first and dropout masks, each against an exact answer or an independent computation (float64).

* an LSTM with ``proj_size``: every step Jacobian equals central differences of a cell step written here in numpy
  (``h = W_hr (o tanh c)``), and its implicit products (jvp, vjp, rmatmul, matmul) equal the dense matrix; the
  recurrent spectrum is that of ``W_hr W_hg``;
* a bidirectional layer is two one-way layers: the reverse direction on ``x`` is a one-way model with the reverse
  weights on ``x[::-1]``;
* a padded batch: each sequence's flow is that of the sequence alone, truncated to its length, end-aligned;
* ``W_hh = a Q`` at h = 0 in both directions: product norms ``a^k`` and Lyapunov exponents ``ln a``;
* ``batch_first`` changes nothing; an all-ones dropout mask changes nothing, and a real one is the layer above run
  on the masked output of the layer below.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from _helpers import assert_close, sub_model

import rnndiag
from rnndiag.analysis import analyze
from rnndiag.analysis.spectral import weight_spectra
from rnndiag.init import orthogonal
from rnndiag.model import DIRECTION_SUFFIXES, RNNModel, param_shapes

TOL = 1e-10
TOL_OPS = 1e-12  # implicit products vs the dense Jacobian
TOL_FD = 1e-7  # the dense Jacobian vs central differences


# -- builders ------------------------------------------------------------------------------------------------
def random_model(cell: str, input_size: int, hidden: int, num_layers: int = 1, *, bidirectional: bool = False,
                 proj_size: int = 0, seed: int = 0, gain: float = 1.0) -> RNNModel:
    """A float64 model with every parameter uniform in ``gain * [-1/sqrt(H), 1/sqrt(H)]`` (PyTorch's scale)."""
    rng = np.random.default_rng(seed)
    bound = gain / math.sqrt(hidden)
    params = {name: rng.uniform(-bound, bound, shape)
              for name, shape in param_shapes(cell, input_size, hidden, num_layers, True, bidirectional,
                                              proj_size).items()}
    return RNNModel(cell, input_size, hidden, num_layers, True, params, bidirectional=bidirectional,
                    proj_size=proj_size)


def one_direction(model: RNNModel, direction: int) -> RNNModel:
    """Layer 0's ``direction`` of a model as a one-layer, one-way model (the reverse weights renamed forward)."""
    sfx = f"_l0{DIRECTION_SUFFIXES[direction]}"
    params = {name.replace(sfx, "_l0"): value.copy() for name, value in model.params.items() if name.endswith(sfx)}
    return RNNModel(model.cell, model.input_size, model.hidden_size, 1, model.bias, params,
                    proj_size=model.proj_size)


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def reference_step(cell: str, weights: dict, x_t: np.ndarray, s: np.ndarray) -> np.ndarray:
    """One cell step ``s_{t-1} -> s_t`` (B, S), written from the equations: LSTM ``s = [h (P); c (H)]`` with
    ``h = W_hr (o tanh c)`` (or ``o tanh c`` without a projection), GRU and tanh RNN ``s = h``."""
    w_ih, w_hh, b_ih, b_hh = weights["weight_ih"], weights["weight_hh"], weights["bias_ih"], weights["bias_hh"]
    H = weights["hidden"]
    P = w_hh.shape[1]
    h = s[:, :P]
    a_x = x_t @ w_ih.T + b_ih  # (B, G*H)
    a_h = h @ w_hh.T + b_hh
    if cell == "lstm":
        c = s[:, P:]
        a = a_x + a_h
        i, f, g, o = (sigmoid(a[:, :H]), sigmoid(a[:, H : 2 * H]), np.tanh(a[:, 2 * H : 3 * H]),
                      sigmoid(a[:, 3 * H :]))
        c_new = f * c + i * g
        m = o * np.tanh(c_new)
        h_new = m @ weights["weight_hr"].T if "weight_hr" in weights else m
        return np.concatenate([h_new, c_new], axis=1)
    if cell == "gru":
        r = sigmoid(a_x[:, :H] + a_h[:, :H])
        z = sigmoid(a_x[:, H : 2 * H] + a_h[:, H : 2 * H])
        n = np.tanh(a_x[:, 2 * H :] + r * a_h[:, 2 * H :])
        return (1.0 - z) * n + z * h
    assert cell == "rnn_tanh"
    return np.tanh(a_x + a_h)


def direction_weights(model: RNNModel, layer: int, direction: int) -> dict:
    """The parameters of one layer and direction, read by their PyTorch names."""
    sfx = f"_l{layer}{DIRECTION_SUFFIXES[direction]}"
    out = {"hidden": model.hidden_size}
    for base in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"):
        if base + sfx in model.params:
            out[base] = model.params[base + sfx]
    return out


def reference_run(model: RNNModel, x: np.ndarray) -> dict:
    """Every (layer, direction)'s inputs and states in its processing order, by :func:`reference_step` from zero
    initial states: ``{(layer, d): (inputs (T, B, I_layer), states (T + 1, B, S))}``, states[0] the initial one."""
    T, B, _ = x.shape
    out = {}
    layer_input = x
    for layer in range(model.num_layers):
        outputs = []
        for d in range(model.num_directions):
            weights = direction_weights(model, layer, d)
            seen = layer_input if d == 0 else layer_input[::-1]
            states = np.zeros((T + 1, B, model.state_size))
            for t in range(T):
                states[t + 1] = reference_step(model.cell, weights, seen[t], states[t])
            out[(layer, d)] = (seen, states)
            h = states[1:, :, : model.output_size]
            outputs.append(h if d == 0 else h[::-1])  # time order
        layer_input = np.concatenate(outputs, axis=2)
    return out


def fd_step_jacobian(cell: str, weights: dict, x_t: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``d s_t / d s_{t-1}`` (B, S, S) of :func:`reference_step` by central differences, all rows at once."""
    B, S = s.shape
    jac = np.empty((B, S, S))
    eps = 1e-6
    for j in range(S):
        plus, minus = s.copy(), s.copy()
        plus[:, j] += eps
        minus[:, j] -= eps
        step_plus, step_minus = reference_step(cell, weights, x_t, plus), reference_step(cell, weights, x_t, minus)
        jac[:, :, j] = (step_plus - step_minus) / (2 * eps)
    return jac


def check_implicit_products(jac, dense: np.ndarray, rng: np.random.Generator) -> None:
    """``jvp``, ``vjp``, ``rmatmul`` and ``matmul`` of a block of implicit Jacobians against their dense form, with
    one vector per Jacobian and with extra (broadcast) axes of vectors; also with the dense part formed."""
    lead, S = jac.shape, jac.state_size
    assert dense.shape == (*lead, S, S)
    v = rng.standard_normal((*lead, S))
    assert_close("jvp", jac.jvp(v), np.einsum("...ij,...j->...i", dense, v), TOL_OPS)
    assert_close("vjp", jac.vjp(v), np.einsum("...i,...ij->...j", v, dense), TOL_OPS)
    vs = rng.standard_normal((*lead, 3, S))  # three vectors per Jacobian, on an extra axis
    assert_close("jvp, extra axis", jac.jvp(vs), np.einsum("...ij,...kj->...ki", dense, vs), TOL_OPS)
    assert_close("vjp, extra axis", jac.vjp(vs), np.einsum("...ki,...ij->...kj", vs, dense), TOL_OPS)
    vs2 = rng.standard_normal((*lead, 2, 3, S))  # two extra axes
    assert_close("jvp, two extra axes", jac.jvp(vs2), np.einsum("...ij,...abj->...abi", dense, vs2), TOL_OPS)
    assert_close("vjp, two extra axes", jac.vjp(vs2), np.einsum("...abi,...ij->...abj", vs2, dense), TOL_OPS)
    rows_block = rng.standard_normal((*lead, 4, S))
    cols_block = rng.standard_normal((*lead, S, 5))
    for label, j in (("implicit", jac), ("formed", jac.with_formed())):
        assert_close(f"rmatmul ({label})", j.rmatmul(rows_block), rows_block @ dense, TOL_OPS)
        assert_close(f"matmul ({label})", j.matmul(cols_block), dense @ cols_block, TOL_OPS)
        out = np.empty_like(rows_block)
        j.rmatmul(rows_block, out=out)
        assert_close(f"rmatmul into out ({label})", out, rows_block @ dense, TOL_OPS)
    # one step of a multi-step block is the block for that step alone
    if len(lead) == 2:
        np.testing.assert_array_equal(jac[1].dense(), dense[1])


def haar(n: int, seed: int) -> np.ndarray:
    return orthogonal(np.random.default_rng(seed), n, n)


def assert_same_dict(a, b, path: str = "", tol: float = 1e-12) -> None:
    """Two ``to_dict()`` results equal: the same keys, strings and integers, numbers within ``tol`` (relative)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            assert_same_dict(a[k], b[k], f"{path}.{k}", tol)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: {a} vs {b}"
        for k, (u, v) in enumerate(zip(a, b)):
            assert_same_dict(u, v, f"{path}[{k}]", tol)
    elif isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= tol * max(1.0, abs(b)), f"{path}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


# -- 1. step Jacobians: a projected LSTM, a bidirectional GRU ------------------------------------------------
JACOBIAN_CASES = {
    "lstm-proj": dict(cell="lstm", hidden=5, proj_size=3, bidirectional=False, num_layers=1),
    "lstm-proj-bidirectional-2-layers": dict(cell="lstm", hidden=5, proj_size=3, bidirectional=True, num_layers=2),
    "gru-bidirectional": dict(cell="gru", hidden=4, proj_size=0, bidirectional=True, num_layers=1),
}


@pytest.mark.parametrize("case", list(JACOBIAN_CASES))
def test_step_jacobians_against_finite_differences_and_dense(case):
    """Every layer trace's states equal the numpy reference's; at several steps ``dense()`` equals central
    differences of one reference step, and the implicit products equal ``dense()``."""
    cfg = JACOBIAN_CASES[case]
    I, T, B = 3, 7, 2
    model = random_model(cfg["cell"], I, cfg["hidden"], cfg["num_layers"], bidirectional=cfg["bidirectional"],
                         proj_size=cfg["proj_size"], seed=11, gain=1.5)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((T, B, I))
    trace = rnndiag.forward(model, x)
    reference = reference_run(model, x)
    D = model.num_directions
    assert [(lt.layer, lt.direction) for lt in trace.layers] == [(k, d) for k in range(model.num_layers)
                                                                  for d in range(D)]
    steps = np.array([0, 2, 3, T - 1])
    for lt in trace.layers:
        seen, states = reference[(lt.layer, lt.direction)]
        weights = direction_weights(model, lt.layer, lt.direction)
        where = f"{case} layer {lt.layer} direction {lt.direction}"
        assert lt.state_size == model.state_size == (cfg["proj_size"] or cfg["hidden"]) + \
            (cfg["hidden"] if cfg["cell"] == "lstm" else 0)
        for t in range(T):  # the trace's arrays are in processing order
            assert_close(f"{where}: state {t}", lt.state(t), states[t + 1], 1e-12)
        block = lt.jacobians(steps, np.arange(B))
        assert block.shape == (len(steps), B)
        dense = block.dense()
        for a, t in enumerate(steps):
            fd = fd_step_jacobian(model.cell, weights, seen[t], states[t])
            assert_close(f"{where}: J_{t} vs central differences", dense[a], fd, TOL_FD)
            single = lt.jacobians(int(t), [1])
            np.testing.assert_array_equal(single.dense()[0], dense[a, 1], err_msg=f"{where}: J_{t} one step")
            np.testing.assert_array_equal(lt.step_jacobian(int(t)), dense[a], err_msg=f"{where}: step_jacobian")
        check_implicit_products(block, dense, rng)
        check_implicit_products(lt.jacobians(3, [0, 1]), dense[2], rng)


def test_projected_lstm_jacobian_has_the_projection_in_its_h_rows():
    """With ``h = W_hr m``: ``dh_t/ds_{t-1} = W_hr dm_t/ds_{t-1}``, so the h rows lie in the column space of
    ``W_hr`` and ``dh_t/dc_{t-1} = W_hr diag(o (1 - tanh^2 c_t) f)``."""
    H, P, T = 5, 3, 4
    model = random_model("lstm", 2, H, proj_size=P, seed=3, gain=1.5)
    lt = rnndiag.forward(model, np.random.default_rng(4).standard_normal((T, 1, 2))).layers[0]
    w_hr = model.params["weight_hr_l0"]
    gates = lt.arrays["gates"][2, 0]
    f, o = gates[H : 2 * H], gates[3 * H :]
    k_c = o * (1.0 - np.tanh(lt.c[2, 0]) ** 2)
    J = lt.step_jacobian(2)[0]
    assert J.shape == (P + H, P + H)
    assert_close("dh/dc_{t-1}", J[:P, P:], w_hr @ np.diag(k_c * f), 1e-14)
    assert_close("dc/dc_{t-1}", J[P:, P:], np.diag(f), 1e-15)


# -- 2. spectra with a projection -----------------------------------------------------------------------------
def _same_eigenvalues(name: str, ours: np.ndarray, theirs: np.ndarray, tol: float) -> None:
    """The same multiset of complex eigenvalues (each matched to its nearest, both ways)."""
    assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
    gap = np.abs(ours[:, None] - theirs[None, :])
    assert gap.min(axis=1).max() < tol and gap.min(axis=0).max() < tol, f"{name}: {ours} vs {theirs}"


def test_projected_lstm_spectra_are_of_w_hr_times_the_gate_block():
    H, P = 6, 3
    model = random_model("lstm", 2, H, num_layers=2, bidirectional=True, proj_size=P, seed=5, gain=2.0)
    spectra = weight_spectra(model)
    d = analyze(model, np.random.default_rng(6).standard_normal((8, 2, 2)), batch_sample="all")
    out = d.to_dict()
    assert out["proj_size"] == P and out["bidirectional"] is True and out["num_directions"] == 2
    assert len(spectra) == 4
    for k, ws in enumerate(spectra):
        layer, direction = divmod(k, 2)
        assert (ws.layer, ws.direction, ws.proj_size) == (layer, direction, P)
        sfx = f"_l{layer}{DIRECTION_SUFFIXES[direction]}"
        w_hh, w_hr = model.params["weight_hh" + sfx], model.params["weight_hr" + sfx]
        for g, gate in enumerate("ifgo"):
            w_gate = w_hh[g * H : (g + 1) * H]  # (H, P)
            product = w_hr @ w_gate  # (P, P)
            ms = ws.blocks[gate]
            assert "W_hr" in ms.name and ms.name == f"W_hr W_h{gate}"
            eig = np.linalg.eigvals(product)
            sv = np.linalg.svd(product, compute_uv=False)
            assert ms.spectral_radius == pytest.approx(np.abs(eig).max(), rel=TOL, abs=0)
            assert ms.sigma_max == pytest.approx(sv[0], rel=TOL, abs=0)
            assert_close(f"{ws.layer}/{ws.direction} {gate}: singular values", ms.singular_values, sv, TOL)
            _same_eigenvalues(f"{gate}: eigenvalues", ms.eigenvalues, eig, TOL)
            # W_hr W_hg and W_hg W_hr (H x H) share their nonzero eigenvalues; the other H - P are zero
            big = np.linalg.eigvals(w_gate @ w_hr)
            order = np.argsort(np.abs(big))
            assert np.abs(big[order[: H - P]]).max() < 1e-12
            _same_eigenvalues(f"{gate}: nonzero eigenvalues of W_hg W_hr", big[order[H - P :]], eig, 1e-10)
        assert ws.recurrent is ws.blocks["g"]
        assert ws.spectral_radius == ws.recurrent.spectral_radius and ws.sigma_max == ws.recurrent.sigma_max
        ld = d.layers[k]
        assert (ld.layer, ld.direction) == (layer, direction)
        assert ld.spectrum.recurrent.name == "W_hr W_hg"
        assert ld.spectrum.sigma_max == pytest.approx(ws.sigma_max, rel=1e-15)
        layer_dict = out["layers"][k]
        assert layer_dict["spectrum"]["matrix"] == "W_hr W_hg"
        assert layer_dict["spectrum"]["proj_size"] == P
        assert layer_dict["direction"] == ("reverse" if direction else "forward")
        assert layer_dict["name"] == f"layer {layer}" + (" reverse" if direction else "")
    assert any("proj_size 3" in note for note in out["notes"])


# -- 3. a bidirectional layer is two one-way layers ------------------------------------------------------------
BIDIRECTIONAL_CASES = {
    "gru": dict(cell="gru", hidden=5, proj_size=0),
    "lstm-proj": dict(cell="lstm", hidden=5, proj_size=3),
    "rnn_tanh": dict(cell="rnn_tanh", hidden=6, proj_size=0),
}


@pytest.mark.parametrize("case", list(BIDIRECTIONAL_CASES))
def test_bidirectional_equals_two_one_way_models(case):
    """Layer 0 of a 2-layer bidirectional model: its forward direction is the forward weights' one-way model on
    ``x``, its reverse direction the reverse weights' one-way model on ``x[::-1]`` (probe-independent quantities:
    Jacobian-product and step norms, Lyapunov exponents; the product norms are the exact SVD at these sizes)."""
    cfg = BIDIRECTIONAL_CASES[case]
    I, T, B = 3, 16, 3
    model = random_model(cfg["cell"], I, cfg["hidden"], 2, bidirectional=True, proj_size=cfg["proj_size"], seed=21,
                         gain=2.0)
    x = np.random.default_rng(22).standard_normal((T, B, I))
    both = analyze(model, x, batch_sample="all")
    assert [ld.name for ld in both.layers] == ["layer 0", "layer 0 reverse", "layer 1", "layer 1 reverse"]
    for direction, x_seen in ((0, x), (1, x[::-1])):
        alone = analyze(one_direction(model, direction), np.ascontiguousarray(x_seen), batch_sample="all")
        ours, theirs = both.layers[direction], alone.layers[0]
        where = f"{case} direction {direction}"
        assert ours.direction == direction and theirs.direction == 0
        assert ours.flow.jacobian_batch == theirs.flow.jacobian_batch == tuple(range(B))
        assert_close(f"{where}: log10 product norm", ours.flow.log10_jacobian_product_norm,
                     theirs.flow.log10_jacobian_product_norm, TOL)
        assert_close(f"{where}: log10 step norm", ours.flow.log10_step_jacobian_norm,
                     theirs.flow.log10_step_jacobian_norm, TOL)
        assert_close(f"{where}: Lyapunov exponents", ours.lyapunov.exponents, theirs.lyapunov.exponents, TOL)
        assert_close(f"{where}: Lyapunov per sequence", ours.lyapunov.per_sequence, theirs.lyapunov.per_sequence,
                     TOL)
        assert ours.lyapunov.steps == theirs.lyapunov.steps
        assert ours.spectrum.spectral_radius == pytest.approx(theirs.spectrum.spectral_radius, rel=1e-14)
    # the probe's last step is each direction's own last: the flow curves start at log10 1 = 0
    for ld in both.layers:
        assert np.all(np.abs(ld.flow.log10_last_step[-1]) < 1e-12), ld.name


# -- 4. sequences of their own lengths -------------------------------------------------------------------------
LENGTHS = [20, 9, 14, 20]


@pytest.mark.parametrize(("cell", "bidirectional", "T", "gain"),
                         [("lstm", False, 20, 1.5), ("rnn_tanh", False, 23, 1.0), ("gru", True, 20, 0.5)],
                         ids=["lstm", "rnn_tanh-padded-past-the-longest", "gru-bidirectional"])
def test_each_sequence_of_a_padded_batch_is_measured_alone(cell, bidirectional, T, gain):
    """With ``lengths``, each sequence's flow (given the same unit gradient at its own last step) equals the
    analysis of that sequence alone, truncated to its length; the per-step arrays are end-aligned over
    max(lengths) rows with NaN before a sequence's first step; products and exponents use the longest
    sequences."""
    I, H, B = 2, 4, len(LENGTHS)
    lengths = np.array(LENGTHS)
    T_eff = int(lengths.max())
    model = random_model(cell, I, H, bidirectional=bidirectional, seed=31, gain=gain)  # horizons within lengths
    D = model.num_directions
    rng = np.random.default_rng(32)
    x = rng.standard_normal((T, B, I))
    u = rng.standard_normal((B, D, H))
    u /= np.linalg.norm(u, axis=2, keepdims=True)  # one unit vector per sequence and direction
    grad_h = np.zeros((T, B, D * H))
    for b, n in enumerate(lengths):
        grad_h[n - 1, b, :H] = u[b, 0]  # the forward direction's last step
        if D == 2:
            grad_h[0, b, H:] = u[b, 1]  # the reverse direction's last step is time 0
    kwargs = dict(loss="last", batch_sample="all", lyapunov_warmup=2)
    ragged = analyze(model, x, grad_h=grad_h, lengths=lengths, **kwargs)
    out = ragged.to_dict()
    assert out["sequence_lengths"] == LENGTHS
    json.dumps(out, allow_nan=False)
    longest = tuple(int(b) for b in np.nonzero(lengths == T_eff)[0])
    assert any("sequences of 9 to 20 steps" in note for note in out["notes"])
    for b, n in enumerate(lengths):
        alone = analyze(model, np.ascontiguousarray(x[:n, b : b + 1]),
                        grad_h=np.ascontiguousarray(grad_h[:n, b : b + 1]), **kwargs)
        for ours, theirs in zip(ragged.layers, alone.layers):
            where = f"{cell} sequence {b} (length {n}) {ours.name}"
            grad_norm, log_last = ours.flow.grad_norm_per_sequence, ours.flow.log10_last_step
            assert grad_norm.shape == log_last.shape == (T_eff, B)
            # NaN exactly before the sequence's first step
            assert np.array_equal(np.isnan(grad_norm[:, b]), np.arange(T_eff) < T_eff - n), where
            assert np.array_equal(np.isnan(log_last[:, b]), np.arange(T_eff) < T_eff - n), where
            assert_close(f"{where}: grad norm", grad_norm[T_eff - n :, b], theirs.flow.grad_norm_per_sequence[:, 0],
                         TOL)
            assert_close(f"{where}: last-step curve", log_last[T_eff - n :, b], theirs.flow.log10_last_step[:, 0],
                         TOL, relative=False)
            assert ours.flow.horizon_per_sequence[b] == theirs.flow.horizon_per_sequence[0], where
            assert ours.flow.lengths is not None and list(ours.flow.lengths) == LENGTHS
            # Jacobian products and exponents: the sampled sequences of the longest length
            assert ours.flow.jacobian_batch == ours.lyapunov.batch == longest, where
            assert ours.flow.log10_jacobian_product_norm.shape == (T_eff, len(longest))
            if b in longest:
                col = longest.index(b)
                assert_close(f"{where}: log10 product norm", ours.flow.log10_jacobian_product_norm[:, col],
                             theirs.flow.log10_jacobian_product_norm[:, 0], TOL)
                assert_close(f"{where}: log10 step norm", ours.flow.log10_step_jacobian_norm[:, col],
                             theirs.flow.log10_step_jacobian_norm[:, 0], TOL)
                assert_close(f"{where}: Lyapunov", ours.lyapunov.per_sequence[col], theirs.lyapunov.per_sequence[0],
                             TOL)
    # the per-sequence horizons are not all censored at their lengths (the comparison above has teeth)
    for ld in ragged.layers:
        assert np.any(ld.flow.horizon_per_sequence < lengths), (ld.name, ld.flow.horizon_per_sequence)
    # the last-step curves start at log10 |u| = 0 at every sequence's own end
    for ld in ragged.layers:
        np.testing.assert_allclose(ld.flow.log10_last_step[-1], 0.0, atol=1e-12)


# -- 5. W_hh = a Q in both directions ----------------------------------------------------------------------------
@pytest.mark.parametrize("a", [0.9, 1.1])
def test_scaled_orthogonal_bidirectional_closed_form(a):
    """Zero input, zero bias, h0 = 0: the state stays 0, every step Jacobian is ``a Q`` (tanh'(0) = 1) in every
    layer and direction, so ``log10 ||d s_{T-1}/d s_{T-1-k}|| = k log10 a`` and every Lyapunov exponent is ln a."""
    H, T, B, L = 6, 30, 2, 2
    model = random_model("rnn_tanh", 3, H, L, bidirectional=True, seed=41)
    params = model.state_dict()
    for k, name in enumerate(sorted(n for n in params if n.startswith("weight_hh"))):
        params[name] = a * haar(H, seed=100 + k)  # a different Q per layer and direction
    for name in params:
        if name.startswith("bias"):
            params[name] = np.zeros_like(params[name])
    model = model.with_params(params)
    d = analyze(model, np.zeros((T, B, 3)), batch_sample="all", lyapunov_warmup=0)
    assert d.nonfinite is None
    expected = (T - 1 - np.arange(T)) * math.log10(a)  # row T-1-k: k steps back
    assert len(d.layers) == 4
    for ld in d.layers:
        where = f"a={a} {ld.name}"
        prod = ld.flow.log10_jacobian_product_norm
        assert prod.shape == (T, B)
        assert np.all(prod[T - 1] == 0.0)
        assert_close(f"{where}: log10 product norm", prod, np.repeat(expected[:, None], B, axis=1), TOL,
                     relative=False)
        assert_close(f"{where}: log10 step norm", ld.flow.log10_step_jacobian_norm, np.full((T, B), math.log10(a)),
                     1e-12, relative=False)
        assert_close(f"{where}: Lyapunov exponents", ld.lyapunov.exponents, np.full(H, math.log(a)), TOL,
                     relative=False)
        assert ld.lyapunov.top == pytest.approx(math.log(a), abs=TOL)
        # the probe is a unit vector and J^T = a Q^T: the last-step curve is exact too
        assert_close(f"{where}: last-step curve", ld.flow.log10_last_step, np.repeat(expected[:, None], B, axis=1),
                     TOL, relative=False)
    for ld in d.layers[-2:]:  # the last layer's BPTT sees only the probe at each direction's last step
        assert_close(f"{ld.name}: grad norm", ld.flow.grad_norm_per_sequence,
                     np.repeat(10.0 ** expected[:, None], B, axis=1), TOL)
    out = d.to_dict()
    assert [(ld["layer"], ld["direction"], ld["name"]) for ld in out["layers"]] == [
        (0, "forward", "layer 0"), (0, "reverse", "layer 0 reverse"), (1, "forward", "layer 1"),
        (1, "reverse", "layer 1 reverse")]
    assert out["bidirectional"] is True and out["num_directions"] == 2 and out["proj_size"] == 0
    assert out["weights_dtype"] == "float64" and out["sequence_lengths"] is None
    for ld in out["layers"]:
        np.testing.assert_allclose(ld["lyapunov_exponents"], math.log(a), atol=TOL)
        np.testing.assert_allclose(ld["gradient_flow"]["log10_jacobian_product_norm"], expected, atol=TOL)
        assert ld["spectrum"]["matrix"] == "W_hh"
        assert ld["spectral_radius"] == pytest.approx(a, rel=1e-12)
        assert ld["sigma_max"] == pytest.approx(a, rel=1e-12)


# -- 6. batch_first ------------------------------------------------------------------------------------------------
def test_batch_first_gives_the_same_diagnosis():
    model = random_model("lstm", 3, 5, 2, bidirectional=True, proj_size=2, seed=51, gain=1.5)
    T, B = 12, 3
    rng = np.random.default_rng(52)
    x = rng.standard_normal((T, B, 3))
    grad_h = rng.standard_normal((T, B, 2 * 2))
    mask = rng.choice([0.0, 2.0], size=(T, B, 2 * 2))
    lengths = np.array([12, 7, 10])
    cases = {"plain": {}, "all options": dict(grad_h=grad_h, dropout_masks=[mask], lengths=lengths, loss="all")}
    for label, options in cases.items():
        time_major = analyze(model, x, **options)
        first = {k: (np.swapaxes(v, 0, 1) if k == "grad_h" else [np.swapaxes(m, 0, 1) for m in v]
                     if k == "dropout_masks" else v) for k, v in options.items()}
        batch_first = analyze(model, np.swapaxes(x, 0, 1), batch_first=True, **first)
        assert_same_dict(batch_first.to_dict(), time_major.to_dict(), label)
        for ours, theirs in zip(batch_first.layers, time_major.layers):  # NaN where a sequence has no step
            for name in ("grad_norm_per_sequence", "log10_last_step", "log10_jacobian_product_norm"):
                np.testing.assert_allclose(getattr(ours.flow, name), getattr(theirs.flow, name), rtol=1e-12,
                                           atol=1e-300, err_msg=f"{label} {ours.name}: {name}")


# -- 7. dropout masks --------------------------------------------------------------------------------------------
EVAL_MODE = "not replayed (eval mode): any dropout between layers is off, as in model.eval()"
REPLAYED = "train-mode masks given, replayed exactly"


def test_dropout_masks_are_reported_and_replayed():
    """An all-ones mask changes no number; a real mask makes layer 1 the one-layer model of its weights run on the
    masked output of layer 0 (the same probe: same seed and sizes), and leaves layer 0's forward dynamics as
    they were."""
    I, H, T, B = 3, 5, 15, 3
    model = rnndiag.init_model("gru", I, H, num_layers=2, seed=61)
    rng = np.random.default_rng(62)
    x = rng.standard_normal((T, B, I))
    plain = analyze(model, x, batch_sample="all")
    assert plain.dropout == EVAL_MODE and plain.to_dict()["dropout"] == EVAL_MODE
    ones = analyze(model, x, batch_sample="all", dropout_masks=[np.ones((T, B, H))])
    assert ones.dropout == REPLAYED and ones.to_dict()["dropout"] == REPLAYED
    plain_dict, ones_dict = plain.to_dict(), ones.to_dict()
    assert plain_dict.pop("dropout") != ones_dict.pop("dropout")
    assert_same_dict(ones_dict, plain_dict, "all-ones mask", tol=0.0)
    single = analyze(rnndiag.init_model("gru", I, H, seed=0), x)
    assert single.dropout == "none between layers (one layer)"

    p = 0.4
    mask = rng.choice([0.0, 1.0 / (1.0 - p)], p=[p, 1.0 - p], size=(T, B, H))
    masked = analyze(model, x, batch_sample="all", dropout_masks=[mask])
    assert masked.dropout == REPLAYED
    json.dumps(masked.to_dict(), allow_nan=False)
    layer0_output = rnndiag.forward(model, x).layers[0].h
    upper = analyze(sub_model(model, 1), layer0_output * mask, batch_sample="all")
    ours, theirs = masked.layers[1], upper.layers[0]
    for name in ("grad_norm_per_sequence", "log10_last_step", "log10_jacobian_product_norm",
                 "log10_step_jacobian_norm"):
        assert_close(f"masked layer 1: {name}", getattr(ours.flow, name), getattr(theirs.flow, name), TOL)
    assert_close("masked layer 1: Lyapunov", ours.lyapunov.per_sequence, theirs.lyapunov.per_sequence, TOL)
    assert np.array_equal(ours.flow.horizon_per_sequence, theirs.flow.horizon_per_sequence)
    # the mask changes what layer 1 sees, not layer 0's forward dynamics (only the gradient reaching it)
    assert not np.allclose(ours.flow.log10_step_jacobian_norm, plain.layers[1].flow.log10_step_jacobian_norm)
    for name in ("log10_jacobian_product_norm", "log10_step_jacobian_norm"):
        assert_close(f"layer 0: {name}", getattr(masked.layers[0].flow, name), getattr(plain.layers[0].flow, name),
                     TOL)
    assert_close("layer 0: Lyapunov", masked.layers[0].lyapunov.exponents, plain.layers[0].lyapunov.exponents, TOL)
