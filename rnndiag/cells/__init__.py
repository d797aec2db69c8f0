"""Recurrent cells as pure functions over arrays, in PyTorch's parameter layout.

Each cell module has the same five functions, all batched over ``B``:

``forward(pre, h0, c0, w_hh, b_hh)``
    Runs the recurrence. ``pre`` (T, B, G*H) holds every timestep's input projection
    ``x_t @ W_ih.T + b_ih (+ b_hh where the cell allows folding it in)``, computed by the engine in one matrix
    product; the cell overwrites it in place with the gate activations it needs later. Returns a dict of the
    arrays that define the step Jacobians (all O(T*B*H)).
``backward(arrays, h0, c0, w_hh, grad_h)``
    Backpropagation through time. ``grad_h`` (T, B, H) is the loss's direct gradient on each output; returns
    the total ``dL/dh_t`` (and ``dL/dc_t``), the gradient on the gates' pre-activations (from which the engine
    forms every weight gradient in one product per weight) and the gradient on the initial state.
``jvp(arrays, h0, c0, w_hh, t, v)`` / ``vjp(arrays, h0, c0, w_hh, t, u)``
    ``J_t v`` and ``u^T J_t`` for ``J_t = d s_t / d s_{t-1}``, batched: ``v``, ``u`` are (B, S).
``step_jacobian(arrays, h0, c0, w_hh, t, batch)``
    ``J_t`` itself for the batch elements ``batch``: (len(batch), S, S). Formed only on request.

The state ``s`` is ``h`` for RNN and GRU and the stacked ``[h; c]`` (size 2H) for LSTM.
"""

from __future__ import annotations

from types import ModuleType

from . import gru, lstm, rnn

__all__ = ["cell_module", "gru", "lstm", "rnn"]


def cell_module(cell: str) -> ModuleType:
    """The module implementing ``cell`` (a canonical cell name)."""
    return {"rnn_tanh": rnn, "rnn_relu": rnn, "lstm": lstm, "gru": gru}[cell]
