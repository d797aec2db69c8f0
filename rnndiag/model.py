"""The model: a cell type, its sizes, and its parameters keyed exactly like PyTorch's state_dict."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ._validation import check_cell, check_dtype, check_positive_int
from .cells import cell_module, nonlinearity

DIRECTION_SUFFIXES = ("", "_reverse")  # PyTorch's key suffix of each direction: forward, reverse


def param_shapes(cell: str, input_size: int, hidden_size: int, num_layers: int, bias: bool = True,
                 bidirectional: bool = False, proj_size: int = 0):
    """Expected shape of every parameter, as in ``nn.RNN/nn.LSTM/nn.GRU``, in PyTorch's order (per layer, per
    direction: ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``, ``weight_hr``).

    With ``proj_size`` P > 0 (LSTM only) ``weight_hh`` is (4H, P) and ``weight_hr`` (P, H); a layer above the
    first takes the previous layer's output, of size D * (P or H) with D = 2 when bidirectional.
    """
    gh = len(cell_module(cell).GATE_NAMES) * hidden_size
    out_size = proj_size or hidden_size
    directions = DIRECTION_SUFFIXES[: 2 if bidirectional else 1]
    shapes = {}
    for layer in range(num_layers):
        in_size = input_size if layer == 0 else len(directions) * out_size
        for sfx in directions:
            shapes[f"weight_ih_l{layer}{sfx}"] = (gh, in_size)
            shapes[f"weight_hh_l{layer}{sfx}"] = (gh, out_size)
            if bias:
                shapes[f"bias_ih_l{layer}{sfx}"] = (gh,)
                shapes[f"bias_hh_l{layer}{sfx}"] = (gh,)
            if proj_size:
                shapes[f"weight_hr_l{layer}{sfx}"] = (proj_size, hidden_size)
    return shapes


@dataclass(frozen=True)
class RNNModel:
    """A stacked recurrent network in PyTorch's parameter layout.

    ``params`` maps PyTorch state_dict names (``weight_ih_l0`` (G*H, I), ``weight_hh_l0`` (G*H, H),
    ``bias_ih_l0``, ``bias_hh_l0``, ...) to arrays, with G = 1 (RNN), 4 (LSTM: i, f, g, o) or 3 (GRU: r, z, n).
    A bidirectional model has the same keys again with the suffix ``_reverse``; an LSTM with ``proj_size`` P has
    ``weight_hr_l{k}`` (P, H) and ``weight_hh_l{k}`` (4H, P). ``source_dtype`` names the dtype the weights were
    stored in when it differs from the one they are computed in (float16 and bfloat16 are computed in float32 or
    float64).

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
    bidirectional: bool = False  # a second, reverse direction per layer (keys ending in _reverse)
    proj_size: int = 0  # P > 0: an LSTM whose output h_t = W_hr (o_t * tanh c_t) has P < H units
    source_dtype: str | None = None  # the stored dtype when it differs from the computed one (float16, bfloat16)
    stage: str = "unknown"  # the weights: "init" (at initialization), "trained", or "unknown" (loaded)

    def __post_init__(self):
        object.__setattr__(self, "cell", check_cell(self.cell))
        check_positive_int(self.input_size, "input_size")
        check_positive_int(self.hidden_size, "hidden_size")
        check_positive_int(self.num_layers, "num_layers")
        object.__setattr__(self, "bidirectional", bool(self.bidirectional))
        if self.stage not in ("init", "trained", "unknown"):
            raise ValueError(f"stage must be init, trained or unknown; got {self.stage!r}")
        if self.proj_size:
            check_positive_int(self.proj_size, "proj_size")
            if self.cell != "lstm":
                raise ValueError(f"proj_size is an LSTM option (nn.LSTM(proj_size=...)); a {self.cell} has none")
            if self.proj_size >= self.hidden_size:
                raise ValueError(f"proj_size must be smaller than hidden_size ({self.hidden_size}), as PyTorch "
                                 f"requires; got {self.proj_size}")
        expected = self.param_shapes()
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

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every parameter this architecture has (see :func:`param_shapes`)."""
        return param_shapes(self.cell, self.input_size, self.hidden_size, self.num_layers, self.bias,
                            self.bidirectional, self.proj_size)

    @property
    def loaded(self) -> bool:
        """Whether the weights came from outside -- a file or a state_dict (:mod:`rnndiag.weights`) -- rather than
        from :func:`rnndiag.init_model` or rnndiag's own training."""
        return self.init.startswith(("loaded from", "state_dict"))

    # -- sizes -------------------------------------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        """D: 2 for a bidirectional model, else 1."""
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """The size of ``h_t`` per direction: ``proj_size`` when set, else ``hidden_size``."""
        return self.proj_size or self.hidden_size

    @property
    def gate_count(self) -> int:
        """G: 1 for RNN, 4 for LSTM, 3 for GRU."""
        return len(self.gate_names)

    @property
    def gate_names(self) -> tuple[str, ...]:
        return cell_module(self.cell).GATE_NAMES

    @property
    def state_size(self) -> int:
        """S of one direction: H for RNN and GRU, 2H for LSTM ([h; c]), P + H for an LSTM with proj_size P."""
        return self.output_size + (cell_module(self.cell).STATE_FACTOR - 1) * self.hidden_size

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

    def layer_params(self, layer: int, direction: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(W_ih, W_hh, b_ih, b_hh)`` of one layer and direction (0 forward, 1 reverse; biases ``None`` when
        ``bias=False``)."""
        sfx = self._suffix(layer, direction)
        p = self.params
        return (p[f"weight_ih{sfx}"], p[f"weight_hh{sfx}"], p.get(f"bias_ih{sfx}"), p.get(f"bias_hh{sfx}"))

    def projection(self, layer: int, direction: int = 0) -> np.ndarray | None:
        """``W_hr`` (P, H) of one layer and direction, or None without ``proj_size``."""
        return self.params.get(f"weight_hr{self._suffix(layer, direction)}")

    def _suffix(self, layer: int, direction: int) -> str:
        layer = range(self.num_layers)[layer]
        if direction not in range(self.num_directions):
            raise IndexError(f"direction={direction!r}: a {'bidirectional' if self.bidirectional else 'one-way'} "
                             f"model has directions 0..{self.num_directions - 1}")
        return f"_l{layer}{DIRECTION_SUFFIXES[direction]}"

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of the parameters, keyed like PyTorch's state_dict."""
        return {k: v.copy() for k, v in self.params.items()}

    def astype(self, dtype) -> RNNModel:
        """The same model with parameters cast to ``dtype`` (float32 or float64)."""
        dt = check_dtype(dtype)
        return self.with_params({k: v.astype(dt) for k, v in self.params.items()})

    def with_params(self, params: dict[str, np.ndarray]) -> RNNModel:
        """The same architecture with other parameter values (validated)."""
        return dataclasses.replace(self, params=dict(params))

    def describe(self) -> str:
        extra = "".join([", bidirectional" if self.bidirectional else "",
                         f", proj_size {self.proj_size}" if self.proj_size else ""])
        stored = f", stored as {self.source_dtype}" if self.source_dtype else ""
        return (f"{self.cell} (input {self.input_size}, hidden {self.hidden_size}{extra}, "
                f"{self.num_layers} layer{'s' if self.num_layers > 1 else ''}, {self.dtype}{stored})")
