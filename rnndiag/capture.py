"""A capture: what one iteration of a user's PyTorch training fed each recurrent module and what its loss sent
back, kept so that rnndiag can replay the exact BPTT in numpy. Reading, writing and analysing a capture needs
numpy only; recording one needs torch (:mod:`rnndiag.pytorch`).

Per recurrent module call (:class:`ModuleCapture`): the module's real input (after any embedding; a packed batch
as a padded one with its lengths), its initial states, the weights that produced the gradient (copied at the
forward, before any ``optimizer.step()``), and the gradient of the real loss with respect to its output sequence
and its final states ``h_n``/``c_n``. From these, :func:`rnndiag.bptt` gives every ``dL/dh_t`` and every
parameter gradient of that module exactly as autograd did.

A capture file is one ``.npz`` (no pickle) holding the arrays and a small JSON header (:data:`HEADER_KEY`): the
format version, the iteration, the stage, the loss, the torch and rnndiag versions and, per module, its path in
the user's model and its architecture. It is written atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._version import __version__
from .files import write_atomic
from .jsonsafe import finite_or_none
from .npyfile import ArrayFileError, NpzArchive

CAPTURE_FORMAT = 1  # the version of the file layout below; a reader refuses any other
HEADER_KEY = "rnndiag_capture"  # the JSON header, stored as a uint8 array of its UTF-8 bytes
STAGES = ("init", "trained", "unknown")
# arrays of one module call, besides its parameters ("m{index}.param.{name}")
ARRAY_FIELDS = ("x", "lengths", "h0", "c0", "grad_output", "grad_h_n", "grad_c_n")
RECORD_HINT = "record it again with rnndiag.pytorch.capture"


class CaptureError(ValueError):
    """A capture (a file or an object) cannot be used; the message names it and says what to do."""


@dataclass(frozen=True)
class ModuleCapture:
    """One call of one ``nn.RNN/nn.LSTM/nn.GRU`` inside the user's model, as the loss saw it. Arrays are
    time-major whatever the module's ``batch_first``; a packed batch is padded (zeros past ``lengths``)."""

    name: str  # the module's path in the user's model ("encoder.rnn"), "#k" appended for its k-th later call
    cell: str  # rnn_tanh, rnn_relu, lstm or gru
    params: dict[str, np.ndarray] = field(repr=False)  # the module's state_dict at the forward, PyTorch keys
    x: np.ndarray = field(repr=False)  # (T, B, I) the module's input
    grad_output: np.ndarray = field(repr=False)  # (T, B, D*P) dL/d output, zeros where the loss does not look
    lengths: np.ndarray | None = field(default=None, repr=False)  # (B,) a packed batch's lengths
    h0: np.ndarray | None = field(default=None, repr=False)  # (L*D, B, P) given initial state, None: zeros
    c0: np.ndarray | None = field(default=None, repr=False)  # (L*D, B, H)
    grad_h_n: np.ndarray | None = field(default=None, repr=False)  # (L*D, B, P) dL/dh_n, None: h_n unused
    grad_c_n: np.ndarray | None = field(default=None, repr=False)  # (L*D, B, H) dL/dc_n
    batch_first: bool = False  # how the module took its input (the arrays here are time-major)
    packed: bool = False  # the input was a PackedSequence
    training: bool = False  # module.training at the forward
    dropout: float = 0.0  # the module's dropout between layers
    weights_dtype: str = "float32"  # the dtype torch computed in
    chained: bool = False  # its initial state was the previous call's final state (a step-by-step loop)

    def model(self, dtype=np.float64):
        """The module as an :class:`rnndiag.RNNModel` (its architecture read from the parameters' keys and
        shapes), computed in ``dtype`` (float64 by default: the replay's exactness does not depend on float32)."""
        from .weights import model_from_state_dict

        return model_from_state_dict(self.params, cell=self.cell, dtype=dtype, source=f"capture module {self.name!r}")

    @property
    def seq_len(self) -> int:
        return int(self.x.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.x.shape[1])

    @property
    def receives_gradient(self) -> bool:
        """Whether the loss sent any gradient to this call (its output or final states)."""
        return bool(np.any(self.grad_output)) or any(
            g is not None and bool(np.any(g)) for g in (self.grad_h_n, self.grad_c_n))

    @property
    def dropout_replayed(self) -> bool:
        """False when the run dropped out between layers (train mode, p > 0) and the replay cannot: the masks
        live inside PyTorch's fused kernel."""
        layers = sum(1 for k in self.params if k.startswith("weight_ih_l") and not k.endswith("_reverse"))
        return not (self.training and self.dropout > 0 and layers > 1)

    def architecture(self) -> dict:
        """Cell, sizes and directions, read from the parameters (as the header stores them)."""
        m = self.model(np.float64) if self.params else None
        return {"cell": self.cell, "input_size": m.input_size, "hidden_size": m.hidden_size,
                "num_layers": m.num_layers, "bidirectional": m.bidirectional, "proj_size": m.proj_size,
                "bias": m.bias, "batch_first": self.batch_first, "dropout": self.dropout}

    def replay_gradients(self, model) -> tuple[np.ndarray, tuple | np.ndarray | None, str]:
        """``(grad_h, grad_state_n, steps)`` for :func:`rnndiag.analyze`: the top layer's ``dL/dh_n`` folded into
        ``grad_h`` at each direction's last step (the same values: ``h_n`` of the top layer is its output
        there), the rest as ``grad_state_n``; ``steps`` is ``"last"`` when the loss looks only at each direction's
        last step, else ``"all"``."""
        D, P, L = model.num_directions, model.output_size, model.num_layers
        T, B = self.seq_len, self.batch_size
        grad_h = np.array(self.grad_output, dtype=np.float64)
        last = np.full(B, T - 1) if self.lengths is None else self.lengths.astype(np.int64) - 1
        rows = np.arange(B)
        rest_h = None
        if self.grad_h_n is not None:
            rest_h = np.array(self.grad_h_n, dtype=np.float64)
            top = (L - 1) * D
            grad_h[last, rows, :P] += rest_h[top]
            if D == 2:
                grad_h[0, :, P:] += rest_h[top + 1]
            rest_h[top:] = 0.0
        looks = np.zeros((T, B, D), dtype=bool)
        looks[last, rows, 0] = True
        if D == 2:
            looks[0, :, 1] = True
        nonzero = np.abs(grad_h.reshape(T, B, D, P)).max(axis=3) > 0
        steps = "last" if not (nonzero & ~looks).any() else "all"
        if model.has_cell_state:
            c = None if self.grad_c_n is None else np.asarray(self.grad_c_n, np.float64)
            state_n = None if rest_h is None and c is None else (rest_h, c)
        else:
            state_n = rest_h
        return grad_h, state_n, steps

    def state0(self):
        """The initial state as :func:`rnndiag.forward` takes it (None: zeros)."""
        if self.h0 is None and self.c0 is None:
            return None
        if self.cell == "lstm":
            return (self.h0, self.c0)
        return self.h0


