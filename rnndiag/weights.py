"""Load and save weights with PyTorch's state_dict names: ``.npz`` always, ``.pt``/``.pth``/``.ckpt`` when torch is
installed.

A file may hold a module's state_dict, a whole model's (the recurrent module found by its keys), or a training
checkpoint that keeps one under ``state_dict``, ``model_state_dict``, ``model``, ``net`` or ``module`` (PyTorch
Lightning's ``.ckpt`` included). The architecture -- cell, sizes, layers, ``bidirectional``, ``proj_size`` -- is
read from the keys and shapes.

No pickle is ever loaded: ``np.load(..., allow_pickle=False)`` and ``torch.load(..., weights_only=True)``.
Every problem with a file raises :class:`WeightsFileError` (a ``ValueError``) whose one-line message names the
file and says what to do.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ._validation import check_cell, check_dtype, first_overflow
from .cells import CELLS, cell_module
from .files import check_name_length, open_regular, write_atomic
from .model import RNNModel, param_shapes
from .npyfile import ArrayFileError, NpzArchive, check_memory

# one parameter of nn.RNN/LSTM/GRU: kind, layer, direction ("_reverse" or none)
_PARAM = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")
CELL_KEY = "rnndiag_cell"  # optional 0-d string array: the cell name, so rnn_relu survives a round trip
# where training checkpoints keep the model's state_dict, in the order they are looked for
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")
TOP_LEVEL = "(top level)"  # the name of a module whose keys have no prefix (nn.LSTM().state_dict())
_SHOWN_CLASSES = 5  # a refused pickle's classes named in its message
_MAX_PICKLE_BYTES = 1 << 26  # a checkpoint's pickle (its tensors are stored apart) scanned for its keys


class WeightsFileError(ValueError):
    """Weights (a file or a state_dict) cannot be used; the message says why and how to fix it."""


def _fail(source: str, message: str) -> WeightsFileError:
    return WeightsFileError(f"{source}: {message}")


def _file(path: Path) -> str:
    return f"weights file {str(path)!r}"


class _Member(NamedTuple):
    """One array of an ``.npz`` weights file, known by its header; its data is read by :meth:`load` only."""

    archive: NpzArchive
    name: str

    @property
    def shape(self) -> tuple[int, ...]:
        return self.archive.headers[self.name].shape

    @property
    def dtype(self) -> np.dtype:
        return self.archive.headers[self.name].dtype

    def load(self) -> np.ndarray:
        return self.archive.load(self.name)


def _open_npz(path: Path) -> NpzArchive:
    try:
        return NpzArchive(path, _file(path))
    except ArrayFileError as exc:
        if "cannot be read as an .npz archive" not in str(exc):
            raise
        with open_regular(path, _file(path), named=True) as fh:
            head = fh.read(6)
    if head == b"\x93NUMPY":
        raise _fail(_file(path), "holds a single array, not named weights; save a dict with "
                                 "np.savez(path, **state_dict)") from None
    if head[:2] == b"PK":
        raise _fail(_file(path), "is corrupt or truncated (a damaged zip archive); re-save it with "
                                 "np.savez(path, **state_dict)") from None
    raise _fail(_file(path), "is not an .npz archive (another format); re-save it with "
                             "np.savez(path, **state_dict)") from None


def _read_torch(path: Path) -> Mapping:
    """The dict a PyTorch file holds, loaded with ``weights_only=True``: tensors and plain containers only."""
    try:
        import torch
    except ImportError:
        raise _fail(_file(path), "is a PyTorch file but torch is not installed; pip install 'rnndiag[torch]', or "
                                 "convert it to .npz with np.savez(p, **{k: v.numpy() for k, v in sd.items()})") \
            from None
    with open_regular(path, _file(path), named=True) as fh:
        # the tensors take about the file's size in memory (a .pt archive stores them uncompressed)
        check_memory(os.fstat(fh.fileno()).st_size, f"{_file(path)} (loading)", "pass a smaller file")
        try:
            with warnings.catch_warnings():  # torch's own warnings about odd tensors: the checks below say it
                warnings.simplefilter("ignore")
                obj = torch.load(fh, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for bad files (UnpicklingError, RuntimeError, EOFError ...)
            raise _unreadable(path, fh, exc) from None
    if not isinstance(obj, Mapping):
        raise _fail(_file(path), f"holds a {type(obj).__name__}, not a state_dict; save model.state_dict() with "
                                 "torch.save")
    return obj


def _unreadable(path: Path, fh, exc: Exception) -> WeightsFileError:
    """Why ``torch.load(weights_only=True)`` failed, in one line: the classes a refused pickle names and how to
    save the weights alone, or the first line of torch's message for a damaged file."""
    text = str(exc).strip()
    if "Weights only load failed" in text or "WeightsUnpickler" in text:
        classes = _unsafe_globals(fh, text)
        if any(name.startswith("torch.nn.modules.") for name in classes):
            return _fail(_file(path), f"is a whole pickled model ({_some(classes)}), which loads only by running "
                                      "its code, and rnndiag never unpickles code; save its weights instead: "
                                      "torch.save(model.state_dict(), 'w.pt')")
        key = _checkpoint_key(fh)
        fix = f"torch.save(ckpt[{key!r}], 'w.pt')" if key else "torch.save(model.state_dict(), 'w.pt')"
        what = f" ({_some(classes)})" if classes else ""
        return _fail(_file(path), f"holds pickled objects besides tensors{what}, which load only by running their "
                                  f"code, and rnndiag never unpickles code; save the weights alone: {fix}")
    first = text.splitlines()[0] if text else type(exc).__name__
    return _fail(_file(path), f"cannot be read as a weights-only PyTorch state_dict ({first[:160]}); save "
                              "model.state_dict() with torch.save")


