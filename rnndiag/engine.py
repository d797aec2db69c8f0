"""Forward passes and exact backpropagation through time over stacked layers, and the Trace they record.

Data flow: ``forward(model, x)`` -> :class:`Trace` (activations and gates: everything that defines the step
Jacobians, O(T*B*H)); ``bptt(model, x, grad_h)`` adds the total gradients ``dL/dh_t`` (``dL/dc_t``), the input and
initial-state gradients and every parameter gradient.

Per layer the work is: one matrix product for all timesteps' input projections ``(T*B, I) @ (I, G*H)`` (per
direction); the recurrence (the only Python loop, in the cell module); after the backward sweep, one product for
the input weights' gradient over all timesteps and both directions, one per recurrent weight, and one for the
gradient passed to the layer below.

Every ``nn.RNN/nn.LSTM/nn.GRU`` configuration is covered: stacked layers; bidirectional layers (each direction is
a :class:`LayerTrace` whose arrays are in *processing order*: step k of the reverse direction is time T-1-k, or
``length - 1 - k`` for a sequence of its own length; the next layer's input is both directions' outputs
concatenated in time order); an LSTM's ``proj_size``; per-sequence ``lengths`` (a padded or packed batch: a
sequence's steps past its length are not part of it -- its outputs there are zero, its final state is the one at
its own last step, as ``pack_padded_sequence`` gives); given initial states; dropout masks between layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._validation import check_array
from .cells import cell_kwargs, cell_module
from .model import RNNModel


@dataclass(frozen=True)
class StepJacobians:
    """Step Jacobians ``J = d s_t / d s_{t-1}`` for a block of (step, batch row) pairs, never formed unless asked.

    ``factors`` are the cell's diagonal factors, each of shape ``lead + (H,)`` (``lead`` = (n,) for one step, or
    (m, n) for m steps); with ``w_hh`` they define every J. ``jvp``/``vjp`` take stacks of row vectors whose
    leading axes start with ``lead``; any further axes (k vectors per Jacobian) broadcast.
    """

    cell: str
    w_hh: np.ndarray = field(repr=False)
    factors: tuple[np.ndarray, ...] = field(repr=False)
    formed: np.ndarray | None = field(default=None, repr=False)  # the cell's formed_part, once asked for
    w_hr: np.ndarray | None = field(default=None, repr=False)  # an LSTM's projection (P, H), or None

    @property
    def _kw(self) -> dict:
        """The keyword arguments the cell's functions take besides the arrays: the projection, when there is one."""
        return {} if self.w_hr is None else {"w_hr": self.w_hr}

    @property
    def shape(self) -> tuple[int, ...]:
        """``lead``: the (steps, rows) layout of the Jacobians held."""
        return self.factors[0].shape[:-1]

    @property
    def state_size(self) -> int:
        """S: the size of ``h`` (H, or P with a projection) plus, for an LSTM, that of ``c`` (H)."""
        return self.w_hh.shape[1] + (cell_module(self.cell).STATE_FACTOR - 1) * self.factors[0].shape[-1]

    def __getitem__(self, i) -> StepJacobians:
        """The Jacobians of one step (or a slice of steps) of a multi-step block."""
        return StepJacobians(self.cell, self.w_hh, tuple(f[i] for f in self.factors),
                             None if self.formed is None else self.formed[i], self.w_hr)

    def _broadcast(self, v: np.ndarray) -> tuple[np.ndarray, ...]:
        extra = v.ndim - len(self.shape) - 1
        if extra < 0 or v.shape[: len(self.shape)] != self.shape or v.shape[-1] != self.state_size:
            raise ValueError(f"vectors must have shape {(*self.shape, self.state_size)} (plus optional axes "
                             f"before the last); got {v.shape}")
        if extra == 0:
            return self.factors
        # new axes before the last, as views (indexing: cheaper per call than np.expand_dims, and this runs
        # every step of a Lyapunov frame)
        index = (Ellipsis,) + (None,) * extra + (slice(None),)
        return tuple(f[index] for f in self.factors)

    def jvp(self, v: np.ndarray) -> np.ndarray:
        """``J v`` for each row vector of ``v`` (lead..., [k...], S)."""
        return cell_module(self.cell).jvp_rows(self._broadcast(v), self.w_hh, v, **self._kw)

    def vjp(self, u: np.ndarray) -> np.ndarray:
        """``u^T J`` for each row vector of ``u`` (lead..., [k...], S)."""
        return cell_module(self.cell).vjp_rows(self._broadcast(u), self.w_hh, u, **self._kw)

    def astype(self, dtype) -> StepJacobians:
        """The same Jacobians with factors and weights in ``dtype``."""
        return StepJacobians(self.cell, self.w_hh.astype(dtype, copy=False),
                             tuple(f.astype(dtype, copy=False) for f in self.factors),
                             None if self.formed is None else self.formed.astype(dtype, copy=False),
                             None if self.w_hr is None else self.w_hr.astype(dtype, copy=False))

    def with_formed(self) -> StepJacobians:
        """The same Jacobians with the dense part that ``rmatmul`` and ``matmul`` multiply by formed for all of
        them at once (O(S H) memory per Jacobian): for products over many steps, a few steps at a time."""
        if self.formed is not None:
            return self
        return StepJacobians(self.cell, self.w_hh, self.factors,
                             cell_module(self.cell).formed_part(self.factors, self.w_hh), self.w_hr)

    def _check_block(self, a: np.ndarray, name: str, state_axis: int, layout: tuple) -> None:
        """A block of vectors per Jacobian: ``lead`` axes, then two, one of them (``state_axis``) of size S."""
        if a.ndim != len(self.shape) + 2 or a.shape[: len(self.shape)] != self.shape or \
                a.shape[state_axis] != self.state_size:
            raise ValueError(f"{name} must have shape {layout}; got {a.shape}")

    def rmatmul(self, m: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``m @ J`` for a block of row vectors per Jacobian, ``m`` (lead..., R, S); into ``out`` (same shape,
        not overlapping ``m``) when given."""
        self._check_block(m, "m", -1, (*self.shape, "R", self.state_size))
        return cell_module(self.cell).rmatmul(self.factors, self.w_hh, m, out, self.formed, **self._kw)

    def matmul(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``J @ x`` for a block of column vectors per Jacobian, ``x`` (lead..., S, K); into ``out`` (same shape,
        not overlapping ``x``) when given."""
        self._check_block(x, "x", -2, (*self.shape, self.state_size, "K"))
        return cell_module(self.cell).matmul(self.factors, self.w_hh, x, out, self.formed, **self._kw)

    def dense(self) -> np.ndarray:
        """The Jacobians themselves, (lead..., S, S)."""
        return cell_module(self.cell).dense_jacobian(self.factors, self.w_hh, **self._kw)


@dataclass(frozen=True)
class LayerTrace:
    """What one layer (one direction of it) recorded. ``arrays`` holds the cell's activations (see the cell
    module's ``forward``), in processing order: for ``direction`` 1 (reverse) step k is time ``T-1-k`` (or
    ``length - 1 - k`` per sequence when ``lengths`` are given). Steps past a sequence's length hold zeros."""

    cell: str
    layer: int
    w_hh: np.ndarray  # (G*H, H) (or (4H, P) with a projection), the weights the Jacobians use
    h0: np.ndarray  # (B, H) or (B, P)
    c0: np.ndarray | None  # (B, H) for LSTM
    arrays: dict[str, np.ndarray] = field(repr=False)
    grad_h: np.ndarray | None = field(default=None, repr=False)  # (T, B, H) total dL/dh_t, processing order
    grad_c: np.ndarray | None = field(default=None, repr=False)  # (T, B, H) total dL/dc_t (LSTM)
    direction: int = 0  # 0 forward, 1 reverse
    w_hr: np.ndarray | None = field(default=None, repr=False)  # (P, H): an LSTM's projection
    lengths: np.ndarray | None = field(default=None, repr=False)  # (B,) steps per sequence; None: all T

    @property
    def h(self) -> np.ndarray:
        return self.arrays["h"]

    @property
    def c(self) -> np.ndarray | None:
        return self.arrays.get("c")

    @property
    def hidden_size(self) -> int:
        """The size of ``h``: H, or P with a projection."""
        return self.h0.shape[1]

    @property
    def cell_size(self) -> int:
        """H: the units of the cell (of ``c`` and of every gate)."""
        return self.w_hh.shape[0] // len(cell_module(self.cell).GATE_NAMES)

    @property
    def state_size(self) -> int:
        return self.hidden_size + (cell_module(self.cell).STATE_FACTOR - 1) * self.cell_size

    @property
    def name(self) -> str:
        """``layer 0``, or ``layer 0 reverse`` for a reverse direction."""
        return f"layer {self.layer}" + (" reverse" if self.direction else "")

    @property
    def seq_lengths(self) -> np.ndarray:
        """The number of steps of every sequence (B,): ``lengths``, or T for all."""
        return self.lengths if self.lengths is not None else np.full(self.h0.shape[0], self.h.shape[0])

    def _t(self, t: int) -> int:
        T = self.h.shape[0]
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
            raise TypeError(f"t must be an integer timestep; got {t!r}")
        if not -T <= t < T:
            raise IndexError(f"t={t} is out of range for a sequence of length {T} (use 0..{T - 1} or -{T}..-1)")
        return int(t) % T

    def _vec(self, v, name):
        B = self.h0.shape[0]
        return check_array(v, name, (B, self.state_size), self.h.dtype)

    def jacobians(self, t, batch=None, dtype=None) -> StepJacobians:
        """The step Jacobians ``J_t`` of the steps ``t`` (an int, or a 1-D array of steps) for the rows ``batch``
        (an index array; default all), held implicitly by their diagonal factors: O(len(t) * n * H) memory.
        ``dtype`` casts factors and weights once (the analysis works in float64)."""
        B, T = self.h0.shape[0], self.h.shape[0]
        if np.ndim(t) == 0:
            t = self._t(t)
        else:
            t = np.asarray(t)
            if t.ndim != 1 or t.dtype.kind not in "iu" or (t.size and not (t.min() >= 0 and t.max() < T)):
                raise IndexError(f"steps must be a 1-D array of integers in 0..{T - 1}")
        idx = None if batch is None else np.atleast_1d(np.arange(B)[batch])
        mod = cell_module(self.cell)
        jac = StepJacobians(self.cell, self.w_hh,
                            mod.jacobian_factors(self.arrays, self.h0, self.c0, t, idx, **cell_kwargs(self.cell)),
                            None, self.w_hr)
        return jac if dtype is None else jac.astype(dtype)

    def step_jacobian(self, t: int, batch=None) -> np.ndarray:
        """``d s_t / d s_{t-1}`` (len(batch), S, S); ``batch`` an index, slice or index array (default all)."""
        B = self.h0.shape[0]
        idx = np.atleast_1d(np.arange(B)[batch if batch is not None else slice(None)])
        return self.jacobians(t, idx).dense()

    def jvp(self, t: int, v) -> np.ndarray:
        """``J_t v`` per batch row; v (B, S)."""
        return self.jacobians(t).jvp(self._vec(v, "v"))

    def vjp(self, t: int, u) -> np.ndarray:
        """``u^T J_t`` per batch row; u (B, S)."""
        return self.jacobians(t).vjp(self._vec(u, "u"))

    def state(self, t: int) -> np.ndarray:
        """``s_t`` (B, S): h_t, or [h_t; c_t] for LSTM; ``t = -1`` is not the initial state, use ``initial_state``."""
        t = self._t(t)
        return self._stacked([self.arrays[name][t] for name in cell_module(self.cell).STATE_NAMES])

    @property
    def initial_state(self) -> np.ndarray:
        initial = {"h": self.h0, "c": self.c0}
        return self._stacked([initial[name] for name in cell_module(self.cell).STATE_NAMES])

    @property
    def final_h(self) -> np.ndarray:
        """``h`` at every sequence's own last step (B, H): this direction's part of PyTorch's ``h_n``."""
        return at_last_step(self.h, self.lengths)

    @property
    def final_c(self) -> np.ndarray | None:
        return None if self.c is None else at_last_step(self.c, self.lengths)

    def in_time_order(self, a: np.ndarray) -> np.ndarray:
        """A (T, B, ...) array of this direction in processing order, put in time order (a view when it can)."""
        return a if self.direction == 0 else reverse_time(a, self.lengths)

    @staticmethod
    def _stacked(parts: list[np.ndarray]) -> np.ndarray:
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    @property
    def nbytes(self) -> int:
        arrays = [*self.arrays.values(), self.grad_h, self.grad_c]
        return int(sum(a.nbytes for a in arrays if a is not None))


def at_last_step(a: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """``a[length_b - 1, b]`` for every row b of a (T, B, K) array (``a[-1]`` without lengths)."""
    if lengths is None:
        return a[-1]
    return a[lengths - 1, np.arange(a.shape[1])]


def reverse_time(a: np.ndarray, lengths: np.ndarray | None) -> np.ndarray:
    """A (T, B, ...) array with each sequence's first ``length`` steps in reverse order, steps past its length in
    place: the reverse direction's processing order (its own inverse). Without lengths: ``a[::-1]``, a view."""
    if lengths is None:
        return a[::-1]
    T, B = a.shape[:2]
    t = np.arange(T)[:, None]
    index = np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)  # (T, B)
    return a[index, np.arange(B)[None, :]]


def padding_mask(lengths: np.ndarray | None, T: int) -> np.ndarray | None:
    """(T, B) True at the steps past each sequence's length, or None without lengths."""
    if lengths is None:
        return None
    return np.arange(T)[:, None] >= lengths[None, :]


@dataclass(frozen=True)
class Trace:
    """A forward (and, after :func:`bptt`, backward) pass over a sequence, time-major.

    ``layers`` holds every layer's record, in PyTorch's order (layer 0 forward, layer 0 reverse, layer 1, ...).
    ``h`` (T, B, D*H) is the last layer's output in time order (zeros past a sequence's length) and ``grad_h`` its
    total ``dL/dh_t``. ``param_grads`` is keyed like the weights; ``grad_h0``/``grad_c0`` are (L*D, B, H) like
    PyTorch's ``h_0``.
    """

    model: RNNModel = field(repr=False)
    x: np.ndarray = field(repr=False)  # (T, B, I), zeros past each sequence's length
    layers: tuple[LayerTrace, ...] = field(repr=False)
    grad_x: np.ndarray | None = field(default=None, repr=False)  # (T, B, I)
    grad_h0: np.ndarray | None = field(default=None, repr=False)  # (L*D, B, H)
    grad_c0: np.ndarray | None = field(default=None, repr=False)  # (L*D, B, H), LSTM
    param_grads: dict[str, np.ndarray] | None = field(default=None, repr=False)
    lengths: np.ndarray | None = field(default=None, repr=False)  # (B,) steps per sequence; None: all T
    dropout_masks: tuple[np.ndarray, ...] | None = field(default=None, repr=False)  # (T, B, D*H) per layer gap

    @property
    def seq_len(self) -> int:
        return self.x.shape[0]

    @property
    def batch_size(self) -> int:
        return self.x.shape[1]

    @property
    def num_directions(self) -> int:
        return self.model.num_directions

    def directions(self, layer: int) -> tuple[LayerTrace, ...]:
        """The traces of one layer's directions (forward, then reverse)."""
        layer = range(self.model.num_layers)[layer]
        D = self.num_directions
        return self.layers[layer * D : (layer + 1) * D]

    def output(self, layer: int = -1) -> np.ndarray:
        """A layer's output (T, B, D*H) in time order, as ``nn.RNN`` returns it (before dropout)."""
        return _concat([lt.in_time_order(lt.h) for lt in self.directions(layer)])

    @property
    def h(self) -> np.ndarray:
        return self.output(-1)

    @property
    def c(self) -> np.ndarray | None:
        if not self.model.has_cell_state:
            return None
        return _concat([lt.in_time_order(lt.c) for lt in self.directions(-1)])

    @property
    def grad_h(self) -> np.ndarray | None:
        """The total ``dL/dh_t`` on the last layer's output (T, B, D*H), time order."""
        parts = self.directions(-1)
        if parts[0].grad_h is None:
            return None
        return _concat([lt.in_time_order(lt.grad_h) for lt in parts])

    @property
    def grad_c(self) -> np.ndarray | None:
        parts = self.directions(-1)
        if parts[0].grad_c is None:
            return None
        return _concat([lt.in_time_order(lt.grad_c) for lt in parts])

    @property
    def h_n(self) -> np.ndarray:
        """Final hidden state of every layer and direction (L*D, B, H), as PyTorch returns it."""
        return np.stack([lt.final_h for lt in self.layers])

    @property
    def c_n(self) -> np.ndarray | None:
        if not self.model.has_cell_state:
            return None
        return np.stack([lt.final_c for lt in self.layers])

    def state0_after(self, t: int):
        """The ``state0`` (``h`` (L, B, H), or ``(h, c)`` with a cell state) that continues this run after step
        ``t``: running the model on ``x[t + 1:]`` from it gives the same states as this run. Only for one-way
        models over equal lengths (a reverse direction's state depends on the steps after ``t``)."""
        if self.model.bidirectional or self.lengths is not None:
            raise ValueError("state0_after needs a one-way model over sequences of equal length")
        h = np.stack([lt.h[t] for lt in self.layers])
        return (h, np.stack([lt.c[t] for lt in self.layers])) if self.model.has_cell_state else h

    def step_jacobian(self, t: int, layer: int = -1, batch=None) -> np.ndarray:
        """``d s_t / d s_{t-1}`` of one layer trace at (processing) step ``t``: (B, S, S) (or the rows
        ``batch``). ``layer`` indexes :attr:`layers` (layer and direction)."""
        return self._layer(layer).step_jacobian(t, batch)

    def jvp(self, t: int, v, layer: int = -1) -> np.ndarray:
        """``J_t v`` for v (B, S)."""
        return self._layer(layer).jvp(t, v)

    def vjp(self, t: int, u, layer: int = -1) -> np.ndarray:
        """``u^T J_t`` for u (B, S)."""
        return self._layer(layer).vjp(t, u)

    def _layer(self, layer: int) -> LayerTrace:
        L = len(self.layers)
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -L <= layer < L:
            what = f"a {L}-layer model" if self.num_directions == 1 else \
                f"a bidirectional model with {L} layer traces (layer k's reverse direction is 2k+1)"
            raise IndexError(f"layer={layer!r} is out of range for {what} (use 0..{L - 1} or -1)")
        return self.layers[layer]

    @property
    def nbytes(self) -> int:
        """Bytes held by the recorded arrays (O(T*B*H))."""
        extra = [self.grad_x, self.grad_h0, self.grad_c0, *(self.dropout_masks or ())]
        return sum(lt.nbytes for lt in self.layers) + int(sum(a.nbytes for a in extra if a is not None))


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)


