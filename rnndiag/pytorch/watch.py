"""``watch``: capture a live PyTorch training on a schedule, and at once when a gradient stops being finite.

The loop pays only for copies. Per iteration: hooks keep references to each recurrent module's input and outputs,
take the norm of each of its parameters' gradients as autograd produces them (one reduction each: the
finiteness check and the global norm), and append one line to ``iterations.jsonl``. At a scheduled iteration
(and at the first non-finite gradient) the module's weights, input, initial state and the loss's gradients on
its outputs are copied and written as one capture file, atomically. Replaying and analysing the captures happens
later, in ``rnndiag report RUN_DIR`` or ``rnndiag analyze --capture`` -- or here with ``analyze=True``, whose
cost (a full analysis per capture, seconds for a 2-layer LSTM with H = 256) is the user's choice.

The run folder (append-only; a crash loses at most the capture being written, and a half-written capture is
never read as complete -- each is renamed into place when whole)::

    RUN_DIR/run.json                 format, versions, the recurrent modules and their architectures, schedule
    RUN_DIR/iterations.jsonl         one line per iteration: gradient norms, loss scale, skipped, non-finite, capture
    RUN_DIR/captures/it00000100.npz  the captures (rnndiag.capture format)
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..capture import Capture, CaptureError, locate_nonfinite, stage_of
from ..files import write_atomic
from ..jsonsafe import jsonable
from ..run import CAPTURES_DIR, ITERATIONS_FILE, RUN_FILE, RUN_FORMAT, read_iterations, read_run_header
from ..weights import model_from_state_dict
from .recorder import RecordedCall, Recorder, _cell, _numpy

HISTORY = 20  # earlier gradient norms a capture carries for the spike rule
MAX_NONFINITE_CAPTURES = 1  # captures taken at non-finite gradients (the first is the one that tells where)


def scheduled(iteration: int, every: int, log_spaced: bool) -> bool:
    """Whether ``iteration`` is captured: 0 and every ``every``-th; with ``log_spaced`` also about two per octave
    below ``every`` (1, 2, 3, 4, 6, 8, 11, 16, 23, 32, ...)."""
    if iteration % every == 0:
        return True
    if log_spaced and iteration < every:
        k = round(2 * math.log2(iteration))
        return any(round(2 ** (j / 2)) == iteration for j in (k - 1, k, k + 1))
    return False


@dataclass
class _Iteration:
    """What one iteration has produced so far."""

    index: int
    scheduled: bool
    scale: float  # the GradScaler's scale of this backward (1 without one)
    calls: list[RecordedCall] = field(default_factory=list)
    grads: dict[int, list] = field(default_factory=dict)  # call position -> gradients on its grad targets
    norms2: dict[str, float] = field(default_factory=dict)  # "module.param" -> squared gradient norm
    bad_params: list[str] = field(default_factory=list)  # parameters whose gradient was not finite, in order
    clip: dict | None = None  # the gradient norm the optimizer stepped with (optimizer given)
    handles: list = field(default_factory=list)  # the multi-grad hooks on its calls' outputs
    expected: int | None = None  # parameters whose gradients the backward will report (counted at the first)
    started: float = field(default_factory=time.perf_counter)


class Watch:
    """See :func:`watch`. Attach with :meth:`attach` (``watch`` does), end with :meth:`close` (or ``unwatch``, or
    a ``with`` block)."""

    def __init__(self, model: nn.Module, log_dir, every: int = 100, *, log_spaced: bool = False, scaler=None,
                 optimizer=None, analyze: bool = False, resume: bool = False):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer (iterations between captures); got {every!r}")
        self.model, self.every, self.log_spaced = model, every, log_spaced
        self.scaler, self.optimizer, self.analyze = scaler, optimizer, analyze
        self.recorder = Recorder(model, copy_weights=False, on_call=self._on_call)
        self.names = {module: name or "(model)" for name, module in self.recorder.targets}
        self.log_dir = Path(log_dir)
        self.next_index = _open_run(self.log_dir, resume, self._run_header())
        self.captures: list[Path] = []
        self.nonfinite_events: list[dict] = []
        self.history: dict[str, list[float]] = {}
        self._current: _Iteration | None = None
        self._handles: list = []
        self._log = None

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def attach(self) -> Watch:
        if self._handles:
            return self
        self._log = open(self.log_dir / ITERATIONS_FILE, "a", encoding="utf-8")
        self.recorder.attach()
        self._handles.append(self.model.register_forward_pre_hook(self._begin))
        for module, name in self.names.items():
            for pname, p in module.named_parameters():
                self._handles.append(p.register_hook(self._param_hook(f"{name}.{pname}", module)))
        if self.optimizer is not None:
            self._handles.append(self.optimizer.register_step_pre_hook(self._before_step))
        return self

    def close(self) -> None:
        """Finish the iteration in flight, remove every hook, close the log."""
        if self._current is not None:
            self._finish()
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.recorder.detach()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Watch:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.close()

    def _run_header(self) -> dict:
        modules = []
        for module, name in self.names.items():
            params = {k: _numpy(v) for k, v in module.named_parameters()}
            m = model_from_state_dict(params, cell=_cell(module), source=f"module {name!r}")
            modules.append({"name": name, "cell": m.cell, "input_size": m.input_size, "hidden_size": m.hidden_size,
                            "num_layers": m.num_layers, "bidirectional": m.bidirectional, "proj_size": m.proj_size,
                            "batch_first": bool(module.batch_first)})
        return {"format": RUN_FORMAT, "kind": "rnndiag run", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "rnndiag_version": __version__, "torch_version": torch.__version__, "modules": modules,
                "schedule": {"every": self.every, "log_spaced": self.log_spaced},
                "grad_scaler": self.scaler is not None, "optimizer": type(self.optimizer).__name__
                if self.optimizer is not None else None}

    # -- hooks -------------------------------------------------------------------------------------------------------
    def _begin(self, module, args) -> None:
        """The model's forward under autograd starts an iteration (and finishes the one before)."""
        if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
            return
        if self._current is not None:
            self._finish()
        index = self.next_index
        self.next_index += 1
        scale = 1.0
        if self.scaler is not None and self.scaler.is_enabled():
            scale = float(self.scaler.get_scale())
        self._current = _Iteration(index, scheduled(index, self.every, self.log_spaced), scale)
        self.recorder.clear()

    def _on_call(self, call: RecordedCall) -> None:
        it = self._current
        if it is None:  # a recurrent module run on its own, outside the model's forward
            self._begin(self.model, ())
            it = self._current
        position = len(it.calls)
        it.calls.append(call)
        if it.scheduled:
            call.params = call.copy_weights()
        targets = [t for t in call.grad_targets() if t.requires_grad]
        if not targets:
            return

        def keep(grads, it=it, position=position, targets=targets):
            by_target = dict(zip(map(id, targets), grads))
            it.grads[position] = [by_target.get(id(t)) for t in call.grad_targets()]

        it.handles.append(torch.autograd.graph.register_multi_grad_hook(targets, keep, mode="all"))

    def _param_hook(self, name: str, module: nn.Module):
        def hook(grad):
            it = self._current
            if it is None:
                return
            norm = float(torch.linalg.vector_norm(grad.detach(), dtype=torch.float64))
            it.norms2[name] = norm * norm if math.isfinite(norm) else math.inf
            if not math.isfinite(norm):
                if not it.bad_params:  # the weights that made it, before any step: copy them now
                    for call in it.calls:
                        if call.params is None:
                            call.params = call.copy_weights()
                it.bad_params.append(name)
            if it.expected is None:  # the forward is over: every call of this iteration is known
                it.expected = self._expected(it)
            if self.optimizer is None and self.scaler is None and len(it.norms2) == it.expected:
                self._finish()
        return hook

    def _expected(self, it: _Iteration) -> int:
        modules = {id(c.module): c.module for c in it.calls}
        return sum(1 for m in modules.values() for p in m.parameters() if p.requires_grad)

    def _before_step(self, optimizer, args, kwargs) -> None:
        """The optimizer is about to step: the gradients are final (unscaled, clipped); the weights not yet moved."""
        it = self._current
        if it is None:
            return
        total = 0.0
        for module in self.names:
            for p in module.parameters():
                if p.grad is not None:
                    n = float(torch.linalg.vector_norm(p.grad.detach(), dtype=torch.float64))
                    total += n * n
        it.clip = {"grad_norm_at_step": math.sqrt(total)}
        if self.scaler is None:  # with a GradScaler: at the next iteration, once its update says if it skipped
            self._finish()

    # -- one iteration's record --------------------------------------------------------------------------------------
    def _finish(self) -> None:
        it, self._current = self._current, None
        if it is None:
            return
        norms = self._module_norms(it)
        skipped = self._skipped(it)
        line = {"iteration": it.index, "grad_norm": norms, "grad_norm_total": _total(norms.values()),
                "loss_scale": it.scale if self.scaler is not None else None, "skipped": skipped,
                "nonfinite": None, "capture": None}
        if it.clip is not None:
            line["grad_norm_at_step"] = it.clip["grad_norm_at_step"]
        nonfinite = bool(it.bad_params) and not skipped
        want = it.scheduled or (nonfinite and len(self.nonfinite_events) < MAX_NONFINITE_CAPTURES)
        if nonfinite:
            line["nonfinite"] = {"parameters": it.bad_params[:8], "first_parameter": it.bad_params[0]}
        if want and it.calls:
            line["capture"], where = self._write_capture(it, locate=nonfinite)
            if nonfinite:
                line["nonfinite"].update(where)
        if nonfinite:
            if not self.nonfinite_events:  # the first one warns; later ones are in the log (and the report)
                warnings.warn(_nonfinite_message(it.index, line["nonfinite"], line["capture"]), RuntimeWarning,
                              stacklevel=2)
            self.nonfinite_events.append({"iteration": it.index, **line["nonfinite"]})
        for name, value in norms.items():
            if value is not None and not skipped:
                self.history.setdefault(name, []).append(value)
        _release(it)
        self.recorder.clear()
        self._log.write(json.dumps(jsonable(line), allow_nan=False) + "\n")
        self._log.flush()

    def _skipped(self, it: _Iteration) -> bool:
        """Whether the GradScaler skipped this iteration's step: its scale has backed off since (it found an inf or
        NaN in any gradient, the recurrent modules' or another's), or a recurrent gradient was not finite."""
        if self.scaler is None or not self.scaler.is_enabled():
            return False
        return bool(it.bad_params) or float(self.scaler.get_scale()) < it.scale

    def _module_norms(self, it: _Iteration) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for name in self.names.values():
            parts = [v for k, v in it.norms2.items() if k.startswith(name + ".")]
            if parts:
                total = math.sqrt(sum(parts)) / it.scale
                out[name] = total if math.isfinite(total) else None
        return out

    def _write_capture(self, it: _Iteration, locate: bool) -> tuple[str | None, dict]:
        """Write the iteration's capture; returns its path relative to the run and, when ``locate``, where the
        gradient first stopped being finite (from a replay in the run's dtype)."""
        modules, where = [], {}
        for position, call in enumerate(it.calls):
            grads = [None if g is None else g / it.scale for g in it.grads.get(position, [None] * 3)]
            try:
                modules.append(call.module_capture(grads))
            except CaptureError as exc:
                where.setdefault("not_captured", []).append(f"{call.name}: {exc}")
        if not modules:
            return None, where
        history = {name: tuple(v[-HISTORY:]) for name, v in self.history.items()}
        cap = Capture(tuple(modules), it.index, stage_of(it.index), None, (), torch.__version__, __version__,
                      module_grad_norm_history={m.name: history.get(m.name.split("#")[0], ()) for m in modules})
        rel = f"{CAPTURES_DIR}/it{it.index:08d}.npz"
        cap.save(self.log_dir / rel, overwrite=False)
        self.captures.append(self.log_dir / rel)
        if locate:
            for m in modules:
                found = locate_nonfinite(m, np.dtype(m.weights_dtype) if m.weights_dtype in ("float32", "float64")
                                         else np.float32)
                if found is not None:
                    where.update({"module": m.name, **found})
                    break
        if self.analyze:
            self._analyze_now(cap, rel)
        return rel, where

    def _analyze_now(self, cap: Capture, rel: str) -> None:
        """``analyze=True``: analyse the capture now, into the cache ``rnndiag report`` reads."""
        from ..run import analyze_capture_cached

        analyze_capture_cached(self.log_dir / rel)


