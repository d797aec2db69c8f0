"""Forward passes and exact backpropagation through time over stacked layers, and the Trace they record.

Data flow: ``forward(model, x)`` -> :class:`Trace` (activations and gates: everything that defines the step
Jacobians, O(T*B*H)); ``bptt(model, x, grad_h)`` adds the total gradients ``dL/dh_t`` (``dL/dc_t``), the input and
initial-state gradients and every parameter gradient.

Per layer the work is: one matrix product for all timesteps' input projections ``(T*B, I) @ (I, G*H)``; the
recurrence (the only Python loop, in the cell module); after the backward sweep, one product per weight for its
gradient over all timesteps and one for the gradient passed to the layer below.
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

    @property
    def shape(self) -> tuple[int, ...]:
        """``lead``: the (steps, rows) layout of the Jacobians held."""
        return self.factors[0].shape[:-1]

    @property
    def state_size(self) -> int:
        return cell_module(self.cell).STATE_FACTOR * self.factors[0].shape[-1]

    def __getitem__(self, i) -> StepJacobians:
        """The Jacobians of one step (or a slice of steps) of a multi-step block."""
        return StepJacobians(self.cell, self.w_hh, tuple(f[i] for f in self.factors),
                             None if self.formed is None else self.formed[i])

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
        return cell_module(self.cell).jvp_rows(self._broadcast(v), self.w_hh, v)

    def vjp(self, u: np.ndarray) -> np.ndarray:
        """``u^T J`` for each row vector of ``u`` (lead..., [k...], S)."""
        return cell_module(self.cell).vjp_rows(self._broadcast(u), self.w_hh, u)

    def astype(self, dtype) -> StepJacobians:
        """The same Jacobians with factors and weights in ``dtype``."""
        return StepJacobians(self.cell, self.w_hh.astype(dtype, copy=False),
                             tuple(f.astype(dtype, copy=False) for f in self.factors),
                             None if self.formed is None else self.formed.astype(dtype, copy=False))

    def with_formed(self) -> StepJacobians:
        """The same Jacobians with the dense part that ``rmatmul`` and ``matmul`` multiply by formed for all of
        them at once (O(S H) memory per Jacobian): for products over many steps, a few steps at a time."""
        if self.formed is not None:
            return self
        return StepJacobians(self.cell, self.w_hh, self.factors,
                             cell_module(self.cell).formed_part(self.factors, self.w_hh))

    def _check_block(self, a: np.ndarray, name: str, state_axis: int, layout: tuple) -> None:
        """A block of vectors per Jacobian: ``lead`` axes, then two, one of them (``state_axis``) of size S."""
        if a.ndim != len(self.shape) + 2 or a.shape[: len(self.shape)] != self.shape or \
                a.shape[state_axis] != self.state_size:
            raise ValueError(f"{name} must have shape {layout}; got {a.shape}")

    def rmatmul(self, m: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``m @ J`` for a block of row vectors per Jacobian, ``m`` (lead..., R, S); into ``out`` (same shape,
        not overlapping ``m``) when given."""
        self._check_block(m, "m", -1, (*self.shape, "R", self.state_size))
        return cell_module(self.cell).rmatmul(self.factors, self.w_hh, m, out, self.formed)

    def matmul(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``J @ x`` for a block of column vectors per Jacobian, ``x`` (lead..., S, K); into ``out`` (same shape,
        not overlapping ``x``) when given."""
        self._check_block(x, "x", -2, (*self.shape, self.state_size, "K"))
        return cell_module(self.cell).matmul(self.factors, self.w_hh, x, out, self.formed)

    def dense(self) -> np.ndarray:
        """The Jacobians themselves, (lead..., S, S)."""
        return cell_module(self.cell).dense_jacobian(self.factors, self.w_hh)


@dataclass(frozen=True)
class LayerTrace:
    """What one layer recorded. ``arrays`` holds the cell's activations (see the cell module's ``forward``)."""

    cell: str
    layer: int
    w_hh: np.ndarray  # (G*H, H), the weights the Jacobians use
    h0: np.ndarray  # (B, H)
    c0: np.ndarray | None  # (B, H) for LSTM
    arrays: dict[str, np.ndarray] = field(repr=False)
    grad_h: np.ndarray | None = field(default=None, repr=False)  # (T, B, H) total dL/dh_t
    grad_c: np.ndarray | None = field(default=None, repr=False)  # (T, B, H) total dL/dc_t (LSTM)

    @property
    def h(self) -> np.ndarray:
        return self.arrays["h"]

    @property
    def c(self) -> np.ndarray | None:
        return self.arrays.get("c")

    @property
    def hidden_size(self) -> int:
        return self.h0.shape[1]

    @property
    def state_size(self) -> int:
        return cell_module(self.cell).STATE_FACTOR * self.hidden_size

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
                            mod.jacobian_factors(self.arrays, self.h0, self.c0, t, idx, **cell_kwargs(self.cell)))
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

    @staticmethod
    def _stacked(parts: list[np.ndarray]) -> np.ndarray:
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    @property
    def nbytes(self) -> int:
        arrays = [*self.arrays.values(), self.grad_h, self.grad_c]
        return int(sum(a.nbytes for a in arrays if a is not None))


@dataclass(frozen=True)
class Trace:
    """A forward (and, after :func:`bptt`, backward) pass over a sequence.

    ``h`` (T, B, H) is the last layer's output; ``grad_h`` (T, B, H) its total ``dL/dh_t``; ``layers`` holds
    every layer's record. ``param_grads`` is keyed like the weights.
    """

    model: RNNModel = field(repr=False)
    x: np.ndarray = field(repr=False)  # (T, B, I)
    layers: tuple[LayerTrace, ...] = field(repr=False)
    grad_x: np.ndarray | None = field(default=None, repr=False)  # (T, B, I)
    grad_h0: np.ndarray | None = field(default=None, repr=False)  # (L, B, H)
    grad_c0: np.ndarray | None = field(default=None, repr=False)  # (L, B, H), LSTM
    param_grads: dict[str, np.ndarray] | None = field(default=None, repr=False)

    @property
    def seq_len(self) -> int:
        return self.x.shape[0]

    @property
    def batch_size(self) -> int:
        return self.x.shape[1]

    @property
    def h(self) -> np.ndarray:
        return self.layers[-1].h

    @property
    def c(self) -> np.ndarray | None:
        return self.layers[-1].c

    @property
    def grad_h(self) -> np.ndarray | None:
        return self.layers[-1].grad_h

    @property
    def grad_c(self) -> np.ndarray | None:
        return self.layers[-1].grad_c

    @property
    def h_n(self) -> np.ndarray:
        """Final hidden state of every layer (L, B, H), as PyTorch returns it."""
        return np.stack([lt.h[-1] for lt in self.layers])

    @property
    def c_n(self) -> np.ndarray | None:
        if not self.model.has_cell_state:
            return None
        return np.stack([lt.arrays["c"][-1] for lt in self.layers])

    def state0_after(self, t: int):
        """The ``state0`` (``h`` (L, B, H), or ``(h, c)`` with a cell state) that continues this run after step
        ``t``: running the model on ``x[t + 1:]`` from it gives the same states as this run."""
        h = np.stack([lt.h[t] for lt in self.layers])
        return (h, np.stack([lt.c[t] for lt in self.layers])) if self.model.has_cell_state else h

    def step_jacobian(self, t: int, layer: int = -1, batch=None) -> np.ndarray:
        """``d s_t / d s_{t-1}`` of one layer at step ``t``: (B, S, S) (or the rows ``batch``)."""
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
            raise IndexError(f"layer={layer!r} is out of range for a {L}-layer model (use 0..{L - 1} or -1)")
        return self.layers[layer]

    @property
    def nbytes(self) -> int:
        """Bytes held by the recorded arrays (O(T*B*H))."""
        extra = [self.grad_x, self.grad_h0, self.grad_c0]
        return sum(lt.nbytes for lt in self.layers) + int(sum(a.nbytes for a in extra if a is not None))


# ----------------------------------------------------------------------------------------------------------------
def _check_inputs(model: RNNModel, x, state0):
    if not isinstance(model, RNNModel):
        raise TypeError(f"model must be an RNNModel (from init_model or load_weights); got {type(model).__name__}")
    dtype = model.dtype
    x = check_array(x, "x", ("T", "B", model.input_size), dtype, copy=True)  # the trace keeps its own inputs
    T, B, _ = x.shape
    L, H = model.num_layers, model.hidden_size
    if state0 is None:
        h0 = np.zeros((L, B, H), dtype)
        c0 = np.zeros((L, B, H), dtype) if model.has_cell_state else None
    elif model.has_cell_state:
        if not isinstance(state0, (tuple, list)) or len(state0) != 2:
            raise TypeError("state0 for an LSTM must be the tuple (h0, c0), each of shape (num_layers, B, H)")
        h0 = check_array(state0[0], "state0 h0", (L, B, H), dtype, copy=True)
        c0 = check_array(state0[1], "state0 c0", (L, B, H), dtype, copy=True)
    else:
        if isinstance(state0, tuple):
            raise TypeError(f"state0 for a {model.cell} is h0 of shape ({L}, {B}, {H}), not a tuple")
        h0 = check_array(state0, "state0", (L, B, H), dtype, copy=True)
        c0 = None
    return x, h0, c0


def _forward_weights(mod, w_ih, w_hh, b_ih, b_hh):
    """``W_ih``, the bias folded into the input projection, and ``W_hh`` as the cell's ``forward`` takes them.

    Each gate block's rows are multiplied by the cell module's ``GATE_SCALE`` (powers of two, so exactly). The
    bias is the cell's ``folded_bias`` (``b_ih + b_hh``, except a GRU's n block: ``b_hn`` sits inside
    ``r * (W_hn h + b_hn)`` and ``forward`` adds it per step).
    """
    H = w_hh.shape[1]
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


def _run_forward(model: RNNModel, x, h0, c0) -> list[LayerTrace]:
    layers = []
    layer_input = x
    kwargs = cell_kwargs(model.cell)
    mod = cell_module(model.cell)
    for layer in range(model.num_layers):
        w_ih, w_hh, b_ih, b_hh = model.layer_params(layer)
        w_ih_f, b_f, w_hh_f = _forward_weights(mod, w_ih, w_hh, b_ih, b_hh)
        pre = _input_projection(layer_input, w_ih_f, b_f)
        c0_l = c0[layer] if c0 is not None else None
        arrays = mod.forward(pre, h0[layer], c0_l, w_hh_f, b_hh, **kwargs)
        layers.append(LayerTrace(model.cell, layer, w_hh, h0[layer], c0_l, arrays))
        layer_input = arrays["h"]
    return layers


def forward(model: RNNModel, x, state0=None) -> Trace:
    """Run ``model`` over ``x`` (T, B, I) and record what the Jacobians need; no gradients.

    >>> from rnndiag import init_model
    >>> m = init_model("gru", 3, 5, seed=0)
    >>> forward(m, np.zeros((10, 2, 3))).h.shape
    (10, 2, 5)
    """
    x, h0, c0 = _check_inputs(model, x, state0)
    return Trace(model, x, tuple(_run_forward(model, x, h0, c0)))


def bptt(model: RNNModel, x, grad_h, state0=None, *, param_grads: bool = True) -> Trace:
    """Forward, then exact backpropagation through time of a loss whose gradient on the outputs is ``grad_h``.

    ``grad_h`` (T, B, H) is ``dL/dh_t`` of the last layer's output as the loss sees it (zeros where it does not
    look). The returned :class:`Trace` carries the total ``grad_h`` (carried through time), ``grad_c`` (LSTM),
    ``grad_x``, ``grad_h0``/``grad_c0`` and, unless ``param_grads=False``, ``param_grads``.

    >>> from rnndiag import init_model
    >>> m = init_model("lstm", 3, 5, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((20, 4, 3))
    >>> g = np.zeros((20, 4, 5)); g[-1] = 1.0          # L = sum of h_T
    >>> tr = bptt(m, x, g)
    >>> tr.param_grads["weight_hh_l0"].shape, tr.step_jacobian(5).shape
    ((20, 5), (4, 10, 10))
    """
    return backward(forward(model, x, state0), grad_h, param_grads=param_grads)


def backward(trace: Trace, grad_h, *, param_grads: bool = True) -> Trace:
    """Backpropagation through time on a recorded forward ``trace`` (from :func:`forward`); see :func:`bptt`.

    Lets a caller look at the outputs before choosing the loss (as a training loop does) without running the
    forward pass twice. The forward trace is not modified; a new :class:`Trace` with the gradients is returned.
    """
    if not isinstance(trace, Trace):
        raise TypeError(f"trace must be a Trace from rnndiag.forward; got {type(trace).__name__}")
    model, x = trace.model, trace.x
    T, B, _ = x.shape
    grad_h = check_array(grad_h, "grad_h", (T, B, model.hidden_size), model.dtype)
    layers = trace.layers
    h0 = np.stack([lt.h0 for lt in layers])
    c0 = np.stack([lt.c0 for lt in layers]) if model.has_cell_state else None
    mod = cell_module(model.cell)
    kwargs = cell_kwargs(model.cell)
    grads: dict[str, np.ndarray] = {}
    grad_h0 = np.empty_like(h0)
    grad_c0 = np.empty_like(c0) if c0 is not None else None
    direct = grad_h
    out_layers: list[LayerTrace] = [None] * model.num_layers  # type: ignore[list-item]
    grad_x = None
    for layer in range(model.num_layers - 1, -1, -1):
        lt = layers[layer]
        w_ih, w_hh, b_ih, b_hh = model.layer_params(layer)
        back = mod.backward(lt.arrays, lt.h0, lt.c0, w_hh, direct, **kwargs)
        d_pre = back["d_pre"]  # (T, B, G*H): dL/d(W_ih x_t + b_ih)
        G = d_pre.shape[2]
        layer_input = x if layer == 0 else layers[layer - 1].h
        I = layer_input.shape[2]
        d_pre_2d = d_pre.reshape(T * B, G)
        input_2d = layer_input.reshape(T * B, I)
        grad_h0[layer] = back["grad_h0"]
        if grad_c0 is not None:
            grad_c0[layer] = back["grad_c0"]
        # gradient on this layer's input: one product over all timesteps
        below = (d_pre_2d @ w_ih).reshape(T, B, I)  # (T*B, G*H) @ (G*H, I)
        if param_grads:
            grads[f"weight_ih_l{layer}"] = d_pre_2d.T @ input_2d  # (G*H, T*B) @ (T*B, I)
            if b_ih is not None:  # a column sum, not a copy of the input with a ones column: peak memory matters
                grads[f"bias_ih_l{layer}"] = d_pre_2d.sum(axis=0)
            # dL/d(W_hh h_{t-1} + b_hh): d_pre itself except for a GRU, whose cell turns d_pre into it in place
            d_rec = mod.recurrent_grad(lt.arrays, d_pre)
            d_rec_2d = d_rec.reshape(T * B, G)
            # W_hh sees h_{t-1}: h0 at t = 0, then h_0 .. h_{T-2}
            g_hh = d_rec[0].T @ lt.h0
            if T > 1:
                g_hh += d_rec_2d[B:].T @ lt.h[:-1].reshape((T - 1) * B, -1)
            grads[f"weight_hh_l{layer}"] = g_hh
            if b_ih is not None:
                grads[f"bias_hh_l{layer}"] = grads[f"bias_ih_l{layer}"].copy() if mod.HIDDEN_BIAS_FOLDED else \
                    d_rec_2d.sum(axis=0)
        if layer == 0:
            grad_x = below
        else:
            direct = below
        out_layers[layer] = LayerTrace(lt.cell, lt.layer, lt.w_hh, lt.h0, lt.c0, lt.arrays,
                                       back["grad_h"], back.get("grad_c"))
    if param_grads:
        grads = {k: np.ascontiguousarray(grads[k], dtype=model.dtype) for k in model.params}
    return Trace(model, x, tuple(out_layers), grad_x, grad_h0, grad_c0, grads if param_grads else None)