# ----------------------------------------------------------------------------------------------------------------
def _time_major(a, name: str, batch_first: bool):
    """``a`` (B, T, ...) as (T, B, ...) when ``batch_first`` (a view), else as given."""
    if not batch_first or a is None:
        return a
    a = np.asarray(a)
    if a.ndim < 2:
        raise ValueError(f"{name} must have shape (B, T, ...) with batch_first=True; got {a.shape}")
    return np.swapaxes(a, 0, 1)


def check_lengths(lengths, T: int, B: int) -> np.ndarray | None:
    """Per-sequence lengths (B,) as int64, each in 1..T; None when absent or all equal to T (nothing to mask)."""
    if lengths is None:
        return None
    if _is_tensor(lengths):
        lengths = lengths.detach().cpu().numpy()
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and np.all(np.mod(arr, 1) == 0)):
        raise TypeError(f"lengths must be integers (one per sequence); got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"lengths must have shape ({B},), one per sequence of the batch; got {arr.shape}")
    arr = arr.astype(np.int64)
    if B and (arr.min() < 1 or arr.max() > T):
        bad = int(np.nonzero((arr < 1) | (arr > T))[0][0])
        raise ValueError(f"lengths[{bad}] = {int(arr[bad])} is outside 1..{T}: a sequence cannot be longer than the "
                         f"{T} steps of x (or empty); pass lengths <= T")
    return None if np.all(arr == T) else arr


def _is_tensor(value) -> bool:
    return callable(getattr(value, "detach", None)) and hasattr(value, "layout")


def _check_inputs(model: RNNModel, x, state0, lengths=None, batch_first=False, dropout_masks=None):
    if not isinstance(model, RNNModel):
        raise TypeError(f"model must be an RNNModel (from init_model or load_weights); got {type(model).__name__}")
    dtype = model.dtype
    x = _time_major(x, "x", batch_first)
    x = check_array(x, "x", ("T", "B", model.input_size), dtype, copy=True)  # the trace keeps its own inputs
    T, B, _ = x.shape
    lengths = check_lengths(lengths, T, B)
    if lengths is not None:
        x[padding_mask(lengths, T)] = 0.0  # past its length a sequence has no inputs
    LD, P, H = model.num_layers * model.num_directions, model.output_size, model.hidden_size
    shape = f"({LD}, {B}, {{}})"
    if state0 is None:
        h0 = np.zeros((LD, B, P), dtype)
        c0 = np.zeros((LD, B, H), dtype) if model.has_cell_state else None
    elif model.has_cell_state:
        if not isinstance(state0, (tuple, list)) or len(state0) != 2:
            raise TypeError(f"state0 for an LSTM must be the tuple (h0, c0) of shapes {shape.format(P)} and "
                            f"{shape.format(H)} (num_layers * num_directions, B, size)")
        h0 = check_array(state0[0], "state0 h0", (LD, B, P), dtype, copy=True)
        c0 = check_array(state0[1], "state0 c0", (LD, B, H), dtype, copy=True)
    else:
        if isinstance(state0, tuple):
            raise TypeError(f"state0 for a {model.cell} is h0 of shape {shape.format(P)}, not a tuple")
        h0 = check_array(state0, "state0", (LD, B, P), dtype, copy=True)
        c0 = None
    masks = None
    if dropout_masks is not None:
        if model.num_layers == 1:
            raise ValueError("dropout_masks apply between layers; a 1-layer model has none (pass None)")
        if len(dropout_masks) != model.num_layers - 1:
            raise ValueError(f"dropout_masks must hold {model.num_layers - 1} arrays (one per gap between layers); "
                             f"got {len(dropout_masks)}")
        masks = tuple(check_array(_time_major(m, f"dropout_masks[{k}]", batch_first), f"dropout_masks[{k}]",
                                  (T, B, model.num_directions * P), dtype, copy=True)
                      for k, m in enumerate(dropout_masks))
    return x, h0, c0, lengths, masks


def _forward_weights(mod, w_ih, w_hh, b_ih, b_hh):
    """``W_ih``, the bias folded into the input projection, and ``W_hh`` as the cell's ``forward`` takes them.

    Each gate block's rows are multiplied by the cell module's ``GATE_SCALE`` (powers of two, so exactly). The
    bias is the cell's ``folded_bias`` (``b_ih + b_hh``, except a GRU's n block: ``b_hn`` sits inside
    ``r * (W_hn h + b_hn)`` and ``forward`` adds it per step).
    """
    H = w_hh.shape[0] // len(mod.GATE_SCALE)
    b = mod.folded_bias(b_ih, b_hh) if b_ih is not None else None
    if all(s == 1.0 for s in mod.GATE_SCALE):
        return w_ih, b, w_hh
    scale = np.repeat(np.asarray(mod.GATE_SCALE, w_hh.dtype), H)  # (G*H,)
    return w_ih * scale[:, None], (b * scale if b is not None else None), w_hh * scale[:, None]


def _append_ones(a: np.ndarray) -> np.ndarray:
    """(N, K) -> (N, K+1) with a last column of ones, so that a bias rides along in a product as one more weight
    (no separate pass over the (N, G*H) result to add it, or to sum it for its gradient)."""
    out = np.empty((a.shape[0], a.shape[1] + 1), a.dtype)
    out[:, :-1] = a
    out[:, -1] = 1.0
    return out


def _input_projection(layer_input: np.ndarray, w_ih, b) -> np.ndarray:
    """All timesteps at once: (T*B, I) @ (I, G*H) + bias -> (T, B, G*H), as one product [x, 1] @ [W_ih^T; b]."""
    T, B, I = layer_input.shape
    x_2d = layer_input.reshape(T * B, I)
    if b is None:
        pre = x_2d @ w_ih.T  # (T*B, G*H)
    else:
        pre = _append_ones(x_2d) @ np.concatenate([w_ih.T, b[None, :]])  # (T*B, I+1) @ (I+1, G*H)
    return pre.reshape(T, B, -1)


def _proj_kwargs(w_hr) -> dict:
    return {} if w_hr is None else {"w_hr": w_hr}


def _layer_input(x: np.ndarray, layers: list[LayerTrace], masks, model: RNNModel, layer: int) -> np.ndarray:
    """What layer ``layer`` reads (T, B, I_layer), time order: ``x``, or the layer below's output (both directions
    concatenated) times its dropout mask."""
    if layer == 0:
        return x
    D = model.num_directions
    out = _concat([lt.in_time_order(lt.h) for lt in layers[(layer - 1) * D : layer * D]])
    return out * masks[layer - 1] if masks is not None else out


def _run_forward(model: RNNModel, x, h0, c0, lengths, masks) -> list[LayerTrace]:
    layers: list[LayerTrace] = []
    kwargs = cell_kwargs(model.cell)
    mod = cell_module(model.cell)
    pad = padding_mask(lengths, x.shape[0])
    D = model.num_directions
    for layer in range(model.num_layers):
        layer_input = _layer_input(x, layers, masks, model, layer)
        for d in range(D):
            k = layer * D + d
            w_ih, w_hh, b_ih, b_hh = model.layer_params(layer, d)
            w_hr = model.projection(layer, d)
            w_ih_f, b_f, w_hh_f = _forward_weights(mod, w_ih, w_hh, b_ih, b_hh)
            seen = layer_input if d == 0 else reverse_time(layer_input, lengths)  # processing order
            pre = _input_projection(seen, w_ih_f, b_f)
            c0_k = c0[k] if c0 is not None else None
            arrays = mod.forward(pre, h0[k], c0_k, w_hh_f, b_hh, **kwargs, **_proj_kwargs(w_hr))
            if pad is not None:  # the steps past a sequence's end were computed on zeros: not part of it
                for a in arrays.values():
                    a[pad] = 0.0
            layers.append(LayerTrace(model.cell, layer, w_hh, h0[k], c0_k, arrays, direction=d, w_hr=w_hr,
                                     lengths=lengths))
    return layers


def forward(model: RNNModel, x, state0=None, *, lengths=None, batch_first: bool = False,
            dropout_masks=None) -> Trace:
    """Run ``model`` over ``x`` (T, B, I) and record what the Jacobians need; no gradients.

    ``state0``: ``h0`` (L*D, B, H) or, for an LSTM, ``(h0, c0)``, as PyTorch takes them (default zeros).
    ``lengths`` (B,): each sequence's number of steps (a padded batch, as ``pack_padded_sequence`` reads it).
    ``batch_first``: ``x`` is (B, T, I); the trace is time-major all the same. ``dropout_masks``: one (T, B, D*H)
    array per gap between layers, multiplied into the lower layer's output (0 or 1/(1-p), as train-mode
    dropout draws it); None replays eval mode.

    >>> from rnndiag import init_model
    >>> m = init_model("gru", 3, 5, seed=0)
    >>> forward(m, np.zeros((10, 2, 3))).h.shape
    (10, 2, 5)
    """
    x, h0, c0, lengths, masks = _check_inputs(model, x, state0, lengths, batch_first, dropout_masks)
    return Trace(model, x, tuple(_run_forward(model, x, h0, c0, lengths, masks)), lengths=lengths,
                 dropout_masks=masks)


def bptt(model: RNNModel, x, grad_h, state0=None, *, param_grads: bool = True, lengths=None,
         batch_first: bool = False, dropout_masks=None, grad_state_n=None) -> Trace:
    """Forward, then exact backpropagation through time of a loss whose gradient on the outputs is ``grad_h``.

    ``grad_h`` (T, B, D*H) is ``dL/dh_t`` of the last layer's output as the loss sees it (zeros where it does not
    look; ignored past a sequence's length), or None for zeros. ``grad_state_n`` is the loss's gradient on the
    final states: ``dL/dh_n`` (L*D, B, H), or ``(dL/dh_n, dL/dc_n)`` for an LSTM (either may be None). The
    returned :class:`Trace` carries the total ``grad_h`` (carried through time), ``grad_c`` (LSTM), ``grad_x``,
    ``grad_h0``/``grad_c0`` and, unless ``param_grads=False``, ``param_grads``. ``state0``, ``lengths``,
    ``batch_first`` (which applies to ``grad_h`` too) and ``dropout_masks`` as in :func:`forward`.

    >>> from rnndiag import init_model
    >>> m = init_model("lstm", 3, 5, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((20, 4, 3))
    >>> g = np.zeros((20, 4, 5)); g[-1] = 1.0          # L = sum of h_T
    >>> tr = bptt(m, x, g)
    >>> tr.param_grads["weight_hh_l0"].shape, tr.step_jacobian(5).shape
    ((20, 5), (4, 10, 10))
    """
    trace = forward(model, x, state0, lengths=lengths, batch_first=batch_first, dropout_masks=dropout_masks)
    return backward(trace, _time_major(grad_h, "grad_h", batch_first), param_grads=param_grads,
                    grad_state_n=grad_state_n)


def _final_grads(model: RNNModel, grad_state_n, B: int):
    """``(dL/dh_n, dL/dc_n)`` checked, each (L*D, B, size) or None."""
    if grad_state_n is None:
        return None, None
    LD = model.num_layers * model.num_directions
    if model.has_cell_state:
        if not isinstance(grad_state_n, (tuple, list)) or len(grad_state_n) != 2:
            raise TypeError("grad_state_n for an LSTM must be the tuple (dL/dh_n, dL/dc_n) (either may be None)")
        g_h, g_c = grad_state_n
    else:
        if isinstance(grad_state_n, tuple):
            raise TypeError(f"grad_state_n for a {model.cell} is dL/dh_n of shape ({LD}, {B}, "
                            f"{model.output_size}), not a tuple")
        g_h, g_c = grad_state_n, None
    g_h = None if g_h is None else check_array(g_h, "grad_state_n h_n", (LD, B, model.output_size), model.dtype)
    g_c = None if g_c is None else check_array(g_c, "grad_state_n c_n", (LD, B, model.hidden_size), model.dtype)
    return g_h, g_c


def _at_last_steps(values: np.ndarray, lengths: np.ndarray | None, T: int) -> np.ndarray:
    """A (T, B, K) array of zeros holding ``values`` (B, K) at each sequence's last step."""
    out = np.zeros((T, *values.shape), values.dtype)
    if lengths is None:
        out[-1] = values
    else:
        out[lengths - 1, np.arange(values.shape[0])] = values
    return out


def backward(trace: Trace, grad_h, *, param_grads: bool = True, grad_state_n=None) -> Trace:
    """Backpropagation through time on a recorded forward ``trace`` (from :func:`forward`); see :func:`bptt`.

    Lets a caller look at the outputs before choosing the loss (as a training loop does) without running the
    forward pass twice. The forward trace is not modified; a new :class:`Trace` with the gradients is returned.
    ``grad_h`` is time-major (T, B, D*H) here.
    """
    if not isinstance(trace, Trace):
        raise TypeError(f"trace must be a Trace from rnndiag.forward; got {type(trace).__name__}")
    model, x, lengths, masks = trace.model, trace.x, trace.lengths, trace.dropout_masks
    T, B, _ = x.shape
    D, P = model.num_directions, model.output_size
    if grad_h is None:
        grad_h = np.zeros((T, B, D * P), model.dtype)
    grad_h = check_array(grad_h, "grad_h", (T, B, D * P), model.dtype)
    pad = padding_mask(lengths, T)
    if pad is not None:  # the loss cannot see outputs past a sequence's length (they are padding)
        grad_h = np.where(pad[:, :, None], 0.0, grad_h).astype(model.dtype, copy=False)
    final_h, final_c = _final_grads(model, grad_state_n, B)
    layers = trace.layers
    mod = cell_module(model.cell)
    kwargs = cell_kwargs(model.cell)
    grads: dict[str, np.ndarray] = {}
    grad_h0 = np.empty((len(layers), B, P), model.dtype)
    grad_c0 = np.empty((len(layers), B, model.hidden_size), model.dtype) if model.has_cell_state else None
    direct = grad_h  # (T, B, D*P): the gradient on this layer's output, time order
    out_layers: list[LayerTrace] = [None] * len(layers)  # type: ignore[list-item]
    grad_x = None
    for layer in range(model.num_layers - 1, -1, -1):
        backs = []
        for d in range(D):
            k = layer * D + d
            back = _backward_direction(model, layers[k], direct, final_h, final_c, lengths, mod, kwargs)
            grad_h0[k] = back["grad_h0"]
            if grad_c0 is not None:
                grad_c0[k] = back["grad_c0"]
            backs.append(back)
            lt = layers[k]
            out_layers[k] = LayerTrace(lt.cell, lt.layer, lt.w_hh, lt.h0, lt.c0, lt.arrays, back["grad_h"],
                                       back.get("grad_c"), lt.direction, lt.w_hr, lt.lengths)
        # the input side of both directions at once, time order: one product for the input gradient, one for
        # the input weights'. d_pre is dL/d(W_ih x_t + b_ih), (T, B, G*H) in each direction's processing order.
        d_cat = _concat([b["d_pre"] if d == 0 else reverse_time(b["d_pre"], lengths) for d, b in enumerate(backs)])
        d_cat_2d = d_cat.reshape(T * B, -1)  # (T*B, D*G*H)
        w_ihs = [model.layer_params(layer, d)[0] for d in range(D)]
        layer_input = _layer_input(x, layers, masks, model, layer)
        I = layer_input.shape[2]
        below = (d_cat_2d @ (w_ihs[0] if D == 1 else np.concatenate(w_ihs))).reshape(T, B, I)
        if param_grads:
            g_ih = d_cat_2d.T @ layer_input.reshape(T * B, I)  # (D*G*H, T*B) @ (T*B, I)
            b_sum = d_cat_2d.sum(axis=0) if model.bias else None  # a column sum, not a ones column: peak memory
            del d_cat, d_cat_2d
            rows = w_ihs[0].shape[0]
            for d, back in enumerate(backs):
                lt, sfx = out_layers[layer * D + d], f"_l{layer}" + ("_reverse" if d else "")
                grads[f"weight_ih{sfx}"] = g_ih[d * rows : (d + 1) * rows]
                if b_sum is not None:
                    grads[f"bias_ih{sfx}"] = b_sum[d * rows : (d + 1) * rows]
                # dL/d(W_hh h_{t-1} + b_hh): d_pre itself except for a GRU, whose cell turns d_pre into it in
                # place -- so last, after the products above have read d_pre
                d_rec = mod.recurrent_grad(lt.arrays, back["d_pre"])
                grads[f"weight_hh{sfx}"] = _recurrent_weight_grad(d_rec, lt)
                if b_sum is not None:
                    grads[f"bias_hh{sfx}"] = grads[f"bias_ih{sfx}"].copy() if mod.HIDDEN_BIAS_FOLDED else \
                        d_rec.reshape(T * B, -1).sum(axis=0)
                if "grad_w_hr" in back:
                    grads[f"weight_hr{sfx}"] = back["grad_w_hr"]
        del backs
        if layer == 0:
            grad_x = below
        else:
            direct = below * masks[layer - 1] if masks is not None else below
    if param_grads:
        grads = {k: np.ascontiguousarray(grads[k], dtype=model.dtype) for k in model.params}
    return Trace(model, x, tuple(out_layers), grad_x, grad_h0, grad_c0, grads if param_grads else None, lengths,
                 masks)


def _backward_direction(model: RNNModel, lt: LayerTrace, direct, final_h, final_c, lengths, mod, kwargs) -> dict:
    """The cell's BPTT over one direction of one layer, from the gradient on the layer's output (time order),
    plus the loss's gradient on its final states at each sequence's last step."""
    T, P, k = direct.shape[0], model.output_size, lt.layer * model.num_directions + lt.direction
    w_hh, w_hr = model.layer_params(lt.layer, lt.direction)[1], model.projection(lt.layer, lt.direction)
    seen = direct[:, :, lt.direction * P : (lt.direction + 1) * P]
    seen = seen if lt.direction == 0 else reverse_time(seen, lengths)  # processing order
    if final_h is not None:  # dL/dh_n lands on each sequence's last step
        seen = seen + _at_last_steps(final_h[k], lengths, T)
    extra = _proj_kwargs(w_hr)
    if final_c is not None:
        extra["grad_c"] = _at_last_steps(final_c[k], lengths, T)
    return mod.backward(lt.arrays, lt.h0, lt.c0, w_hh, seen, **kwargs, **extra)


def _recurrent_weight_grad(d_rec: np.ndarray, lt: LayerTrace) -> np.ndarray:
    """``dL/dW_hh`` from the gradient on the recurrent pre-activations (processing order): ``W_hh`` sees
    h_{t-1}: h0 at t = 0, then h_0 .. h_{T-2}; one product over all steps."""
    T, B, G = d_rec.shape
    g_hh = d_rec[0].T @ lt.h0
    if T > 1:
        g_hh += d_rec[1:].reshape((T - 1) * B, G).T @ lt.h[:-1].reshape((T - 1) * B, -1)
    return g_hh
