"""Recurrent cells as pure functions over arrays, in PyTorch's parameter layout.

Each cell module states what it is in constants, which the rest of the package derives everything from (through
:func:`cell_module`; no other module retypes them):

``GATE_NAMES``
    The gate blocks of ``W_ih``/``W_hh`` in PyTorch's order (their count is G); ``("h",)`` for the RNN.
``CANDIDATE_GATE``
    The block whose nonlinearity makes the new content (LSTM g, GRU n; the RNN's only block): its ``W_hh`` block
    is the matrix whose spectrum the analysis reports first.
``MEMORY_GATE``
    The gate that keeps the state (LSTM f, GRU z), or None for a cell without gates.
``MEMORY_GATE_NAME``
    That gate's name in words ("forget", "update"), or None.
``FORGET_GATE``
    The gate whose bias ``forget_bias`` sets (LSTM f), or None.
``STATE_NAMES`` and ``STATE_FACTOR``
    The arrays that make the state ``s`` (``("h", "c")`` for the LSTM) and their number: S = STATE_FACTOR * H.
``HIDDEN_BIAS_FOLDED``
    Whether ``b_hh`` goes into ``pre`` whole (then its gradient is ``b_ih``'s); ``folded_bias(b_ih, b_hh)`` is the
    bias that does.
``GAMMA``
    ``max |phi'|`` of the nonlinearity that multiplies ``W_hh`` in the step Jacobian, or None where no single
    factor bounds it (gated cells: the additive memory path).

and the same functions, all batched over ``B``:

``rmatmul_flops(H)``
    The cost of one ``rmatmul`` of an (S, S) block, for budgeting products of many Jacobians.
``GATE_SCALE``
    One factor per gate block (PyTorch's gate order), a power of two: the engine multiplies the rows of ``W_ih``,
    of the bias folded into ``pre`` and of ``W_hh`` that ``forward`` receives by it (exact in floating point).
    Gated cells use 1/2 on their sigmoid gates, so ``forward`` gets ``a/2`` and evaluates
    ``sigma(a) = (1 + tanh(a/2)) / 2`` with the same vectorized ``tanh`` it uses for the other gates. Everything
    else (``backward``, the stored arrays, the Jacobians) works with the unscaled ``W_hh`` and pre-activations.
``forward(pre, h0, c0, w_hh, b_hh)``
    Runs the recurrence. ``pre`` (T, B, G*H) holds every timestep's input projection
    ``x_t @ W_ih.T + b_ih (+ b_hh where the cell allows folding it in)``, each gate block times ``GATE_SCALE``,
    computed by the engine in one matrix product; ``w_hh`` is scaled alike. The cell overwrites ``pre`` in place
    with the gate activations it needs later (stored in PyTorch's gate order). Returns a dict of the arrays that
    define the step Jacobians (all O(T*B*H)).
``backward(arrays, h0, c0, w_hh, grad_h)``
    Backpropagation through time, with the unscaled ``w_hh``. ``grad_h`` (T, B, H) is the loss's direct gradient
    on each output; returns the total ``dL/dh_t`` (and ``dL/dc_t``), the gradient on the gates' pre-activations
    (``d_pre``, from which the engine forms ``W_ih``'s gradient and the input gradient in one product each) and
    the gradient on the initial state.
``recurrent_grad(arrays, d_pre)``
    The gradient on the recurrent pre-activations ``W_hh h_{t-1} + b_hh`` (for ``W_hh``'s gradient, one
    product): ``d_pre`` itself, except for the GRU, where ``b_hn`` sits inside ``r * (...)``; it overwrites
    ``d_pre`` in place, so the engine calls it last.
``jacobian_factors(arrays, h0, c0, t, batch)``
    The diagonal factors that, with ``w_hh``, define ``J_t = d s_t / d s_{t-1}`` for the steps ``t`` (an int, or a
    1-D index array) and batch rows ``batch`` (an index array, or None for all): a tuple of (..., H) arrays. The
    Jacobians stay implicit: O(H) numbers per step and row instead of S*S.
``jvp_rows(factors, w_hh, v)`` / ``vjp_rows(factors, w_hh, u)``
    ``J v`` and ``u^T J`` for stacks of row vectors (..., S) whose leading axes broadcast against the factors';
    the weight product is one 2-D matrix product over all rows.
``formed_part(factors, w_hh)``
    The dense part of ``J`` that ``rmatmul`` and ``matmul`` multiply by (LSTM: the left block column (..., 2H, H);
    GRU: J itself), or None (RNN: ``W_hh`` with scaled rows is never formed). Formed for many steps in one go, by
    one product batched over the units, it spares them their per-step elementwise work.
``rmatmul(factors, w_hh, m, out=None, formed=None)``
    ``m J`` for blocks of row vectors ``m`` (..., R, S), by whichever route costs the fewest flops for the cell
    (for products of many Jacobians); written into ``out`` (not overlapping ``m``) when given, so that a long
    product can alternate between two buffers instead of allocating (and page-faulting) a new one per step;
    ``formed`` is ``formed_part`` of the same Jacobians, when already at hand.
``matmul(factors, w_hh, x, out=None, formed=None)``
    ``J x`` for blocks of column vectors ``x`` (..., S, K) (a Lyapunov frame), through ``formed`` likewise.
``dense_jacobian(factors, w_hh)``
    ``J`` itself, (..., S, S). Formed only on request.

The state ``s`` is ``h`` for RNN and GRU and the stacked ``[h; c]`` (size 2H) for LSTM.
"""

from __future__ import annotations

from types import ModuleType

from . import gru, lstm, rnn

__all__ = ["CELLS", "CELL_ALIASES", "cell_kwargs", "cell_module", "gate_rows", "gru", "is_gated", "lstm",
           "nonlinearity", "rnn"]

# canonical cell name -> (module, the keyword arguments its forward/backward/jacobian_factors take)
_CELLS = {
    "rnn_tanh": (rnn, {"nonlinearity": "tanh"}),
    "rnn_relu": (rnn, {"nonlinearity": "relu"}),
    "lstm": (lstm, {}),
    "gru": (gru, {}),
}
CELLS = tuple(_CELLS)
CELL_ALIASES = {"rnn": "rnn_tanh", "tanh": "rnn_tanh", "relu": "rnn_relu", "elman": "rnn_tanh"}


def cell_module(cell: str) -> ModuleType:
    """The module implementing ``cell`` (a canonical cell name)."""
    return _CELLS[cell][0]


def cell_kwargs(cell: str) -> dict[str, str]:
    """The keyword arguments ``cell``'s module functions take besides the arrays (the RNN's nonlinearity)."""
    return dict(_CELLS[cell][1])


def nonlinearity(cell: str) -> str:
    """``tanh`` or ``relu`` for RNN cells; ``tanh`` (of the candidate) for gated cells."""
    return _CELLS[cell][1].get("nonlinearity", "tanh")


def gate_rows(cell: str, gate: str, hidden_size: int) -> slice:
    """The rows of gate block ``gate`` in ``cell``'s stacked weights and biases (PyTorch's gate order)."""
    k = cell_module(cell).GATE_NAMES.index(gate)
    return slice(k * hidden_size, (k + 1) * hidden_size)


def is_gated(cell: str) -> bool:
    """Whether a gate keeps the state (LSTM, GRU)."""
    return cell_module(cell).MEMORY_GATE is not None