def _release(it: _Iteration) -> None:
    """Drop the iteration's hooks and tensors: a hook on an output's grad_fn that refers back to the output is a
    cycle through autograd's C++ objects, which Python's garbage collector cannot free (the graph would leak)."""
    for handle in it.handles:
        handle.remove()
    for call in it.calls:
        call.release()
    it.handles.clear()
    it.calls.clear()
    it.grads.clear()


def _total(values) -> float | None:
    vals = [v for v in values if v is not None]
    return math.sqrt(sum(v * v for v in vals)) if vals and len(vals) == len(list(values)) else None


def _nonfinite_message(index: int, info: dict, capture: str | None) -> str:
    """The warning of the first non-finite gradient: where it appeared, and what was captured."""
    where = ""
    if "step" in info:
        where = (f"; the replay finds the {info['kind']} of {info['module']} layer {info['layer']} "
                 f"({info['direction']}) non-finite first at time step {info['step']}")
    if info.get("not_captured"):
        where += ("; the loss's gradient on the recurrent module's output was itself not finite (the loss or the "
                  "layers after the module overflowed first), so that iteration could not be captured")
    elif capture is not None:
        where += f"; the iteration is captured in {capture}"
    return (f"rnndiag.watch: the gradient of {info['first_parameter']} is not finite at iteration {index}{where} "
            "(later non-finite iterations are logged in iterations.jsonl without a warning)")


