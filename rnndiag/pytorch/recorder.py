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

import contextlib
import math
import operator
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
    """One forward call of one recurrent module: references to its input, initial state and returned tensors (with
    their versions, to notice in-place changes), and its weights -- copied at the forward when the recorder was
    asked to, else when :meth:`module_capture` is called (which must then come before any optimizer step)."""

    name: str
    module: nn.Module = field(repr=False)
    x: torch.Tensor | PackedSequence = field(repr=False)
    hx: torch.Tensor | tuple | None = field(repr=False)
    output: torch.Tensor = field(repr=False)  # the output's data tensor (a packed output's .data)
    h_n: torch.Tensor = field(repr=False)
    c_n: torch.Tensor | None = field(repr=False)
    versions: tuple[int, ...] = ()  # ._version of output, h_n, c_n at the forward
    params: dict[str, np.ndarray] | None = field(default=None, repr=False)
    chained: bool = False  # its initial state is the previous call's final state (a step-by-step loop)

    @property
    def packed(self) -> PackedSequence | None:
        return self.x if isinstance(self.x, PackedSequence) else None

    @property
    def unbatched(self) -> bool:
        return self.packed is None and self.x.dim() == 2

    def grad_targets(self) -> list[torch.Tensor]:
        """The tensors whose gradients the loss sends back: output, h_n (and c_n)."""
        return [self.output, self.h_n] + ([self.c_n] if self.c_n is not None else [])

    def check_unmodified(self) -> None:
        """A ``CaptureError`` when the output or final state was changed in place after the forward (their
        gradient would then be that of another tensor)."""
        if tuple(t._version for t in self.grad_targets()) != self.versions:
            raise CaptureError(f"the output or final state of {self.name!r} was modified in place after the forward "
                               "(e.g. out.mul_(2), masked_fill_, an inplace ReLU or Dropout on it): the replay would "
                               "be wrong; use the out-of-place form (out = out * 2) on the recurrent module's output")

    def release(self) -> None:
        """Forget the tensors (input, state, outputs): the call's record is finished."""
        self.x = self.hx = self.output = self.h_n = self.c_n = None

    def copy_weights(self) -> dict[str, np.ndarray]:
        return {k: _numpy(v) for k, v in self.module.named_parameters()}

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
        return _numpy(grad)

    def _state(self, t: torch.Tensor | None) -> np.ndarray | None:
        return None if t is None else _numpy(t.unsqueeze(1) if self.unbatched else t)

    def _input(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The input as (T, B, I) time-major (a packed batch padded) and its lengths."""
        p = self.packed
        if p is not None:
            padded, lens = pad_packed_sequence(PackedSequence(p.data.detach(), p.batch_sizes, p.sorted_indices,
                                                              p.unsorted_indices))
            return _numpy(padded), lens.cpu().numpy().astype(np.int64)
        x = self.x
        return _numpy(x.unsqueeze(1) if self.unbatched else (x.transpose(0, 1) if self.module.batch_first else x)), \
            None

    def module_capture(self, grads: list[torch.Tensor | None]) -> ModuleCapture:
        """This call with the loss's gradients on ``grad_targets()`` (None where the loss does not use one)."""
        m = self.module
        x, lengths = self._input()
        h, c = self.hx if isinstance(self.hx, tuple) else (self.hx, None)
        params = self.params if self.params is not None else self.copy_weights()
        dtype = str(next(m.parameters()).dtype).removeprefix("torch.")
        mc = ModuleCapture(
            self.name, _cell(m), params, x, self._sequence(grads[0]), lengths=lengths, h0=self._state(h),
            c0=self._state(c), grad_h_n=self._state(grads[1]),
            grad_c_n=self._state(grads[2]) if len(grads) > 2 else None,
            batch_first=bool(m.batch_first), packed=self.packed is not None, training=bool(m.training),
            dropout=float(m.dropout), weights_dtype=dtype, chained=self.chained)
        return check_module_capture(mc, f"module {self.name!r}")


class Recorder:
    """Forward hooks on every recurrent module of ``model`` (use as a context manager, or :meth:`attach` /
    :meth:`detach`). Each forward call of one under autograd appends a :class:`RecordedCall` to :attr:`calls`
    (calls without autograd are counted in :attr:`skipped`); a module called several times in one forward is
    recorded once per call (``name``, ``name#1``, ...). The hooks keep references and, with ``copy_weights``,
    copy the weights; they change nothing in the outputs. ``grad_for_frozen`` makes the output of a module
    whose weights and input need no gradient require one (so its gradient can be taken; for :func:`capture`).
    ``on_call`` is called with each new call (:func:`rnndiag.pytorch.watch` puts its gradient hooks there)."""

    def __init__(self, model: nn.Module, *, copy_weights: bool = True, grad_for_frozen: bool = False,
                 on_call=None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        self.model = model
        self.targets = recurrent_modules(model)
        if not self.targets:
            raise CaptureError(f"the model ({type(model).__name__}) contains no nn.RNN, nn.LSTM or nn.GRU: "
                               "rnndiag captures those modules; pass a model that has one")
        self.copy_weights = copy_weights
        self.grad_for_frozen = grad_for_frozen
        self.on_call = on_call  # called with each new RecordedCall (watch registers its gradient hooks there)
        self.calls: list[RecordedCall] = []
        self.skipped = 0  # calls made without autograd (torch.no_grad, inference_mode)
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
        self.skipped = 0

    def __enter__(self) -> Recorder:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def _hook_for(self, name: str):
        def hook(module, args, kwargs, output):
            if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
                self.skipped += 1
                return
            earlier = [c for c in self.calls if c.module is module]
            call = _record(f"{name}#{len(earlier)}" if earlier else name, module, args, kwargs, output,
                           self.grad_for_frozen)
            if earlier:
                call.chained = _is_chained(call.hx, earlier[-1])
            if self.copy_weights:
                call.params = call.copy_weights()
            self.calls.append(call)
            if self.on_call is not None:
                self.on_call(call)
        return hook


def _is_chained(hx, previous: RecordedCall) -> bool:
    """Whether ``hx`` is the previous call's final state itself (autograd then runs through both calls)."""
    h = hx[0] if isinstance(hx, tuple) else hx
    return h is not None and h is previous.h_n


def _record(name: str, module: nn.Module, args, kwargs, output, grad_for_frozen: bool) -> RecordedCall:
    """References to one call's input, initial state and returned tensors."""
    x = args[0] if args else kwargs.get("input")
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    out, state_n = output
    h_n, c_n = state_n if isinstance(state_n, tuple) else (state_n, None)
    out_data = out.data if isinstance(out, PackedSequence) else out
    targets = [t for t in (out_data, h_n, c_n) if t is not None]
    if grad_for_frozen:
        for t in targets:
            if not t.requires_grad and t.is_leaf and t.is_floating_point():
                t.requires_grad_()
    return RecordedCall(name, module, x, hx, out_data, h_n, c_n, tuple(t._version for t in targets))


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
    step happens; the random number generator and the buffers (BatchNorm statistics) are restored afterwards. The
    model's mode is kept (a train-mode run's dropout between layers is said not to be replayed). ``inputs``: what
    the model takes (a tuple: positional arguments, a dict: keyword arguments). ``iteration``: the training
    iteration (0: before any update -- the stage "init"; later: "trained"); ``stage`` says it directly ("init",
    "trained" or "unknown"). ``grad_norm_history``: the global gradient norms of the recurrent module's
    parameters at earlier iterations of the same run (e.g. ``torch.nn.utils.get_total_norm`` of its gradients),
    for the rule that spots a spike.

    Returns a :class:`rnndiag.capture.Capture`; ``.save(path)`` writes it, ``rnndiag.analyze(cap)`` or
    ``rnndiag analyze --capture FILE`` diagnoses it.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a function of the model's output returning a scalar loss; got "
                        f"{type(loss_fn).__name__}")
    iteration = _check_iteration(iteration)
    history = tuple(float(v) for v in grad_norm_history)
    if any(not math.isfinite(v) or v < 0 for v in history):
        raise ValueError("grad_norm_history must hold finite, non-negative gradient norms (leave out the "
                         "iterations whose gradient was not finite)")
    stage = stage_of(iteration, stage)
    with _restored(model), Recorder(model, grad_for_frozen=True) as recorder, torch.enable_grad():
        loss = loss_fn(_call(model, inputs))
        _check_recorded(model, recorder, loss)
        targets = [t for call in recorder.calls for t in call.grad_targets()]
        wanted = [t for t in targets if t.requires_grad]
        found = iter(torch.autograd.grad(loss.reshape(()), wanted, allow_unused=True)) if wanted else iter(())
        grads = [next(found) if t.requires_grad else None for t in targets]
    modules = []
    for call in recorder.calls:
        n = len(call.grad_targets())
        modules.append(call.module_capture(grads[:n]))
        grads = grads[n:]
    return Capture(tuple(modules), iteration, stage, float(loss.detach()), history, torch.__version__, __version__)


