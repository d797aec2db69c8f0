"""Initialization schemes, applied per gate block and seeded through ``numpy.random.default_rng``.

Each scheme fills every (H, fan_in) gate block of ``weight_ih_l{k}`` and every (H, H) gate block of
``weight_hh_l{k}`` on its own, so that e.g. "orthogonal" makes each of an LSTM's four recurrent blocks
orthogonal (not the stacked (4H, H) matrix).

=================  =====================================================================================
name               what it does
=================  =====================================================================================
``tutorial``       every weight ``0.01 * randn``, biases 0 (the seed article's ``SimpleRNN``)
``pytorch``        every weight and bias ``U(-1/sqrt(H), 1/sqrt(H))`` (PyTorch's default for nn.RNN/LSTM/GRU)
``xavier_uniform`` Glorot & Bengio (2010): ``U(-a, a)``, ``a = gain * sqrt(6 / (fan_in + fan_out))``; biases 0
``xavier_normal``  ``N(0, gain^2 * 2 / (fan_in + fan_out))``; biases 0
``kaiming_uniform`` He et al. (2015): ``U(-a, a)``, ``a = gain * sqrt(3 / fan_in)``, gain sqrt(2); biases 0
``kaiming_normal`` ``N(0, gain^2 / fan_in)``, gain sqrt(2); biases 0
``orthogonal``     Saxe et al. (2014): each block ``gain * Q`` with Q (semi-)orthogonal, Haar-distributed; biases 0
``identity``       IRNN, Le et al. (2015): recurrent blocks ``gain * I`` (gain = scale, default 1), input weights
                   ``N(0, 0.001^2)``, biases 0
``keras``          Keras' default: glorot_uniform input blocks, orthogonal recurrent blocks, zero biases and,
                   for LSTM, forget-gate bias 1 (Keras' ``unit_forget_bias``)
=================  =====================================================================================

``forget_bias`` (LSTM only) then sets the effective forget-gate bias ``b_ih_f + b_hh_f`` to the given value
(``b_ih_f = forget_bias``, ``b_hh_f = 0``), as Jozefowicz et al. (2015) recommend with 1.
"""

from __future__ import annotations

import math

import numpy as np

from ._validation import check_cell, check_choice, check_dtype, check_positive_int, first_overflow, make_rng
from .cells import cell_module, gate_rows
from .model import RNNModel, param_shapes

SCHEMES = (
    "tutorial",
    "pytorch",
    "xavier_uniform",
    "xavier_normal",
    "kaiming_uniform",
    "kaiming_normal",
    "orthogonal",
    "identity",
    "keras",
)
SCHEME_ALIASES = {
    "glorot_uniform": "xavier_uniform",
    "glorot_normal": "xavier_normal",
    "xavier": "xavier_uniform",
    "glorot": "xavier_uniform",
    "he": "kaiming_normal",
    "he_normal": "kaiming_normal",
    "he_uniform": "kaiming_uniform",
    "kaiming": "kaiming_normal",
    "irnn": "identity",
    "saxe": "orthogonal",
    "default": "pytorch",
    "small": "tutorial",
}
DEFAULT_GAIN = {"xavier_uniform": 1.0, "xavier_normal": 1.0, "kaiming_uniform": math.sqrt(2.0),
                "kaiming_normal": math.sqrt(2.0), "orthogonal": 1.0, "identity": 1.0, "keras": 1.0}


def check_scheme(init: object) -> str:
    """Canonical scheme name for ``init`` (case-insensitive, with aliases such as ``he`` or ``irnn``)."""
    return check_choice(init, "init", SCHEMES, SCHEME_ALIASES)


def orthogonal(rng: np.random.Generator, rows: int, cols: int, gain: float = 1.0) -> np.ndarray:
    """A Haar-random (semi-)orthogonal (rows, cols) matrix times ``gain`` (QR with the sign fix of Mezzadri 2007)."""
    big, small = max(rows, cols), min(rows, cols)
    q, r = np.linalg.qr(rng.standard_normal((big, small)))
    q *= np.sign(np.diag(r))  # makes the distribution uniform (Haar)
    return gain * (q if rows >= cols else q.T)


