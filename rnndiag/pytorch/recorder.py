"""The recorder: forward hooks on every ``nn.RNN/nn.LSTM/nn.GRU`` of a user's model that copy, at the forward,
what a replay needs -- the module's real input (a ``PackedSequence``'s ``.data`` with its batch sizes and order),
its initial state and its weights -- and keep its output, ``h_n`` and ``c_n`` tensors so that the gradient of the
real loss with respect to them can be taken afterwards.

Why a forward hook and not ``register_full_backward_hook``: on ``nn.LSTM`` a full backward hook loses the
gradients of ``h_n``/``c_n`` and never fires for packed input, and weights read after ``optimizer.step()`` are not
the ones that made the gradient. The forward hook copies the weights before any step, and the gradients are taken
on the tensors the module returned (:func:`capture` with ``torch.autograd.grad``, so the user's ``.grad`` stays
as it was).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from .._version import __version__
from ..capture import Capture, CaptureError, ModuleCapture, check_module_capture, stage_of

RECURRENT_TYPES = (nn.RNN, nn.LSTM, nn.GRU)


def recurrent_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of every ``nn.RNN/nn.LSTM/nn.GRU`` inside ``model`` (the model itself: path ``""``)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, RECURRENT_TYPES)]


def _cell(module: nn.Module) -> str:
    if isinstance(module, nn.LSTM):
        return "lstm"
    if isinstance(module, nn.GRU):
        return "gru"
    return "rnn_relu" if module.nonlinearity == "relu" else "rnn_tanh"


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A detached CPU copy as numpy (bfloat16, which numpy lacks, as float32)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.cpu().numpy().copy()


@dataclass
class RecordedCall:
    """One forward call of one recurrent module: copies of its inputs and weights, and the tensors it returned
    (whose gradients :meth:`module_capture` turns into a :class:`~rnndiag.capture.ModuleCapture`)."""

    name: str
    module: nn.Module = field(repr=False)
    x: np.ndarray = field(repr=False)  # (T, B, I) time-major, padded for packed input
    lengths: np.ndarray | None = field(repr=False)
    h0: np.ndarray | None = field(repr=False)
    c0: np.ndarray | None = field(repr=False)
    params: dict[str, np.ndarray] = field(repr=False)
    output: torch.Tensor = field(repr=False)  # the output's data tensor (a packed output's .data)
    h_n: torch.Tensor = field(repr=False)
    c_n: torch.Tensor | None = field(repr=False)
    packed: PackedSequence | None = field(repr=False)  # the input's packing (batch sizes and order)
    unbatched: bool = False
    weights_dtype: str = "float32"

    def grad_targets(self) -> list[torch.Tensor]:
        """The tensors whose gradients the loss sends back: output, h_n (and c_n)."""
        return [self.output, self.h_n] + ([self.c_n] if self.c_n is not None else [])

    def _sequence(self, grad: torch.Tensor | None) -> np.ndarray:
        """A gradient on the output as (T, B, D*P) time-major, zeros where the loss does not look."""
        if grad is None:
            grad = torch.zeros_like(self.output)
        grad = grad.detach()
        if self.packed is not None:
            p = self.packed
            grad, _ = pad_packed_sequence(PackedSequence(grad, p.batch_sizes, p.sorted_indices, p.unsorted_indices))
        elif self.unbatched:
            grad = grad.unsqueeze(1)
        elif self.module.batch_first:
            grad = grad.transpose(0, 1)
        return _numpy(grad).astype(np.float64 if grad.dtype == torch.float64 else np.float32, copy=False)

    def _state(self, grad: torch.Tensor | None) -> np.ndarray | None:
        if grad is None:
            return None
        grad = grad.detach()
        return _numpy(grad.unsqueeze(1) if self.unbatched else grad)

    def module_capture(self, grads: list[torch.Tensor | None]) -> ModuleCapture:
        """This call with the loss's gradients on ``grad_targets()`` (None where the loss does not use one)."""
        m = self.module
        mc = ModuleCapture(
            self.name, _cell(m), self.params, self.x, self._sequence(grads[0]), lengths=self.lengths, h0=self.h0,
            c0=self.c0, grad_h_n=self._state(grads[1]), grad_c_n=self._state(grads[2]) if len(grads) > 2 else None,
            batch_first=bool(m.batch_first), packed=self.packed is not None, training=bool(m.training),
            dropout=float(m.dropout), weights_dtype=self.weights_dtype)
        return check_module_capture(mc, f"module {self.name!r}")


class Recorder:
    """Forward hooks on every recurrent module of ``model`` (use as a context manager, or :meth:`attach` /
    :meth:`detach`). Each forward call of one appends a :class:`RecordedCall` to :attr:`calls`; a module called
    several times in one forward is recorded once per call (``name``, ``name#1``, ...). The hooks copy inputs and
    weights only; they change nothing in the model or its outputs."""

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        self.model = model
        self.targets = recurrent_modules(model)
        if not self.targets:
            raise CaptureError(f"the model ({type(model).__name__}) contains no nn.RNN, nn.LSTM or nn.GRU: "
                               "rnndiag captures those modules; pass a model that has one")
        self.calls: list[RecordedCall] = []
        self._handles: list = []

    def attach(self) -> Recorder:
        if not self._handles:
            for name, module in self.targets:
                self._handles.append(module.register_forward_hook(self._hook_for(name or "(model)"),
                                                                  with_kwargs=True))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def clear(self) -> None:
        self.calls.clear()

    def __enter__(self) -> Recorder:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def _hook_for(self, name: str):
        def hook(module, args, kwargs, output):
            if not torch.is_grad_enabled():
                return
            seen = sum(1 for c in self.calls if c.module is module)
            self.calls.append(_record(f"{name}#{seen}" if seen else name, module, args, kwargs, output))
        return hook


