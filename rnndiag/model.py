"""The model: a cell type, its sizes, and its parameters keyed exactly like PyTorch's state_dict."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._validation import check_cell, check_dtype, check_positive_int
from .cells import cell_module, nonlinearity


def param_shapes(cell: str, input_size: int, hidden_size: int, num_layers: int, bias: bool = True):
    """Expected shape of every parameter, as in ``nn.RNN/nn.LSTM/nn.GRU``, in PyTorch's order."""
    gh = len(cell_module(cell).GATE_NAMES) * hidden_size
    shapes = {}
    for layer in range(num_layers):
        in_size = input_size if layer == 0 else hidden_size
        shapes[f"weight_ih_l{layer}"] = (gh, in_size)
        shapes[f"weight_hh_l{layer}"] = (gh, hidden_size)
        if bias:
            shapes[f"bias_ih_l{layer}"] = (gh,)
            shapes[f"bias_hh_l{layer}"] = (gh,)
    return shapes


@dataclass(frozen=True)
class RNNModel:
    """A stacked recurrent network in PyTorch's parameter layout.

    ``params`` maps PyTorch state_dict names (``weight_ih_l0`` (G*H, I), ``weight_hh_l0`` (G*H, H),
    ``bias_ih_l0``, ``bias_hh_l0``, ...) to arrays, with G = 1 (RNN), 4 (LSTM: i, f, g, o) or 3 (GRU: r, z, n).

    >>> from rnndiag import init_model
    >>> m = init_model("lstm", 3, 8, seed=0)
    >>> m.params["weight_hh_l0"].shape
    (32, 8)
    """

    cell: str  # "rnn_tanh", "rnn_relu", "lstm" or "gru"
    input_size: int  # I
    hidden_size: int  # H
    num_layers: int = 1
    bias: bool = True
    params: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    init: str = "custom"  # how the weights were made (an init scheme's name, or the file they came from)

    def __post_init__(self):
        object.__setattr__(self, "cell", check_cell(self.cell))
        check_positive_int(self.input_size, "input_size")
        check_positive_int(self.hidden_size, "hidden_size")
        check_positive_int(self.num_layers, "num_layers")
        expected = param_shapes(self.cell, self.input_size, self.hidden_size, self.num_layers, self.bias)
        missing = [k for k in expected if k not in self.params]
        extra = [k for k in self.params if k not in expected]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"unexpected {', '.join(extra)}")
            raise ValueError(f"params for a {self.num_layers}-layer {self.cell}: {'; '.join(parts)}")
        dtypes = {np.asarray(v).dtype for v in self.params.values()}
        if len(dtypes) != 1:
            raise TypeError(f"params must share one dtype; got {sorted(str(d) for d in dtypes)}")
        check_dtype(dtypes.pop(), "params dtype")
        for name, shape in expected.items():
            value = self.params[name]
            if value.shape != shape:
                raise ValueError(f"param {name} must have shape {shape}; got {value.shape}")
            if not np.isfinite(value).all():
                raise ValueError(f"param {name} contains NaN or Inf; the weights are unusable")

    # -- sizes -------------------------------------------------------------------------------------------------
    @property
    def gate_count(self) -> int:
        """G: 1 for RNN, 4 for LSTM, 3 for GRU."""
        return len(self.gate_names)

    @property
    def gate_names(self) -> tuple[str, ...]:
        return cell_module(self.cell).GATE_NAMES

    @property
    def state_size(self) -> int:
        """S: H for RNN and GRU, 2H for LSTM ([h; c])."""
        return cell_module(self.cell).STATE_FACTOR * self.hidden_size

    @property
    def has_cell_state(self) -> bool:
        """Whether the state holds a cell state ``c`` besides ``h`` (LSTM): then ``state0`` is ``(h0, c0)``."""
        return "c" in cell_module(self.cell).STATE_NAMES

    @property
    def dtype(self) -> np.dtype:
        return self.params["weight_hh_l0"].dtype

    @property
    def nonlinearity(self) -> str:
        """``tanh`` or ``relu`` for RNN cells; ``tanh`` (of the candidate) for gated cells."""
        return nonlinearity(self.cell)

    @property
    def num_params(self) -> int:
        return int(sum(v.size for v in self.params.values()))

    def layer_params(self, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(W_ih, W_hh, b_ih, b_hh)`` of one layer (biases ``None`` when ``bias=False``)."""
        layer = range(self.num_layers)[layer]
        p = self.params
        return (
            p[f"weight_ih_l{layer}"],
            p[f"weight_hh_l{layer}"],
            p.get(f"bias_ih_l{layer}"),
            p.get(f"bias_hh_l{layer}"),
        )

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of the parameters, keyed like PyTorch's state_dict."""
        return {k: v.copy() for k, v in self.params.items()}

    def astype(self, dtype) -> RNNModel:
        """The same model with parameters cast to ``dtype`` (float32 or float64)."""
        dt = check_dtype(dtype)
        return self.with_params({k: v.astype(dt) for k, v in self.params.items()})

    def with_params(self, params: dict[str, np.ndarray]) -> RNNModel:
        """The same architecture with other parameter values (validated)."""
        return RNNModel(self.cell, self.input_size, self.hidden_size, self.num_layers, self.bias,
                        dict(params), self.init)

    def describe(self) -> str:
        return (f"{self.cell} (input {self.input_size}, hidden {self.hidden_size}, "
                f"{self.num_layers} layer{'s' if self.num_layers > 1 else ''}, {self.dtype})")