def _some(names: list[str]) -> str:
    """The first few of ``names``, and how many more there are."""
    more = len(names) - _SHOWN_CLASSES
    return ", ".join(names[:_SHOWN_CLASSES]) + (f" and {more} more" if more > 0 else "")


def _unsafe_globals(fh, message: str) -> list[str]:
    """The classes and functions that made weights-only loading refuse a file, found without unpickling:
    ``torch.serialization.get_unsafe_globals_in_checkpoint`` (a static scan of the pickle), else the one that
    torch's message names (files in the legacy, non-zip format)."""
    import torch

    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if scan is not None:
        try:
            fh.seek(0)
            found = scan(fh)
        except (ValueError, RuntimeError, OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile):
            found = []  # a legacy or torchscript file: its message names the first class
        if found:
            return sorted(found)
    return sorted(set(re.findall(r"GLOBAL ([\w.]+) was not an allowed global", message)))


def _checkpoint_key(fh) -> str | None:
    """The key (one of ``CHECKPOINT_KEYS``) under which a ``torch.save`` checkpoint keeps its state_dict, from the
    strings in its pickle, read statically with ``pickletools`` (nothing runs); None when there is none."""
    try:
        fh.seek(0)
        with zipfile.ZipFile(fh) as archive:
            info = next((i for i in archive.infolist() if i.filename.rsplit("/", 1)[-1] == "data.pkl"), None)
            if info is None or info.file_size > _MAX_PICKLE_BYTES:
                return None
            strings = {arg for op, arg, _ in pickletools.genops(io.BytesIO(archive.read(info)))
                       if isinstance(arg, str) and "UNICODE" in op.name}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, RuntimeError):
        return None
    return next((key for key in CHECKPOINT_KEYS if key in strings), None)


def _suffix(path: Path) -> str:
    check_name_length(path, _file(path), named=True)
    suffix = path.suffix.lower()
    if suffix not in (".npz", *TORCH_SUFFIXES):
        raise _fail(_file(path), f"has an unknown extension {suffix or '(none)'!r}; use .npz (or .pt/.pth/.ckpt "
                                 "with torch installed)")
    return suffix


def read_state_dict(path) -> dict:
    """The raw entries of a weights file, unchecked (keys as stored): arrays from ``.npz``, tensors from
    ``.pt``/``.pth``/``.ckpt`` (a checkpoint's state_dict, see :func:`model_from_state_dict`). A regular file only;
    an ``.npz`` is refused before decompression when its arrays exceed the memory available."""
    path = Path(path)
    if _suffix(path) == ".npz":
        with _open_npz(path) as archive:
            archive.check_memory()
            return {name: archive.load(name) for name in archive.headers}
    return _entries(_file(path), _read_torch(path))