@dataclass(frozen=True)
class Capture:
    """One training iteration's view of every recurrent module call in a user's model.

    ``iteration``: the training iteration it was taken at (None: not given); ``stage``: "init" (before any
    update), "trained", or "unknown" -- from ``iteration`` unless given; ``loss_value``: the loss; the global
    gradient norms of earlier captures of the same run (``grad_norm_history``) let the rules see a spike.
    """

    modules: tuple[ModuleCapture, ...]
    iteration: int | None = None
    stage: str = "unknown"
    loss_value: float | None = None
    grad_norm_history: tuple[float, ...] = ()
    torch_version: str | None = None
    rnndiag_version: str = __version__
    source: str = "capture"  # how error messages name it (a file's path once loaded)
    module_grad_norm_history: dict = field(default_factory=dict)  # per module name, as grad_norm_history

    def __post_init__(self):
        if not self.modules:
            raise CaptureError(f"{self.source} holds no recurrent module: the model ran no nn.RNN/nn.LSTM/nn.GRU "
                               "during the captured forward; capture a model that contains one")
        if self.stage not in STAGES:
            raise CaptureError(f"stage must be one of {', '.join(STAGES)}; got {self.stage!r}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modules)

    def module(self, name: str | None = None) -> ModuleCapture:
        """The module call ``name`` (its path, or a unique ending such as ``"rnn"``); without a name, the only one
        (several: a ``CaptureError`` listing them)."""
        listing = "; ".join(f"{m.name} ({_arch_line(m)})" for m in self.modules)
        if name is None:
            if len(self.modules) == 1:
                return self.modules[0]
            raise CaptureError(f"{self.source} holds {len(self.modules)} recurrent module calls: {listing}; choose "
                               "one with --module NAME (module=NAME)")
        exact = [m for m in self.modules if m.name == name]
        if exact:
            return exact[0]
        ending = [m for m in self.modules if m.name.endswith("." + name)]
        if len(ending) == 1:
            return ending[0]
        if ending:
            raise CaptureError(f"--module {name!r} matches several modules of {self.source}: "
                               f"{', '.join(m.name for m in ending)}; give the full name")
        raise CaptureError(f"--module {name!r} names none of the recurrent modules of {self.source}: {listing}; "
                           "pass one of these names")

    def header(self) -> dict:
        return {"format": CAPTURE_FORMAT, "kind": "rnndiag capture", "iteration": self.iteration,
                "stage": self.stage, "loss_value": finite_or_none(self.loss_value),
                "grad_norm_history": [float(v) for v in self.grad_norm_history],
                "module_grad_norm_history": {k: [float(v) for v in vs]
                                             for k, vs in self.module_grad_norm_history.items()},
                "torch_version": self.torch_version, "rnndiag_version": self.rnndiag_version,
                "modules": [{"name": m.name, "architecture": m.architecture(), "packed": m.packed,
                             "training": m.training, "weights_dtype": m.weights_dtype, "chained": m.chained,
                             "seq_len": m.seq_len, "batch_size": m.batch_size} for m in self.modules]}

    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write the capture to ``path`` (``.npz``), atomically; an existing file is refused unless
        ``overwrite``."""
        path = Path(path)
        if path.suffix.lower() != ".npz":
            raise CaptureError(f"capture path {str(path)!r} must end in .npz")
        if path.exists() and not overwrite:
            raise FileExistsError(f"capture file {str(path)!r} exists; pass overwrite=True or choose another name")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"folder {str(path.parent)!r} does not exist; create it first")
        arrays = {HEADER_KEY: np.frombuffer(json.dumps(self.header()).encode(), np.uint8)}
        for i, m in enumerate(self.modules):
            for name in ARRAY_FIELDS:
                value = getattr(m, name)
                if value is not None:
                    arrays[f"m{i}.{name}"] = np.ascontiguousarray(value)
            for key, value in m.params.items():
                arrays[f"m{i}.param.{key}"] = np.ascontiguousarray(value)
        return write_atomic(path, lambda fh: np.savez(fh, **arrays))


def _arch_line(m: ModuleCapture) -> str:
    try:
        a = m.architecture()
    except ValueError:
        return m.cell
    parts = [a["cell"], f"hidden {a['hidden_size']}", f"{a['num_layers']} layer(s)"]
    if a["bidirectional"]:
        parts.insert(2, "bidirectional")
    if a["proj_size"]:
        parts.insert(2, f"proj {a['proj_size']}")
    return ", ".join(parts)


def stage_of(iteration: int | None, stage: str | None = None) -> str:
    """The stage a capture is at: as given, else "init" at iteration 0, "trained" after, "unknown" without one."""
    if stage is not None:
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}; got {stage!r}")
        return stage
    if iteration is None:
        return "unknown"
    return "init" if iteration == 0 else "trained"


# -- reading ------------------------------------------------------------------------------------------------------
def load_capture(path) -> Capture:
    """Read a capture file written by :meth:`Capture.save` (no pickle); every problem is one
    :class:`CaptureError` naming the file and the fix."""
    path = Path(path)
    what = f"capture file {str(path)!r}"
    if path.suffix.lower() in (".pt", ".pth", ".ckpt"):
        raise CaptureError(f"{what} is a PyTorch file, not a capture: weights go to --weights (load_weights); a "
                           "capture is the .npz that rnndiag.pytorch.capture(...).save(path) writes")
    try:
        with NpzArchive(path, what) as archive:
            return _read(archive, what)
    except ArrayFileError as exc:
        text = str(exc)
        if "is not a valid .npy" in text or "not a .npy" in text:
            raise CaptureError(f"{what} is a zip archive but not an rnndiag capture (a PyTorch file?); a capture "
                               "is the .npz that rnndiag.pytorch.capture(...).save(path) writes") from None
        if "cannot be read as an .npz archive" in text or "cannot be read (" in text:
            raise CaptureError(f"{what} is truncated or corrupt (not a complete .npz archive); {RECORD_HINT}") \
                from None
        raise CaptureError(text) from None


def _read(archive: NpzArchive, what: str) -> Capture:
    if HEADER_KEY not in archive.headers:
        raise CaptureError(f"{what} is not an rnndiag capture (it has no {HEADER_KEY!r} header); a weights file "
                           f"goes to --weights, a capture is made by rnndiag.pytorch.capture(...).save(path)")
    try:
        header = json.loads(archive.load(HEADER_KEY).tobytes().decode())
        version = header["format"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError):
        raise CaptureError(f"{what} has a damaged header; {RECORD_HINT}") from None
    if not isinstance(version, int) or version != CAPTURE_FORMAT:
        writer = header.get("rnndiag_version", "an unknown version")
        if isinstance(version, int) and version > CAPTURE_FORMAT:
            raise CaptureError(f"{what} has capture format {version}, newer than this rnndiag reads "
                               f"({CAPTURE_FORMAT}; written by rnndiag {writer}): upgrade rnndiag "
                               f"(pip install -U rnndiag)")
        raise CaptureError(f"{what} has capture format {version!r}, which this rnndiag (format {CAPTURE_FORMAT}) "
                           f"no longer reads (written by rnndiag {writer}); {RECORD_HINT}")
    try:
        entries = list(header["modules"])
        modules = tuple(_read_module(archive, what, i, e) for i, e in enumerate(entries))
        return Capture(modules, _opt_int(header.get("iteration")), stage_of(None, header.get("stage", "unknown")),
                       finite_or_none(header.get("loss_value")),
                       tuple(float(v) for v in header.get("grad_norm_history", [])), header.get("torch_version"),
                       str(header.get("rnndiag_version", "unknown")), what,
                       {str(k): tuple(float(v) for v in vs)
                        for k, vs in dict(header.get("module_grad_norm_history", {})).items()})
    except CaptureError:
        raise
    except ArrayFileError as exc:
        raise CaptureError(f"{exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CaptureError(f"{what} is damaged ({exc}); {RECORD_HINT}") from None


def _opt_int(v):
    return None if v is None else int(v)


def _read_module(archive: NpzArchive, what: str, i: int, entry: dict) -> ModuleCapture:
    name = str(entry["name"])
    arch = entry["architecture"]
    prefix = f"m{i}."
    members = {k[len(prefix):] for k in archive.headers if k.startswith(prefix)}
    if "x" not in members or "grad_output" not in members:
        raise CaptureError(f"{what}: module {name!r} lacks its input or output gradient; {RECORD_HINT}")
    archive.check_memory([prefix + m for m in members])
    arrays = {f: archive.load(prefix + f) if f in members else None for f in ARRAY_FIELDS}
    params = {m[len("param."):]: archive.load(prefix + m) for m in sorted(members) if m.startswith("param.")}
    mc = ModuleCapture(name, str(arch["cell"]), params, batch_first=bool(arch.get("batch_first", False)),
                       packed=bool(entry.get("packed", False)), training=bool(entry.get("training", False)),
                       dropout=float(arch.get("dropout", 0.0)), weights_dtype=str(entry.get("weights_dtype", "")),
                       chained=bool(entry.get("chained", False)), **arrays)
    return check_module_capture(mc, f"{what}, module {name!r}")


def check_module_capture(mc: ModuleCapture, what: str) -> ModuleCapture:
    """Shapes and values that fit together: the architecture from the parameters, then every array against it.
    Returns the capture with its arrays as numpy float arrays (lengths int64)."""
    model = mc.model(np.float64)
    D, P, H, L = model.num_directions, model.output_size, model.hidden_size, model.num_layers
    x = np.asarray(mc.x)
    if x.ndim != 3 or x.shape[2] != model.input_size:
        raise CaptureError(f"{what}: input of shape {x.shape}, the module takes (T, B, {model.input_size}); "
                           f"{RECORD_HINT}")
    T, B, _ = x.shape
    expect = {"grad_output": (T, B, D * P), "h0": (L * D, B, P), "c0": (L * D, B, H), "grad_h_n": (L * D, B, P),
              "grad_c_n": (L * D, B, H)}
    out = {"x": x}
    for name, shape in expect.items():
        value = getattr(mc, name)
        if value is None:
            continue
        value = np.asarray(value)
        if value.shape != shape or value.dtype.kind != "f":
            raise CaptureError(f"{what}: {name} holds {value.dtype} of shape {value.shape}, expected {shape}; "
                               f"{RECORD_HINT}")
        out[name] = value
    for name, value in out.items():
        if not np.isfinite(value).all():
            where = np.argwhere(~np.isfinite(value))[0]
            raise CaptureError(f"{what}: {name} holds NaN/Inf (first at index {tuple(int(i) for i in where)}): the "
                               "run had already diverged when it was captured; capture an earlier iteration")
    if (mc.c0 is not None or mc.grad_c_n is not None) and not model.has_cell_state:
        raise CaptureError(f"{what}: a {model.cell} has no cell state, but the capture holds c0 or dL/dc_n; "
                           f"{RECORD_HINT}")
    lengths = mc.lengths
    if lengths is not None:
        from .engine import check_lengths

        lengths = np.asarray(lengths)
        try:
            checked = check_lengths(lengths, T, B)
        except (TypeError, ValueError) as exc:
            raise CaptureError(f"{what}: {exc}") from None
        lengths = checked if checked is not None else None
    return dataclasses.replace(mc, lengths=lengths, **out)


# -- analysing ----------------------------------------------------------------------------------------------------
def analyze_capture(capture: Capture, module: str | None = None, *, stage: str | None = None,
                    dependency_length: int | None = None, dtype=np.float64, keep_trace: bool = False, **settings):
    """Diagnose one recurrent module call of a capture on the user's input and the user's loss, replayed exactly
    (in ``dtype``, float64 by default): the top layer's ``dL/dh_n`` joins the output gradient at each direction's
    last step, the other final-state gradients go in as ``grad_state_n``, the initial states and lengths as
    recorded. ``stage`` overrides the capture's; ``settings`` are :func:`rnndiag.analyze`'s (``seed``,
    ``horizon_factor``, ``batch_sample``, ...)."""
    from .analysis import analyze

    if not isinstance(capture, Capture):
        raise TypeError(f"capture must be an rnndiag Capture (rnndiag.pytorch.capture, load_capture); got "
                        f"{type(capture).__name__}")
    mc = capture.module(module)
    if not mc.receives_gradient:
        others = [m.name for m in capture.modules if m.receives_gradient]
        raise CaptureError(f"the loss sends no gradient to {mc.name!r} of {capture.source} (its output and final "
                           f"states do not reach the loss): nothing flows back through it"
                           f"{'; choose another --module: ' + ', '.join(others) if others else ''}")
    model = mc.model(dtype)
    grad_h, grad_state_n, steps = mc.replay_gradients(model)
    stage = stage_of(capture.iteration, stage) if stage is not None else capture.stage
    at = f", iteration {capture.iteration}" if capture.iteration is not None else ""
    layout = "packed" if mc.packed else ("batch_first" if mc.batch_first else "time-major")
    label = f"captured input of {mc.name}{at}: T = {mc.seq_len}, B = {mc.batch_size}, {layout}"
    if mc.lengths is not None:
        label += f", lengths {int(mc.lengths.min())}..{int(mc.lengths.max())}"
    diag = analyze(model, mc.x.astype(model.dtype, copy=False), grad_h=grad_h, grad_state_n=grad_state_n,
                   state0=mc.state0(), lengths=mc.lengths, loss=steps, keep_trace=keep_trace,
                   loss_label=f"captured, {'at the last step' if steps == 'last' else 'over the steps'}",
                   stage=stage, input_source="user", loss_source="user", dependency_length=dependency_length,
                   earlier_grad_norms=capture.module_grad_norm_history.get(mc.name, capture.grad_norm_history),
                   input_label=label, **settings)
    notes = list(_capture_notes(capture, mc, stage, model))
    if notes:
        diag = dataclasses.replace(diag, notes=(*diag.notes, *notes))
    if not mc.dropout_replayed:
        note = (f"the run was in train mode with dropout {mc.dropout:g} between layers; PyTorch's fused kernel draws "
                "its masks internally, so they were not recorded and the replay runs without dropout (eval mode): "
                "the replayed gradients differ from the run's by the masks -- capture with model.eval() for an "
                "exact replay")
        diag = dataclasses.replace(diag, notes=(*diag.notes, note),
                                   dropout="train-mode dropout in the run, not replayed (masks not observable)")
    return diag


def _capture_notes(capture: Capture, mc: ModuleCapture, stage: str, model) -> list[str]:
    """What a reader of a capture's diagnosis must know about the replay."""
    notes = []
    if mc.weights_dtype in ("float16", "bfloat16"):
        notes.append(f"the run computed in {mc.weights_dtype}; the replay runs in {model.dtype} on the same weights "
                     f"and inputs, so its numbers differ from the run's by {mc.weights_dtype} rounding (about "
                     f"{'1e-2' if mc.weights_dtype == 'bfloat16' else '1e-3'} relative)")
    if mc.chained:
        notes.append(f"{mc.name.split('#')[0]!r} was called step by step with its state carried between calls: "
                     "each call is a separate capture, and the gradient through the chain of calls is not replayed")
    if capture.stage not in ("unknown", stage):
        notes.append(f"stage {stage!r} as asked, although the capture's iteration {capture.iteration} makes it "
                     f"{capture.stage!r}")
    return notes


def locate_nonfinite(mc: ModuleCapture, dtype=np.float32) -> dict | None:
    """Where the replay of one module call in ``dtype`` (the dtype the run computed in) first stops being finite:
    ``{"kind": "state"|"gradient", "layer", "direction", "step"}`` (the state forward from the first step; the
    gradient backward from the loss), or None when it stays finite."""
    from .analysis.diagnose import first_nonfinite_in
    from .engine import bptt

    model = mc.model(dtype)
    grad_h, grad_state_n, _ = mc.replay_gradients(model)
    with np.errstate(all="ignore"):
        trace = bptt(model, mc.x.astype(model.dtype), grad_h.astype(model.dtype), _cast(mc.state0(), model.dtype),
                     lengths=mc.lengths, grad_state_n=_cast(grad_state_n, model.dtype), param_grads=False)
    found = first_nonfinite_in(trace)
    if found is None:
        return None
    return {"kind": found.kind, "layer": found.layer, "direction": "reverse" if found.direction else "forward",
            "step": found.step}


def _cast(state, dtype):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(_cast(s, dtype) for s in state)
    return np.asarray(state).astype(dtype)
