"""Load and save weights with PyTorch's state_dict names: ``.npz`` always, ``.pt``/``.pth`` when torch is installed.

No pickle is ever loaded: ``np.load(..., allow_pickle=False)`` and ``torch.load(..., weights_only=True)``.
Every problem with a file raises :class:`WeightsFileError` (a ``ValueError``) whose one-line message names the
file and says what to do.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ._validation import check_cell, check_dtype, first_overflow
from .cells import CELLS, cell_module
from .files import PathError, check_name_length, open_regular, write_atomic
from .model import RNNModel, param_shapes
from .npyfile import ArrayFileError, NpzArchive, check_memory

_KEY = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)$")
CELL_KEY = "rnndiag_cell"  # optional 0-d string array: the cell name, so rnn_relu survives a round trip


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


def _read_torch(path: Path) -> dict:
    try:
        import torch
    except ImportError:
        raise _fail(_file(path), "is a PyTorch file but torch is not installed; pip install 'rnndiag[torch]', or "
                                 "convert it to .npz with np.savez(p, **{k: v.numpy() for k, v in sd.items()})") \
            from None
    try:
        with open_regular(path, _file(path), named=True) as fh:
            # the tensors take about the file's size in memory (a .pt archive stores them uncompressed)
            check_memory(os.fstat(fh.fileno()).st_size, f"{_file(path)} (loading)", "pass a smaller file")
            with warnings.catch_warnings():  # torch's own warnings about odd tensors: the checks below say it
                warnings.simplefilter("ignore")
                obj = torch.load(fh, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, PathError, ArrayFileError):
        raise
    except Exception as exc:  # torch raises many types for bad files (UnpicklingError, RuntimeError, EOFError ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _fail(_file(path), f"cannot be read as a weights-only PyTorch state_dict ({first[:160]}); save "
                                 "model.state_dict() with torch.save") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # a checkpoint dict {"state_dict": ..., "epoch": ...}
    if not isinstance(obj, dict):
        raise _fail(_file(path), f"holds a {type(obj).__name__}, not a state_dict; save model.state_dict() with "
                                 "torch.save")
    return obj


def _suffix(path: Path) -> str:
    check_name_length(path, _file(path), named=True)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".pt", ".pth"):
        raise _fail(_file(path), f"has an unknown extension {suffix or '(none)'!r}; use .npz (or .pt/.pth with torch "
                                 "installed)")
    return suffix


def read_state_dict(path) -> dict:
    """The raw entries of a weights file, unchecked (keys as stored): arrays from ``.npz``, tensors from ``.pt``.
    A regular file only; an ``.npz`` is refused before decompression when its arrays exceed the memory available."""
    path = Path(path)
    if _suffix(path) == ".npz":
        with _open_npz(path) as archive:
            archive.check_memory()
            return {name: archive.load(name) for name in archive.headers}
    return _read_torch(path)


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


def _strip_prefix(source: str, raw: dict[str, np.ndarray], prefix: str | None) -> dict[str, np.ndarray]:
    if prefix:
        if not prefix.endswith("."):
            prefix += "."
        picked = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
        if not picked:
            raise _fail(source, f"has no keys under prefix {prefix!r}; its keys start with "
                                f"{sorted({k.split('.')[0] for k in raw})[:5]}")
        return picked
    # a whole-model state_dict whose RNN lives under one prefix ("encoder.rnn.weight_ih_l0"): take it if unique
    found = {k[: -len("weight_ih_l0")] for k in raw if k.endswith("weight_ih_l0")}
    if len(found) == 1:
        (only,) = found
        if only:
            stray = [k for k in raw if not k.startswith(only) and k != CELL_KEY]
            if stray:
                raise _fail(source, f"holds other modules' keys besides the RNN under {only!r} (e.g. {stray[0]!r}); "
                                    f"pass prefix={only[:-1]!r} (CLI: --prefix) to pick the RNN")
            return {k[len(only):]: v for k, v in raw.items() if k.startswith(only)} | (
                {CELL_KEY: raw[CELL_KEY]} if CELL_KEY in raw else {})
        return raw
    if len(found) > 1:
        raise _fail(source, f"holds several recurrent modules ({', '.join(sorted(p or '(top)' for p in found))}); "
                            "pass prefix= (CLI: --prefix) to choose one")
    return raw


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


def _check_keys(source: str, raw: dict[str, _Meta]) -> None:
    if any(k.endswith("_reverse") for k in raw):
        raise _fail(source, "is a bidirectional RNN (keys ending in _reverse); rnndiag analyses one direction: "
                            "save a unidirectional model or drop the _reverse keys")
    if any(k.startswith("weight_hr_l") for k in raw):
        raise _fail(source, "is an LSTM with proj_size > 0 (weight_hr_l* keys), which rnndiag does not support yet")
    unknown = [k for k in raw if not _KEY.match(k)]
    if unknown:
        raise _fail(source, f"has keys that are not nn.RNN/LSTM/GRU parameters: {', '.join(unknown[:5])}; expected "
                            "weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, ... (or pass prefix=)")
    if "weight_hh_l0" not in raw or "weight_ih_l0" not in raw:
        missing = [k for k in ("weight_ih_l0", "weight_hh_l0") if k not in raw]
        raise _fail(source, f"is missing {', '.join(missing)}; expected PyTorch names weight_ih_l0, weight_hh_l0, ...")
    for k, v in raw.items():
        if v.kind not in "fiu":
            raise _fail(source, f"key {k!r} has dtype {v.dtype}, not real numbers; save float arrays")


def _check_values(source: str, arrays: dict[str, np.ndarray], dtype: np.dtype) -> dict[str, np.ndarray]:
    """The weights as ``dtype``, contiguous; NaN or Inf, and finite values that ``dtype`` cannot hold, refused."""
    out = {}
    for k, v in arrays.items():
        with np.errstate(all="ignore"):
            finite = np.isfinite(v).all() if v.dtype.kind == "f" else True
        if not finite:
            raise _fail(source, f"key {k!r} contains NaN or Inf; the weights are unusable (was training diverging?)")
        where = first_overflow(v, dtype)
        if where is not None:
            raise _fail(source, f"key {k!r} holds {float(v[where]):.3g} at index {where}, which overflows "
                                f"{dtype.name} (largest {float(np.finfo(dtype).max):.3g}); analyse in float64 "
                                "(--dtype float64)")
        out[k] = np.ascontiguousarray(v, dtype=dtype)
    return out


def _architecture(source: str, raw: dict[str, _Meta], cell: str | None, stored_cell: str | None):
    """(cell, input_size, hidden_size, num_layers, bias) from the keys and shapes, checked against ``cell``."""
    w_hh = raw["weight_hh_l0"]
    by_gates = _cell_for_gate_count()
    counts = ", ".join(f"{g} ({cell})" for g, cell in sorted(by_gates.items()))
    if w_hh.ndim != 2 or w_hh.shape[1] == 0 or w_hh.shape[0] % w_hh.shape[1] != 0:
        raise _fail(source, f"weight_hh_l0 has shape {w_hh.shape}; expected (G*H, H) with G one of {counts}")
    H = w_hh.shape[1]
    G = w_hh.shape[0] // H
    if G not in by_gates:
        raise _fail(source, f"weight_hh_l0 has shape {w_hh.shape}: {G}*H rows, but G must be one of {counts}")
    inferred = by_gates[G]
    if cell is not None:
        cell = check_cell(cell)
    elif stored_cell is not None:
        cell = check_cell(stored_cell, f"{CELL_KEY} in {source}")
    else:
        cell = inferred
    if len(cell_module(cell).GATE_NAMES) != G:
        raise _fail(source, f"weight_hh_l0 has {G}*H rows, which is a {inferred}, not a {cell}; drop --cell or fix "
                            "it")
    w_ih = raw["weight_ih_l0"]
    if w_ih.ndim != 2 or w_ih.shape[1] == 0:
        raise _fail(source, f"weight_ih_l0 has shape {w_ih.shape}; expected ({G * H}, input_size) with "
                            "input_size >= 1")
    layers = sorted({int(_KEY.match(k).group(2)) for k in raw})
    if layers != list(range(len(layers))):
        raise _fail(source, f"has layers {layers}; layer indices must run 0..{len(layers) - 1} without gaps")
    return cell, w_ih.shape[1], H, len(layers), "bias_ih_l0" in raw or "bias_hh_l0" in raw


def model_from_state_dict(state_dict, cell: str | None = None, prefix: str | None = None, dtype=None, *,
                          source: str = "state_dict") -> RNNModel:
    """Build a model from an in-memory ``nn.RNN/nn.LSTM/nn.GRU`` state_dict: a mapping of numpy arrays or torch
    tensors with PyTorch's key names (``module.state_dict()`` as it is).

    The cell type, sizes and layer count are inferred from the keys and shapes; ``cell`` overrides (an RNN's
    tanh/relu cannot be inferred: default ``rnn_tanh``, pass ``cell="rnn_relu"``). The weights keep their dtype
    (float16/bfloat16 tensors become float32) unless ``dtype`` is given. ``prefix`` picks the RNN out of a whole
    model's state_dict (``"encoder.rnn"``). ``source`` names the mapping in error messages.

    >>> from rnndiag import init_model
    >>> model_from_state_dict(init_model("lstm", 3, 8, seed=0).state_dict()).describe()
    'lstm (input 3, hidden 8, 1 layer, float64)'
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{source} must be a mapping of parameter names to arrays or tensors "
                        f"(module.state_dict()); got {type(state_dict).__name__}")
    raw = _strip_prefix(source, {str(k): v for k, v in state_dict.items()}, prefix)
    stored_cell = _stored_cell(source, raw)
    values, raw = raw, {k: _meta(source, k, v) for k, v in raw.items()}  # names, shapes and dtypes first
    _check_keys(source, raw)
    cell, input_size, H, num_layers, has_bias = _architecture(source, raw, cell, stored_cell)
    expected = param_shapes(cell, input_size, H, num_layers, has_bias)
    missing = [k for k in expected if k not in raw]
    if missing:
        raise _fail(source, f"is missing {', '.join(missing)} for a {num_layers}-layer {cell} "
                            f"(hidden {H}, input {input_size})")
    extra = [k for k in raw if k not in expected]
    if extra:
        raise _fail(source, f"has {', '.join(extra)}, which a {'biased' if has_bias else 'bias-free'} "
                            f"{num_layers}-layer {cell} does not have; biases must come in pairs per layer")
    for k, shape in expected.items():
        if raw[k].shape != shape:
            raise _fail(source, f"key {k!r} has shape {raw[k].shape}; expected {shape} for a {cell} with hidden "
                                f"size {H} and input size {input_size}")
    if dtype is not None:
        dt = check_dtype(dtype)
    else:
        kinds = {raw[k].dtype for k in expected}
        dt = np.dtype(np.float32) if kinds <= {"float32", "float16", "bfloat16"} else np.dtype(np.float64)
    need = sum(raw[k].nbytes + math.prod(raw[k].shape) * dt.itemsize for k in expected)  # as read, and as used
    check_memory(need, f"loading {source}", "pass a smaller model")
    params = _check_values(source, {k: _as_array(source, k, values[k]) for k in expected}, dt)
    return RNNModel(cell, input_size, H, num_layers, has_bias, params, init="state_dict")


def load_weights(path, cell: str | None = None, *, dtype=None, prefix: str | None = None) -> RNNModel:
    """Load an ``nn.RNN/nn.LSTM/nn.GRU`` state_dict saved as ``.npz`` (PyTorch key names) or ``.pt``/``.pth``.

    Reads the file (:func:`read_state_dict`) and builds the model with :func:`model_from_state_dict`, whose
    ``cell``, ``dtype`` and ``prefix`` these are; the model's ``init`` names the file.

    >>> import tempfile, os
    >>> from rnndiag import init_model
    >>> p = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> _ = save_weights(init_model("gru", 2, 4, seed=0), p)
    >>> load_weights(p).cell
    'gru'
    """
    path = Path(path)
    if _suffix(path) == ".npz":  # read lazily: keys and shapes are checked before any array is decompressed
        with _open_npz(path) as archive:
            raw = {name: _Member(archive, name) for name in archive.headers}
            model = model_from_state_dict(raw, cell, prefix, dtype, source=_file(path))
    else:
        model = model_from_state_dict(_read_torch(path), cell, prefix, dtype, source=_file(path))
    return dataclasses.replace(model, init=f"loaded from {path.name}")


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