def _as_array(source: str, key: str, value) -> np.ndarray:
    """A numpy array of one state_dict entry: arrays as they are, ``.npz`` members read now, tensors detached to
    the CPU (float16 and bfloat16 widened to float32, which numpy can hold exactly)."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, _Member):
        return value.load()
    if _is_tensor(value):
        tensor = value.detach().cpu()
        if str(tensor.dtype) in ("torch.float16", "torch.bfloat16"):
            tensor = tensor.float()
        try:
            return tensor.numpy()
        except (TypeError, RuntimeError):  # float8 and other dtypes numpy has no type for
            raise _fail(source, f"entry {key!r} has dtype {str(value.dtype).removeprefix('torch.')}, which numpy "
                                "cannot hold; save it as float32 (v.float())") from None
    raise _fail(source, f"entry {key!r} is a {type(value).__name__}, not an array or tensor; pass "
                        "model.state_dict() (or a dict of numpy arrays)")


def _is_tensor(value) -> bool:
    """A torch.Tensor, recognised without importing torch."""
    return callable(getattr(value, "detach", None)) and hasattr(value, "dtype") and hasattr(value, "layout")


class _Meta(NamedTuple):
    """What an entry is, known without reading its data: shape, numpy dtype kind and the bytes it takes."""

    shape: tuple[int, ...]
    kind: str  # numpy's dtype kind: f, i, u, b, c, ...
    dtype: str
    nbytes: int

    @property
    def ndim(self) -> int:
        return len(self.shape)


def _meta(source: str, key: str, value) -> _Meta:
    """An entry's :class:`_Meta`; refuses tensors that hold no numbers rnndiag can read (meta device, sparse or
    quantized layouts) naming the entry and the fix."""
    if isinstance(value, (np.ndarray, _Member)):
        dt = np.dtype(value.dtype)
        return _Meta(tuple(value.shape), dt.kind, dt.name, math.prod(value.shape) * dt.itemsize)
    if _is_tensor(value):
        try:
            return _tensor_meta(source, key, value)
        except RuntimeError:  # nested and other tensors without one shape
            raise _fail(source, f"entry {key!r} is a {type(value).__name__} without a plain shape (nested or "
                                f"another layout, {getattr(value, 'layout', '?')}); save dense weights") from None
    raise _fail(source, f"entry {key!r} is a {type(value).__name__}, not an array or tensor; pass "
                        "model.state_dict() (or a dict of numpy arrays)")


def _tensor_meta(source: str, key: str, value) -> _Meta:
    """A tensor's :class:`_Meta`, refusing meta-device, sparse and quantized tensors."""
    if getattr(value, "is_meta", False) or str(getattr(value, "device", "")) == "meta":
        raise _fail(source, f"entry {key!r} is on PyTorch's meta device (a shape without values); save the "
                            "weights of a materialised model (e.g. after model.to_empty(device='cpu') and "
                            "load_state_dict)")
    if str(value.layout) != "torch.strided":
        raise _fail(source, f"entry {key!r} is a sparse tensor ({value.layout}); save dense weights, e.g. "
                            "{k: v.to_dense() for k, v in state_dict.items()}")
    if getattr(value, "is_quantized", False):
        raise _fail(source, f"entry {key!r} is a quantized tensor ({value.dtype}); save the float weights "
                            "(v.dequantize())")
    kind = "f" if value.is_floating_point() else "c" if value.is_complex() else \
        "b" if str(value.dtype) == "torch.bool" else "i"
    return _Meta(tuple(int(d) for d in value.shape), kind, str(value.dtype).removeprefix("torch."),
                 int(value.numel()) * int(value.element_size()))