def _check_iteration(iteration):
    if iteration is None:
        return None
    try:
        value = operator.index(iteration)
    except TypeError:
        value = -1
    if isinstance(iteration, bool) or value < 0:
        raise ValueError(f"iteration must be a non-negative integer; got {iteration!r}")
    return int(value)


def _check_recorded(model: nn.Module, recorder: Recorder, loss) -> None:
    """One ``CaptureError`` when the forward recorded nothing usable or the loss cannot be differentiated."""
    if not recorder.calls:
        names = ", ".join(n or "(model)" for n, _ in recorder.targets)
        if recorder.skipped:
            raise CaptureError(f"the recurrent modules of {type(model).__name__} ({names}) ran without autograd "
                               "(torch.no_grad or inference_mode inside its forward); capture needs their gradient")
        raise CaptureError(f"the forward of {type(model).__name__} called none of its recurrent modules ({names}); "
                           "pass inputs that run one")
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise CaptureError(f"loss_fn must return a scalar tensor; got "
                           f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__}")
    if not loss.requires_grad:
        raise CaptureError("the loss does not depend on the recurrent modules' outputs (is it computed from "
                           "detached tensors?); capture needs the loss's gradient on them")
    for call in recorder.calls:
        call.check_unmodified()


@contextlib.contextmanager
def _restored(model: nn.Module):
    """Run the block with the model's buffers and the random number generators put back afterwards: the extra
    forward of a capture leaves the training run as it was."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    devices = sorted({p.device.index for p in model.parameters() if p.is_cuda})
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for name, b in model.named_buffers():
                    if name in buffers:
                        b.copy_(buffers[name])