def _open_run(log_dir: Path, resume: bool, header: dict) -> int:
    """Create (or, with ``resume``, reopen) the run folder; returns the next iteration's index."""
    run_file = log_dir / RUN_FILE
    if run_file.exists():
        if not resume:
            raise FileExistsError(f"log_dir {str(log_dir)!r} already holds an rnndiag run; pass resume=True to "
                                  "append to it, or choose a new folder")
        read_run_header(log_dir)  # refuses a newer format
        lines = read_iterations(log_dir).lines
        return lines[-1]["iteration"] + 1 if lines else 0
    if log_dir.exists() and not log_dir.is_dir():
        raise NotADirectoryError(f"log_dir {str(log_dir)!r} exists and is not a folder; choose a folder")
    (log_dir / CAPTURES_DIR).mkdir(parents=True, exist_ok=True)
    write_atomic(run_file, (json.dumps(header, indent=1) + "\n").encode())
    return 0


def watch(model: nn.Module, log_dir, every: int = 100, *, log_spaced: bool = False, scaler=None, optimizer=None,
          analyze: bool = False, resume: bool = False) -> Watch:
    """Watch a PyTorch training loop: capture every recurrent module of ``model`` on a schedule (iteration 0 and
    every ``every``-th; ``log_spaced`` adds about two per octave below ``every``), and at once at the first
    iteration whose gradient is not finite (naming the iteration, the parameter and -- from a replay in the run's
    dtype -- the layer, direction and time step where it first appears; a ``RuntimeWarning`` says so).

    An iteration is one forward of ``model`` under autograd. ``scaler``: a ``torch.amp.GradScaler``; gradients
    are divided by its scale, and the steps it skipped (its scale backed off: an inf or NaN in some gradient) are
    recorded as skipped, not as divergence (an iteration's line is then written at the next iteration).
    ``optimizer``: when given, the gradient norm it steps with is recorded too (after your clipping: the report
    shows when clipping fires). ``analyze=True`` analyses each capture in the loop (costs a
    full analysis per capture; off by default: ``rnndiag report RUN_DIR`` does it later, cached). ``resume``
    appends to an existing run folder.

    Returns the :class:`Watch`; end it with :func:`unwatch` (or use ``with watch(...):``).
    """
    return Watch(model, log_dir, every, log_spaced=log_spaced, scaler=scaler, optimizer=optimizer, analyze=analyze,
                 resume=resume).attach()


def unwatch(w: Watch) -> None:
    """Finish the iteration in flight and remove the hooks of ``watch``."""
    if not isinstance(w, Watch):
        raise TypeError(f"unwatch takes what watch returned; got {type(w).__name__}")
    w.close()


__all__ = ["Watch", "scheduled", "unwatch", "watch"]