# -- finding the recurrent modules -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RecurrentModule:
    """One ``nn.RNN/nn.LSTM/nn.GRU`` in a state_dict: its dotted name (``""`` at the top level, as in
    ``model.named_modules()``) and the architecture its keys and shapes give.

    >>> from rnndiag import init_model
    >>> sd = {f"encoder.rnn.{k}": v for k, v in init_model("lstm", 3, 8, num_layers=2, seed=0).params.items()}
    >>> find_recurrent_modules(sd)[0].describe()
    'encoder.rnn (lstm, 2 layers, input 3, hidden 8)'
    """

    name: str
    cell: str
    input_size: int
    hidden_size: int
    num_layers: int
    bias: bool = True
    bidirectional: bool = False
    proj_size: int = 0

    @property
    def prefix(self) -> str:
        """What its keys start with: the name and a dot (nothing at the top level)."""
        return f"{self.name}." if self.name else ""

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every parameter it has, keyed without the prefix (see :func:`rnndiag.model.param_shapes`)."""
        return param_shapes(self.cell, self.input_size, self.hidden_size, self.num_layers, self.bias,
                            self.bidirectional, self.proj_size)

    def summary(self) -> str:
        """``lstm, 2 layers, input 3, hidden 256, bidirectional``."""
        return ", ".join([self.cell, f"{self.num_layers} layer{'s' if self.num_layers > 1 else ''}",
                          f"input {self.input_size}", f"hidden {self.hidden_size}",
                          *([f"proj_size {self.proj_size}"] if self.proj_size else []),
                          *(["bidirectional"] if self.bidirectional else []), *([] if self.bias else ["no bias"])])

    def describe(self) -> str:
        """``encoder.rnn (lstm, 2 layers, input 3, hidden 256, bidirectional)``."""
        return f"{self.name or TOP_LEVEL} ({self.summary()})"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def find_recurrent_modules(state_dict) -> list[RecurrentModule]:
    """Every recurrent module in a state_dict or a checkpoint dict (as :func:`model_from_state_dict` takes them),
    in the order of its keys; a module whose keys cannot pin down its architecture raises :class:`WeightsFileError`.

    >>> from rnndiag import init_model
    >>> sd = {f"rnn.{k}": v for k, v in init_model("gru", 2, 4, seed=0).params.items()}
    >>> [m.name for m in find_recurrent_modules(sd | {"head.weight": np.zeros((1, 4))})]
    ['rnn']
    """
    entries = _entries("state_dict", state_dict)
    stored_cell = _stored_cell("state_dict", entries)
    return [_architecture("state_dict", p, _module_metas("state_dict", entries, p), None, stored_cell)
            for p in _module_prefixes(entries)]


def _entries(source: str, obj) -> dict:
    """The flat state_dict in ``obj`` with string keys: ``obj`` itself, or the one a checkpoint keeps under one of
    ``CHECKPOINT_KEYS`` (``{"state_dict": ..., "epoch": ...}``, Lightning's ``.ckpt``, ``{"model": ...}``)."""
    if not isinstance(obj, Mapping):
        raise TypeError(f"{source} must be a mapping of parameter names to arrays or tensors "
                        f"(module.state_dict()); got {type(obj).__name__}")
    if not _has_recurrent_keys(obj):  # a checkpoint may hold other tensors too (torch.get_rng_state())
        inner = next((obj[k] for k in CHECKPOINT_KEYS if isinstance(obj.get(k), Mapping)
                      and (_has_recurrent_keys(obj[k]) or _holds_arrays(obj[k]))), None)
        if inner is not None:
            obj = inner
        elif not _holds_arrays(obj):
            keys = ", ".join(repr(k) for k in list(obj)[:8]) or "none"
            raise _fail(source, f"holds no weights (keys {keys}) and no state_dict under "
                                f"{', '.join(CHECKPOINT_KEYS)}; pass model.state_dict()")
    return {str(k): v for k, v in obj.items()}


def _has_recurrent_keys(obj: Mapping) -> bool:
    """Whether a key of ``obj`` ends in a recurrent parameter's name (``weight_ih_l0``, ``rnn.bias_hh_l1``...)."""
    return any(_PARAM.match(str(k).rpartition(".")[2]) for k in obj)


def _holds_arrays(obj: Mapping) -> bool:
    return any(isinstance(v, (np.ndarray, _Member)) or _is_tensor(v) for v in obj.values())


def _module_prefixes(entries) -> list[str]:
    """The key prefix of every recurrent module (``"encoder.rnn."``; ``""`` at the top level), in key order: each
    key that ends in a recurrent parameter's name (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...) marks one."""
    found: dict[str, None] = {}
    for key in entries:
        head, _, last = key.rpartition(".")
        if _PARAM.match(last):
            found.setdefault(f"{head}." if head else "", None)
    return list(found)


def _direct(entries, prefix: str) -> dict:
    """The entries of the module at ``prefix`` itself, not of its children, keyed without the prefix."""
    n = len(prefix)
    return {k[n:]: v for k, v in entries.items() if k.startswith(prefix) and "." not in k[n:]}


def _module_metas(source: str, entries, prefix: str) -> dict[str, _Meta]:
    return {k: _meta(source, prefix + k, v) for k, v in _direct(entries, prefix).items()}


def _choose_module(source: str, entries, prefix: str | None, module: str | None) -> str:
    """The key prefix of the module to load: the one ``prefix`` or ``module`` names, else the only one."""
    found = _module_prefixes(entries)
    if prefix and module is not None:
        raise _fail(source, f"got both prefix={prefix!r} and module={module!r}; pass one of them")
    if prefix:
        want = prefix if prefix.endswith(".") else f"{prefix}."
        if want in found:
            return want
        raise _fail(source, f"has no recurrent module under prefix {want!r}; {_listing(source, entries, found)}")
    if module is not None:
        want = "" if module == TOP_LEVEL else module.strip(".")
        exact = f"{want}." if want else ""
        matches = [exact] if exact in found else [p for p in found if want and p.endswith(f".{want}.")]
        if len(matches) == 1:
            return matches[0]
        if matches:
            names = ", ".join(p[:-1] for p in matches)
            raise _fail(source, f"module {module!r} fits several recurrent modules ({names}); pass the full name")
        raise _fail(source, f"has no recurrent module named {module!r}; {_listing(source, entries, found)}")
    if len(found) == 1:
        return found[0]
    if not found:
        tops = list(dict.fromkeys(k.split(".")[0] for k in entries))
        raise _fail(source, "holds no nn.RNN/LSTM/GRU parameters (no key ends in weight_ih_l0, weight_hh_l0, ...); "
                            f"its keys start with {', '.join(tops[:5])}{', ...' if len(tops) > 5 else ''}")
    example = found[0][:-1] or found[1][:-1]
    raise _fail(source, f"holds several recurrent modules: {_summaries(source, entries, found)}; choose one with "
                        f"--module {example} (Python: module={example!r})")


def _listing(source: str, entries, found: list[str]) -> str:
    if not found:
        return "it holds no recurrent module (no key ends in weight_ih_l0)"
    return f"its recurrent modules: {_summaries(source, entries, found)}; pass one with --module NAME"


def _summaries(source: str, entries, found: list[str]) -> str:
    """Each module's name and architecture, or that its keys do not give one."""
    out = []
    for prefix in found:
        try:
            out.append(_architecture(source, prefix, _module_metas(source, entries, prefix), None, None).describe())
        except ValueError:
            out.append(f"{prefix[:-1] or TOP_LEVEL} (keys that give no architecture)")
    return ", ".join(out)


# -- reading one module's architecture -------------------------------------------------------------------------
def _cell_for_gate_count() -> dict[int, str]:
    """Gate count G -> the cell it means without further word (the first in CELLS: rnn_tanh for G = 1)."""
    out: dict[int, str] = {}
    for cell in CELLS:
        out.setdefault(len(cell_module(cell).GATE_NAMES), cell)
    return out


def _stored_cell(source: str, raw: dict) -> str | None:
    stored = raw.pop(CELL_KEY, None)
    if stored is None:
        return None
    if isinstance(stored, _Member):
        if stored.dtype.kind != "U" or math.prod(stored.shape) > 64:
            raise _fail(source, f"key {CELL_KEY!r} must be a 0-d string array naming the cell")
        stored = stored.load()
    stored = np.asarray(stored)
    if stored.dtype.kind != "U" or stored.ndim != 0:
        raise _fail(source, f"key {CELL_KEY!r} must be a 0-d string array naming the cell")
    return str(stored)



def _architecture(source: str, prefix: str, metas: dict[str, _Meta], cell: str | None,
                  stored_cell: str | None) -> RecurrentModule:
    """The module at ``prefix`` as its keys and shapes give it, ``cell`` (or the stored cell name) checked against
    its gate count. Only what pins the architecture down is checked here; every shape is checked after."""
    _check_keys(source, prefix, metas)
    gates, hidden, proj = _gate_rows(source, prefix, metas)
    by_gates = _cell_for_gate_count()
    inferred = "lstm" if proj else by_gates[gates]
    if cell is not None:
        cell = check_cell(cell)
    elif stored_cell is not None:
        cell = check_cell(stored_cell, f"{CELL_KEY} in {source}")
    else:
        cell = inferred
    if len(cell_module(cell).GATE_NAMES) != gates:
        raise _fail(source, f"{prefix}weight_hh_l0 has {gates}*H rows, which is a {inferred}, not a {cell}; drop "
                            "--cell or fix it")
    w_ih = metas["weight_ih_l0"]
    if w_ih.ndim != 2 or w_ih.shape[1] == 0:
        raise _fail(source, f"{prefix}weight_ih_l0 has shape {w_ih.shape}; expected ({gates * hidden}, input_size) "
                            "with input_size >= 1")
    num_layers, bidirectional = _layers(source, prefix, metas)
    has_bias = "bias_ih_l0" in metas or "bias_hh_l0" in metas
    return RecurrentModule(prefix[:-1], cell, w_ih.shape[1], hidden, num_layers, has_bias, bidirectional, proj)


def _check_keys(source: str, prefix: str, metas: dict[str, _Meta]) -> None:
    unknown = [prefix + k for k in metas if not _PARAM.match(k)]
    if unknown:
        raise _fail(source, f"has keys that are not nn.RNN/LSTM/GRU parameters: {', '.join(unknown[:5])}; expected "
                            f"{prefix}weight_ih_l0, {prefix}weight_hh_l0, {prefix}bias_ih_l0, ... as "
                            "module.state_dict() names them")
    missing = [prefix + k for k in ("weight_ih_l0", "weight_hh_l0") if k not in metas]
    if missing:
        raise _fail(source, f"is missing {', '.join(missing)}; expected PyTorch names weight_ih_l0, weight_hh_l0, ...")
    for k, v in metas.items():
        if v.kind not in "fiu":
            raise _fail(source, f"key {prefix + k!r} has dtype {v.dtype}, not real numbers; save float arrays")


def _gate_rows(source: str, prefix: str, metas: dict[str, _Meta]) -> tuple[int, int, int]:
    """(G, H, P): gate count, hidden size and proj_size, from ``weight_hh_l0`` (G*H, P or H) and, with a
    projection, ``weight_hr_l0`` (P, H)."""
    w_hh, w_hr = metas["weight_hh_l0"], metas.get("weight_hr_l0")
    hh = f"{prefix}weight_hh_l0"
    if w_hr is not None:
        if w_hr.ndim != 2 or 0 in w_hr.shape:
            raise _fail(source, f"{prefix}weight_hr_l0 has shape {w_hr.shape}; expected (proj_size, hidden_size) "
                                "as in nn.LSTM(proj_size=...)")
        proj, hidden = w_hr.shape
        if proj >= hidden:
            raise _fail(source, f"{prefix}weight_hr_l0 has shape {w_hr.shape}: proj_size {proj} must be smaller "
                                f"than hidden size {hidden}, as nn.LSTM requires; save the module's state_dict as it "
                                "is")
        if w_hh.shape != (4 * hidden, proj):
            raise _fail(source, f"{hh} has shape {w_hh.shape}; {prefix}weight_hr_l0 {w_hr.shape} makes an LSTM "
                                f"with hidden size {hidden} and proj_size {proj}, whose weight_hh_l0 is "
                                f"{(4 * hidden, proj)}; save the module's state_dict as it is")
        return 4, hidden, proj
    by_gates = _cell_for_gate_count()
    counts = ", ".join(f"{g} ({cell})" for g, cell in sorted(by_gates.items()))
    if w_hh.ndim != 2 or w_hh.shape[1] == 0 or w_hh.shape[0] % w_hh.shape[1] != 0:
        raise _fail(source, f"{hh} has shape {w_hh.shape}; expected (G*H, H) with G one of {counts}")
    hidden = w_hh.shape[1]
    gates = w_hh.shape[0] // hidden
    if gates not in by_gates:
        raise _fail(source, f"{hh} has shape {w_hh.shape}: {gates}*H rows, but G must be one of {counts}")
    return gates, hidden, 0


def _layers(source: str, prefix: str, metas: dict[str, _Meta]) -> tuple[int, bool]:
    """(num_layers, bidirectional) from the keys' layer indices and ``_reverse`` suffixes."""
    parsed = [_PARAM.match(k) for k in metas]
    layers = sorted({int(m.group(2)) for m in parsed})
    if layers != list(range(len(layers))):
        where = f" in {prefix[:-1]}" if prefix else ""
        raise _fail(source, f"has layers {layers}{where}; layer indices must run 0..{len(layers) - 1} without gaps")
    reverse = sorted({int(m.group(2)) for m in parsed if m.group(3)})
    if reverse and reverse != layers:
        raise _fail(source, f"has {prefix}*_reverse keys for layer {', '.join(map(str, reverse))} of layers "
                            f"{', '.join(map(str, layers))}: a bidirectional module has both directions in every "
                            "layer; save the module's whole state_dict")
    return len(layers), bool(reverse)


def _check_shapes(source: str, found: RecurrentModule, metas: dict[str, _Meta]) -> dict[str, tuple[int, ...]]:
    """Every key the architecture has, and no other, each with its shape; returns the expected shapes."""
    expected, p = found.param_shapes(), found.prefix
    what = f"{'a' if found.cell == 'gru' else 'an'} {found.cell} ({found.summary().partition(', ')[2]})"
    missing = [p + k for k in expected if k not in metas]
    if missing:
        raise _fail(source, f"is missing {', '.join(missing[:5])} for {what}; save the module's whole state_dict")
    extra = [k for k in metas if k not in expected]
    if extra:
        hint = "biases must come in pairs per layer" if all(k.startswith("bias") for k in extra) else \
            "save one module's state_dict as it is"
        raise _fail(source, f"has {', '.join(p + k for k in extra[:5])}, which {what} does not have; {hint}")
    for k, shape in expected.items():
        if metas[k].shape != shape:
            raise _fail(source, f"key {p + k!r} has shape {metas[k].shape}; expected {shape} for {what}, the sizes "
                                f"{p}weight_ih_l0 and {p}weight_hh_l0 give; save one module's state_dict as it is")
    return expected


def _check_values(source: str, arrays: dict[str, np.ndarray], dtype: np.dtype, prefix: str = ""
                  ) -> dict[str, np.ndarray]:
    """The weights as ``dtype``, contiguous; NaN or Inf, and finite values that ``dtype`` cannot hold, refused."""
    out = {}
    for k, v in arrays.items():
        with np.errstate(all="ignore"):
            finite = np.isfinite(v).all() if v.dtype.kind == "f" else True
        if not finite:
            raise _fail(source, f"key {prefix + k!r} contains NaN or Inf; the weights are unusable (was training "
                                "diverging?)")
        where = first_overflow(v, dtype)
        if where is not None:
            raise _fail(source, f"key {prefix + k!r} holds {float(v[where]):.3g} at index {where}, which overflows "
                                f"{dtype.name} (largest {float(np.finfo(dtype).max):.3g}); analyse in float64 "
                                "(--dtype float64)")
        out[k] = np.ascontiguousarray(v, dtype=dtype)
    return out


# -- building the model ----------------------------------------------------------------------------------------
def model_from_state_dict(state_dict, cell: str | None = None, prefix: str | None = None, dtype=None, *,
                          module: str | None = None, source: str = "state_dict") -> RNNModel:
    """Build a model from an in-memory ``nn.RNN/nn.LSTM/nn.GRU`` state_dict: a mapping of numpy arrays or torch
    tensors with PyTorch's key names (``module.state_dict()`` as it is), a whole model's state_dict, or a
    checkpoint dict that keeps one under ``state_dict``, ``model_state_dict``, ``model``, ``net`` or ``module``.

    The recurrent module is found by its keys: with one, other modules' keys (an embedding, a decoder) are
    ignored; with several, ``module`` names the one to load (``"encoder.rnn"``, or a unique ending such as
    ``"rnn"``; :func:`find_recurrent_modules` lists them), as does ``prefix`` (the exact key prefix). The cell
    type, sizes, layer count, ``bidirectional`` and ``proj_size`` come from the keys and shapes; ``cell``
    overrides (an RNN's tanh/relu cannot be inferred: default ``rnn_tanh``, pass ``cell="rnn_relu"``). The weights
    keep their dtype (float16/bfloat16 become float32, named in ``source_dtype``) unless ``dtype`` is given.
    ``source`` names the mapping in error messages.

    >>> from rnndiag import init_model
    >>> model_from_state_dict(init_model("lstm", 3, 8, seed=0).state_dict()).describe()
    'lstm (input 3, hidden 8, 1 layer, float64)'
    """
    return _build(state_dict, cell, prefix, module, dtype, source, "state_dict")


def _build(state_dict, cell, prefix, module, dtype, source: str, origin: str) -> RNNModel:
    """The model of :func:`model_from_state_dict`; its ``init`` is ``origin`` and the module's name."""
    entries = _entries(source, state_dict)
    stored_cell = _stored_cell(source, entries)
    chosen = _choose_module(source, entries, prefix, module)
    metas = _module_metas(source, entries, chosen)  # names, shapes and dtypes first
    found = _architecture(source, chosen, metas, cell, stored_cell)
    expected = _check_shapes(source, found, metas)
    stored = sorted({metas[k].dtype for k in expected} & {"float16", "bfloat16"})
    if dtype is not None:
        dt = check_dtype(dtype)
    else:
        kinds = {metas[k].dtype for k in expected}
        dt = np.dtype(np.float32) if kinds <= {"float32", "float16", "bfloat16"} else np.dtype(np.float64)
    need = sum(metas[k].nbytes + math.prod(metas[k].shape) * dt.itemsize for k in expected)  # as read, and as used
    check_memory(need, f"loading {source}", "pass a smaller model")
    values = _direct(entries, chosen)
    params = _check_values(source, {k: _as_array(source, chosen + k, values[k]) for k in expected}, dt, chosen)
    return RNNModel(found.cell, found.input_size, found.hidden_size, found.num_layers, found.bias, params,
                    init=f"{origin} ({found.name})" if found.name else origin, bidirectional=found.bidirectional,
                    proj_size=found.proj_size, source_dtype=stored[0] if stored else None)


def load_weights(path, cell: str | None = None, *, dtype=None, prefix: str | None = None,
                 module: str | None = None) -> RNNModel:
    """Load an ``nn.RNN/nn.LSTM/nn.GRU`` from a weights file: ``.npz`` (PyTorch key names), or ``.pt``/``.pth``/
    ``.ckpt`` holding a state_dict or a training checkpoint (loaded with ``weights_only=True``).

    Reads the file (:func:`read_state_dict`) and builds the model with :func:`model_from_state_dict`, whose
    ``cell``, ``dtype``, ``prefix`` and ``module`` these are; the model's ``init`` names the file and the module
    (``"loaded from ckpt.pt (encoder.rnn)"``).

    >>> import tempfile, os
    >>> from rnndiag import init_model
    >>> p = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> _ = save_weights(init_model("gru", 2, 4, seed=0), p)
    >>> load_weights(p).cell
    'gru'
    """
    path = Path(path)
    origin = f"loaded from {path.name}"
    if _suffix(path) == ".npz":  # read lazily: keys and shapes are checked before any array is decompressed
        with _open_npz(path) as archive:
            raw = {name: _Member(archive, name) for name in archive.headers}
            return _build(raw, cell, prefix, module, dtype, _file(path), origin)
    return _build(_read_torch(path), cell, prefix, module, dtype, _file(path), origin)


def save_weights(model: RNNModel, path, *, overwrite: bool = False) -> Path:
    """Write ``model`` to ``path``: ``.npz`` with PyTorch key names (plus ``rnndiag_cell``), or ``.pt``/``.pth``.

    The file is written to a temporary name and renamed into place; an existing file is refused unless
    ``overwrite=True``.
    """
    if not isinstance(model, RNNModel):
        raise TypeError(f"model must be an RNNModel; got {type(model).__name__}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".pt", ".pth"):
        raise ValueError(f"weights path {str(path)!r} must end in .npz, .pt or .pth")
    if path.exists() and not overwrite:
        raise FileExistsError(f"weights file {str(path)!r} exists; pass overwrite=True or choose another name")
    if path.parent and not path.parent.is_dir():
        raise FileNotFoundError(f"folder {str(path.parent)!r} does not exist; create it first")
    if suffix == ".npz":
        def write(fh):
            np.savez(fh, **model.params, **{CELL_KEY: np.array(model.cell)})
    else:
        try:
            import torch
        except ImportError:
            raise ValueError("saving .pt needs torch; pip install 'rnndiag[torch]' or save .npz") from None

        def write(fh):
            torch.save({k: torch.from_numpy(v.copy()) for k, v in model.params.items()}, fh)
    return write_atomic(path, write)