def _record(name: str, module: nn.Module, args, kwargs, output) -> RecordedCall:
    """Copies of one call's input, initial state and weights; references to what it returned."""
    x = args[0] if args else kwargs.get("input")
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    out, state_n = output
    h_n, c_n = state_n if isinstance(state_n, tuple) else (state_n, None)
    packed = x if isinstance(x, PackedSequence) else None
    lengths = None
    unbatched = False
    if packed is not None:
        padded, lens = pad_packed_sequence(PackedSequence(x.data.detach(), x.batch_sizes, x.sorted_indices,
                                                          x.unsorted_indices))
        xs, lengths = _numpy(padded), lens.cpu().numpy().astype(np.int64)
        out_data = out.data
    else:
        unbatched = x.dim() == 2
        t = x.unsqueeze(1) if unbatched else (x.transpose(0, 1) if module.batch_first else x)
        xs, out_data = _numpy(t), out
    h0 = c0 = None
    if hx is not None:
        h, c = hx if isinstance(hx, tuple) else (hx, None)
        h0 = _numpy(h.unsqueeze(1) if unbatched else h)
        c0 = None if c is None else _numpy(c.unsqueeze(1) if unbatched else c)
    weights = dict(module.named_parameters())
    dtype = next(iter(weights.values())).dtype
    params = {k: _numpy(v) for k, v in weights.items()}
    return RecordedCall(name, module, xs, lengths, h0, c0, params, out_data, h_n, c_n, packed, unbatched,
                        str(dtype).removeprefix("torch."))


def _call(model: nn.Module, inputs):
    """``model(inputs)``; a tuple is passed as positional arguments, a dict as keyword arguments."""
    if isinstance(inputs, tuple):
        return model(*inputs)
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(inputs)


def capture(model: nn.Module, inputs, loss_fn, *, iteration: int | None = None, stage: str | None = None,
            grad_norm_history=()) -> Capture:
    """Run ``loss_fn(model(inputs))`` once and record, for every ``nn.RNN/nn.LSTM/nn.GRU`` call inside ``model``,
    its real input, initial state, weights and the loss's gradient on its output, ``h_n`` and ``c_n``.

    The gradients come from ``torch.autograd.grad``: the parameters' ``.grad`` are left untouched and no optimizer
    step happens. The model's mode is kept (a train-mode run's dropout between layers is said not to be
    replayed). ``inputs``: what the model takes (a tuple: positional arguments, a dict: keyword arguments).
    ``iteration``: the training iteration (0: before any update -- the stage "init"; later: "trained");
    ``stage`` says it directly ("init", "trained" or "unknown"). ``grad_norm_history``: the global gradient norms of
    the recurrent modules at earlier iterations of the same run, for the rule that spots a spike.

    Returns a :class:`rnndiag.capture.Capture`; ``.save(path)`` writes it, ``rnndiag.analyze(cap)`` or
    ``rnndiag analyze --capture FILE`` diagnoses it.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a function of the model's output returning a scalar loss; got "
                        f"{type(loss_fn).__name__}")
    if iteration is not None and (isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0):
        raise ValueError(f"iteration must be a non-negative integer; got {iteration!r}")
    stage = stage_of(iteration, stage)
    with Recorder(model) as recorder, torch.enable_grad():
        loss = loss_fn(_call(model, inputs))
    if not recorder.calls:
        raise CaptureError(f"the forward of {type(model).__name__} called none of its recurrent modules "
                           f"({', '.join(n or '(model)' for n, _ in recorder.targets)}); pass inputs that run one")
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise CaptureError(f"loss_fn must return a scalar tensor; got "
                           f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__}")
    if not loss.requires_grad:
        raise CaptureError("the loss does not depend on anything that needs a gradient (was the forward run under "
                           "torch.no_grad(), or are all parameters frozen?); capture needs autograd")
    targets = [t for call in recorder.calls for t in call.grad_targets()]
    wanted = [t for t in targets if t.requires_grad]  # a module with frozen weights and inputs: no gradient
    found = iter(torch.autograd.grad(loss.reshape(()), wanted, allow_unused=True)) if wanted else iter(())
    grads = [next(found) if t.requires_grad else None for t in targets]
    modules = []
    for call in recorder.calls:
        n = len(call.grad_targets())
        modules.append(call.module_capture(grads[:n]))
        grads = grads[n:]
    return Capture(tuple(modules), iteration, stage, float(loss.detach()), tuple(float(v) for v in grad_norm_history),
                   torch.__version__, __version__)