def _block(scheme: str, rng: np.random.Generator, rows: int, cols: int, recurrent: bool, gain: float):
    if scheme == "tutorial":
        return 0.01 * rng.standard_normal((rows, cols))
    if scheme == "pytorch":
        k = 1.0 / math.sqrt(rows)  # rows = H for every gate block
        return rng.uniform(-k, k, (rows, cols))
    if scheme == "xavier_uniform" or (scheme == "keras" and not recurrent):
        a = gain * math.sqrt(6.0 / (cols + rows))
        return rng.uniform(-a, a, (rows, cols))
    if scheme == "xavier_normal":
        return rng.normal(0.0, gain * math.sqrt(2.0 / (cols + rows)), (rows, cols))
    if scheme == "kaiming_uniform":
        a = gain * math.sqrt(3.0 / cols)
        return rng.uniform(-a, a, (rows, cols))
    if scheme == "kaiming_normal":
        return rng.normal(0.0, gain / math.sqrt(cols), (rows, cols))
    if scheme == "orthogonal" or (scheme == "keras" and recurrent):
        return orthogonal(rng, rows, cols, gain)
    if scheme == "identity":
        if recurrent:
            return gain * np.eye(rows, cols)
        return rng.normal(0.0, 0.001, (rows, cols))
    raise AssertionError(scheme)


def init_model(
    cell: str,
    input_size: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    init: str = "pytorch",
    seed: int | np.random.Generator | None = None,
    dtype=np.float64,
    bias: bool = True,
    gain: float | None = None,
    forget_bias: float | None = None,
) -> RNNModel:
    """A freshly initialised model in PyTorch's layout.

    >>> m = init_model("rnn_tanh", 2, 16, init="orthogonal", gain=0.9, seed=0)
    >>> float(abs(np.linalg.eigvals(m.params["weight_hh_l0"])).max().round(6))
    0.9
    """
    cell = check_cell(cell)
    input_size = check_positive_int(input_size, "input_size")
    hidden_size = check_positive_int(hidden_size, "hidden_size")
    num_layers = check_positive_int(num_layers, "num_layers")
    scheme = check_scheme(init)
    dt = check_dtype(dtype)
    if gain is not None:
        if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not math.isfinite(gain) or gain <= 0:
            raise ValueError(f"gain must be a positive finite number; got {gain!r}")
        if scheme in ("tutorial", "pytorch"):
            raise ValueError(f"gain has no meaning for init {scheme!r}; use it with "
                             f"{', '.join(s for s in SCHEMES if s not in ('tutorial', 'pytorch'))}")
    forget_gate = cell_module(cell).FORGET_GATE
    if forget_bias is not None:
        if forget_gate is None:
            raise ValueError(f"forget_bias applies to LSTM only; got cell {cell!r}")
        if not bias:
            raise ValueError("forget_bias needs biases; drop bias=False or forget_bias")
        if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float)) or not math.isfinite(forget_bias):
            raise ValueError(f"forget_bias must be a finite number; got {forget_bias!r}")
    if scheme == "keras" and forget_gate is not None and forget_bias is None and bias:
        forget_bias = 1.0
    g = DEFAULT_GAIN.get(scheme, 1.0) if gain is None else float(gain)
    rng = make_rng(seed)
    H = hidden_size
    shapes = param_shapes(cell, input_size, hidden_size, num_layers, bias)
    params: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name.startswith("weight"):
            recurrent = name.startswith("weight_hh")
            blocks = [_block(scheme, rng, H, shape[1], recurrent, g) for _ in range(shape[0] // H)]
            params[name] = np.concatenate(blocks, axis=0)
        elif scheme == "pytorch":
            k = 1.0 / math.sqrt(H)
            params[name] = rng.uniform(-k, k, shape)
        else:
            params[name] = np.zeros(shape)
    if forget_bias is not None:
        rows = gate_rows(cell, forget_gate, H)
        for layer in range(num_layers):
            params[f"bias_ih_l{layer}"][rows] = forget_bias
            params[f"bias_hh_l{layer}"][rows] = 0.0
    for name, value in params.items():
        where = first_overflow(value, dt)
        if where is not None:
            raise ValueError(f"init {scheme} with gain {g:g} gives {name} a value of {float(value[where]):.3g}, which "
                             f"overflows {dt.name}; use a smaller gain (--gain) or float64 (--dtype float64)")
    params = {k: np.ascontiguousarray(v, dtype=dt) for k, v in params.items()}
    label = scheme if gain is None else f"{scheme}(gain={g:g})"
    if forget_bias is not None:
        label += f", forget_bias={forget_bias:g}"
    return RNNModel(cell, input_size, hidden_size, num_layers, bias, params, label, stage="init")
