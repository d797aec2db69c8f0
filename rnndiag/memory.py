r"""How much memory a command's library work needs at its peak, from the sizes alone, and how much there is.

Every estimate is a sum of named arrays, counted from what the code allocates (the engine, the cells, the
analysis, the training loop) for ``T`` steps (the task's own sequence length: copy's is ``seq_len + 20``), ``B``
sequences, ``H`` hidden units, ``I`` inputs, ``L`` layers, ``G`` gate blocks and itemsize ``E`` (4 for float32,
8 for float64). With ``NH = T B H`` one (T, B, H) array of the model's dtype is ``E NH`` bytes, and

.. math::

    \text{BPTT peak} = E\,NH\,\big(L F + L K + G + [L > 1](G + 1)\big) + 2 E\,T B I

where ``F`` arrays per unit are what ``forward`` keeps (tanh RNN 1: ``h``; LSTM 6: ``h, c`` and the four gates;
GRU 5: ``h``, ``W_hn h + b_hn`` and the three gates), ``K`` what ``backward`` adds (``dL/dh``, and ``dL/dc`` for the
LSTM), and ``G`` the gate pre-activation gradient ``d_pre`` that one layer's backward holds (with several layers,
the layer above's ``d_pre`` and the gradient passed down are still alive when the next layer's is made). ``F``,
``K`` and the number of Jacobian factors are read off a one-step BPTT of a 2-unit model (:func:`cell_footprint`),
so they follow the cells. A command's peak is the largest of its phases (see each ``estimate_*``): the analysis
adds, to the trace, its chunked float64 norms, the gate histograms' bin indices (int64, ``8 NH``) and blocks of
Jacobian factors; a training iteration, the loss gradient in float64 and in the model's dtype and, at scheduled
iterations, a forward pass over the held-out batch (``eval_batch`` sequences) while its own trace is held. Every
estimate adds ``UNCOUNTED`` (10%) for the small arrays and Python objects that no term names; measured with
``tracemalloc`` the estimates come out 1.1-1.4 times the peak where the (T, B, H) arrays dominate.

Not counted: the interpreter and the libraries themselves (SciPy's first import adds about 12 MiB), and an
analysis whose state overflows, which re-analyses its finite steps while the first trace is still held (up to
one more trace). ``check_fits`` keeps a margin (``fraction``) for these.

>>> e = estimate_analyze("lstm", 2, 64, 1, 100, 32, "float64", task="adding")
>>> 5 * 2**20 < e.bytes < 50 * 2**20, e.option
(True, '--batch-size, --seq-len or --hidden-size')
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._validation import check_cell, check_dtype, check_positive_int
from .analysis.jacobians import BLOCK_ELEMENTS, EXACT_MAX_STATE, FORMED_ELEMENTS, TRACKED
from .analysis.measure import CHUNK_STEPS
from .analysis.settings import LYAPUNOV_K, auto_sample
from .analysis.verdict import THRESHOLDS
from .cells import cell_module, is_gated
from .model import param_shapes
from .tasks import COPY_LENGTH, LOSS_TASKS, Problem, check_task, out_size, task_problem
from .train import TrainConfig

FLOAT64 = 8  # bytes: what the loss, the norms and the analysis compute in
INDEX = 8  # bytes of an np.intp: the gate histograms' bin of every value
PYTHON_FLOAT = 32  # bytes per float recorded in a Python list: the float object (24) and its slot (8)
UNCOUNTED = 0.1  # added to every estimate for what no term names: small arrays, Python objects, rounding
SPECTRUM_COPIES = 4  # (H, H) float64 arrays that eigvals / svd of one W_hh block hold at once
DEFAULT_FRACTION = 0.8  # check_fits: the share of the available memory an estimate may take
UNKNOWN_AVAILABLE = sys.maxsize  # available_memory() where nothing says: no refusal
CGROUP_UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a number near 2**63
ANALYZE_OPTION = "--batch-size, --seq-len or --hidden-size"
INPUT_FILE_OPTION = "the batch in --input (fewer sequences or steps) or --hidden-size"
PROBE_STEPS = 4  # the sequence length of the one-sequence batch a task's shape is read from


class ResourceError(ValueError):
    """A run that would not fit in memory; the message gives the estimate, the limit and the option to change."""


def format_bytes(n: float) -> str:
    """``2.3 GiB``, ``512 MiB``, ``12 KiB``, ``100 B`` (binary units, as ``free -h`` prints them)."""
    n = float(n)
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{n:.0f} B"


# -- what the machine has -------------------------------------------------------------------------------------
def _read_number(path: Path) -> int | None:
    """The integer in a one-line file, None for "max", a missing file or anything unreadable."""
    try:
        text = path.read_text().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def _mem_available() -> int | None:
    """``MemAvailable`` of /proc/meminfo (the kernel's estimate of what can be allocated without swapping)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_dirs(root: Path, path: str) -> list[Path]:
    """The cgroup folder of this process and each parent up to the mount point, innermost first (a limit on
    any of them applies); just the mount point when the process's own folder is not visible."""
    own = root / path.lstrip("/")
    dirs = [own, *own.parents] if own.is_dir() else [root]
    return [d for d in dirs if d == root or root in d.parents]


def _cgroup_headroom(cgroup_file: Path = Path("/proc/self/cgroup"),
                     mount: Path = Path("/sys/fs/cgroup")) -> tuple[int, str] | None:
    """The smallest ``limit - usage`` over the process's cgroups: v2 ``memory.max - memory.current``, v1
    ``memory.limit_in_bytes - memory.usage_in_bytes``; None where no limit is set or nothing is readable."""
    try:
        lines = cgroup_file.read_text().splitlines()
    except OSError:
        lines = []
    places = []  # (folder of a cgroup hierarchy, the process's path in it, limit file, usage file, label)
    for line in lines:  # "hierarchy-ID:controllers:path"; v2's has no controllers
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            for base in (mount, mount / "unified"):
                places.append((base, path, "memory.max", "memory.current", "cgroup memory.max"))
        elif "memory" in controllers.split(","):
            places.append((mount / "memory", path, "memory.limit_in_bytes", "memory.usage_in_bytes",
                           "cgroup memory.limit_in_bytes"))
    places += [(mount, "/", "memory.max", "memory.current", "cgroup memory.max"),
               (mount / "memory", "/", "memory.limit_in_bytes", "memory.usage_in_bytes",
                "cgroup memory.limit_in_bytes")]
    best = None
    for base, path, limit_name, usage_name, label in places:
        if not base.is_dir():
            continue
        for folder in _cgroup_dirs(base, path):
            limit = _read_number(folder / limit_name)
            if limit is None or limit >= CGROUP_UNLIMITED:
                continue
            headroom = max(0, limit - (_read_number(folder / usage_name) or 0))
            if best is None or headroom < best[0]:
                best = (headroom, label)
    return best


def _address_space_headroom() -> int | None:
    """``RLIMIT_AS`` (``ulimit -v``) less the process's current ``VmSize``, where a limit is set."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft == resource.RLIM_INFINITY or soft < 0:
            return None
        size = 0
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                size = int(line.split()[1]) * 1024
        return max(0, soft - size)
    except (ImportError, OSError, ValueError, IndexError):
        return None


def available_memory() -> tuple[int, str]:
    """``(bytes available now, where the limit comes from)``: the smallest of /proc/meminfo's ``MemAvailable``,
    the cgroup's limit less its usage (v2 ``memory.max``, v1 ``memory.limit_in_bytes``, over the process's cgroup
    and its parents) and ``RLIMIT_AS`` less the current ``VmSize``. Never raises: where none is known (another
    OS), ``(UNKNOWN_AVAILABLE, "unknown")``.

    >>> n, source = available_memory()
    >>> n > 0 and isinstance(source, str)
    True
    """
    found = []
    try:
        available = _mem_available()
        if available is not None:
            found.append((available, "MemAvailable"))
        cgroup = _cgroup_headroom()
        if cgroup is not None:
            found.append(cgroup)
        address_space = _address_space_headroom()
        if address_space is not None:
            found.append((address_space, "RLIMIT_AS"))
    except Exception:  # a reader's surprise must not stop a run: fall back to what is known
        pass
    return min(found) if found else (UNKNOWN_AVAILABLE, "unknown")


# -- the estimate ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryEstimate:
    """The bytes a command's library work needs at its peak: ``parts`` (named arrays of the peak ``phase``, summing
    to ``bytes``), ``what`` runs (for messages: "the analysis needs ..."), and the command-line ``option`` that
    reduces it."""

    bytes: int
    what: str
    parts: dict[str, int] = field(default_factory=dict)
    option: str = ANALYZE_OPTION
    phase: str = ""  # the step of the work where the peak is

    def to_dict(self) -> dict:
        return {"bytes": int(self.bytes), "human": format_bytes(self.bytes), "what": self.what,
                "phase": self.phase, "parts": {k: int(v) for k, v in self.parts.items()}, "option": self.option}


def check_fits(estimate: MemoryEstimate, *, available: int | tuple[int, str] | None = None,
               fraction: float = DEFAULT_FRACTION) -> None:
    """Refuse (:class:`ResourceError`, one line) an ``estimate`` above ``fraction`` of the memory ``available``
    (default: :func:`available_memory` now; an int, or ``(bytes, source)``).

    >>> check_fits(MemoryEstimate(3 * 2**30, "analysis"), available=(2**30, "MemAvailable"))
    Traceback (most recent call last):
    ...
    rnndiag.memory.ResourceError: the analysis needs about 3.0 GiB of memory (estimate) but 1.0 GiB is available \
(MemAvailable, 80% of it usable); reduce --batch-size, --seq-len or --hidden-size
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1]; got {fraction!r}")
    have, source = available_memory() if available is None else \
        (available if isinstance(available, tuple) else (int(available), "given"))
    if estimate.bytes <= fraction * have:
        return
    usable = "" if fraction == 1 else f", {fraction:.0%} of it usable"
    raise ResourceError(f"the {estimate.what} needs about {format_bytes(estimate.bytes)} of memory (estimate) but "
                        f"{format_bytes(have)} is available ({source}{usable}); reduce {estimate.option}")


# -- sizes ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellFootprint:
    """What one layer of a cell holds, per (step, sequence, hidden unit), as the engine runs it."""

    forward_arrays: int  # F: arrays forward keeps (the trace)
    gradient_arrays: int  # K: total dL/dh (and dL/dc) arrays backward adds
    output_arrays: int  # the arrays a caller keeps alive by holding the last layer's h (h is a view of h and c)
    jacobian_factors: int  # the (..., H) diagonal factors of one step Jacobian
    formed_per_h2: int  # entries of a Jacobian's formed dense part per H^2 (LSTM 2, GRU 1, RNN 0)


def _owner(a: np.ndarray) -> np.ndarray:
    """The array that owns ``a``'s memory."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


@functools.cache
def cell_footprint(cell: str) -> CellFootprint:
    """:class:`CellFootprint` of ``cell``, read off one BPTT step of a 2-unit, one-sequence model: each count is
    the bytes of what the engine made, over one (T, B, H) array's (distinct memory only: LSTM's ``h`` and ``c``
    are one allocation, its gates are ``pre``)."""
    from .engine import bptt
    from .init import init_model

    H = 2
    model = init_model(cell, 1, H, seed=0)
    trace = bptt(model, np.zeros((1, 1, 1)), np.ones((1, 1, H)))
    layer = trace.layers[0]
    owners = {id(_owner(a)): _owner(a) for a in layer.arrays.values()}
    grads = {id(_owner(a)): _owner(a) for a in (layer.grad_h, layer.grad_c) if a is not None}
    jac = layer.jacobians(0)
    formed = jac.with_formed().formed
    return CellFootprint(sum(a.size for a in owners.values()) // H, sum(a.size for a in grads.values()) // H,
                         _owner(layer.h).size // H, len(jac.factors), 0 if formed is None else formed.size // H**2)


@dataclass(frozen=True)
class ModelSizes:
    """A model's sizes without its weights; has the attributes :func:`rnndiag.analysis.settings.auto_sample`
    reads from a model."""

    cell: str
    input_size: int
    hidden_size: int
    num_layers: int
    itemsize: int  # E: bytes per number in the model's dtype

    @classmethod
    def of(cls, cell, input_size, hidden_size, num_layers, dtype) -> ModelSizes:
        return cls(check_cell(cell), check_positive_int(input_size, "input_size"),
                   check_positive_int(hidden_size, "hidden_size"), check_positive_int(num_layers, "num_layers"),
                   check_dtype(dtype).itemsize)

    @property
    def gate_count(self) -> int:
        return len(cell_module(self.cell).GATE_NAMES)

    @property
    def state_size(self) -> int:
        return cell_module(self.cell).STATE_FACTOR * self.hidden_size

    @property
    def num_params(self) -> int:
        return sum(math.prod(s) for s in param_shapes(self.cell, self.input_size, self.hidden_size,
                                                      self.num_layers).values())

    @property
    def footprint(self) -> CellFootprint:
        return cell_footprint(self.cell)


@dataclass(frozen=True)
class TaskShape:
    """What a task's batch looks like, read off a one-sequence batch of ``PROBE_STEPS`` steps (``probe``)."""

    task: str
    probe: Problem = field(repr=False, compare=False)
    extra_steps: int  # the batch's steps beyond seq_len (copy: the 10 symbols and the 10 recalled)
    input_size: int
    out_size: int  # the readout's outputs (0 without a loss)

    @property
    def has_loss(self) -> bool:
        return self.probe.has_loss

    def own_loss_applies(self, loss: str | None) -> bool:
        """Whether an analysis asking for ``loss`` ("last", "all"; None: the task's own) differentiates the task's
        loss, which first runs the model forward for its states (:meth:`Problem.own_loss_applies`)."""
        return self.probe.own_loss_applies(loss)

    def steps(self, seq_len: int) -> int:
        """T: the length of the task's sequences for ``seq_len``."""
        return check_positive_int(seq_len, "seq_len") + self.extra_steps

    def loss_window(self, T: int) -> int:
        """The steps the readout (and the loss's temporaries) covers: "last" 1, copy's "window" ``COPY_LENGTH``,
        "all" T."""
        return {"last": 1, "window": min(T, COPY_LENGTH)}.get(self.probe.batch.loss_steps, T)


@functools.cache
def task_shape(task: str) -> TaskShape:
    """:class:`TaskShape` of ``task``."""
    task = check_task(task)
    problem = task_problem(task, PROBE_STEPS, 1, 0, 1)
    return TaskShape(task, problem, problem.x.shape[0] - PROBE_STEPS, problem.x.shape[2],
                     out_size(task) if problem.has_loss else 0)


def task_steps(task: str, seq_len: int) -> int:
    """T of ``task``'s batch for ``seq_len`` (copy: ``seq_len + 20``)."""
    return task_shape(task).steps(seq_len)


# -- the terms: bytes of named arrays -------------------------------------------------------------------------
def _arrays(sizes: ModelSizes, T: int, B: int, count: float) -> int:
    """``count`` arrays of shape (T, B, H) in the model's dtype."""
    return int(count * T * B * sizes.hidden_size * sizes.itemsize)


def _inputs(sizes: ModelSizes, T: int, B: int, shape: TaskShape | None) -> int:
    """The batch: ``x`` (T, B, I) in the model's dtype, and a task's targets (int64 or float64, over the loss's
    window) or, for given inputs (``shape`` None), the file's array as read (float64) beside a float32 copy."""
    E = sizes.itemsize
    if shape is None:
        return T * B * sizes.input_size * (E + (FLOAT64 if E != FLOAT64 else 0))
    targets = (shape.loss_window(T) + 1) * B * FLOAT64 if shape.has_loss else 0
    return T * B * sizes.input_size * E + targets


def _trace(sizes: ModelSizes, T: int, B: int) -> int:
    """A BPTT's result: every layer's forward arrays and total gradients, ``x`` and ``dL/dx``, the initial
    states and their gradients: ``E NH L (F + K) + 2 E T B I + 2 E L B S``."""
    fp, E = sizes.footprint, sizes.itemsize
    return _arrays(sizes, T, B, sizes.num_layers * (fp.forward_arrays + fp.gradient_arrays)) + \
        2 * T * B * sizes.input_size * E + 2 * sizes.num_layers * B * sizes.state_size * E


def _forward_trace(sizes: ModelSizes, T: int, B: int) -> int:
    """A forward pass at its peak: ``E NH L F``, or while layer l projects its input (``[input, 1]`` (T*B, in+1)
    times the weights into its ``pre``, G arrays) the l layers below; with its copy of ``x``, the initial states
    and one step's buffers."""
    fp, G, H, L, E = sizes.footprint, sizes.gate_count, sizes.hidden_size, sizes.num_layers, sizes.itemsize
    projecting = max(_arrays(sizes, T, B, layer * fp.forward_arrays + G)
                     + T * B * ((sizes.input_size if layer == 0 else H) + 1) * E for layer in range(L))
    return max(_arrays(sizes, T, B, L * fp.forward_arrays), projecting) + T * B * sizes.input_size * E + \
        L * B * sizes.state_size * E + _arrays(sizes, 1, B, 2 * G + 4)


def _bptt_temporaries(sizes: ModelSizes, T: int, B: int) -> int:
    """What BPTT holds besides its result: ``d_pre`` (G arrays), with several layers also the layer above's
    ``d_pre`` and the gradient passed down (``G + 1``), and one step's buffers ((B, G H) and a few (B, H))."""
    G, L = sizes.gate_count, sizes.num_layers
    d_pre = G if L == 1 else 2 * G + 1
    return _arrays(sizes, T, B, d_pre) + _arrays(sizes, 1, B, 2 * G + 4)


def bptt_parts(sizes: ModelSizes, T: int, B: int) -> dict[str, int]:
    """The BPTT peak: its result (the trace with gradients) and its temporaries (see the module docstring)."""
    return {"BPTT trace (forward arrays and gradients)": _trace(sizes, T, B),
            "BPTT temporaries (d_pre)": _bptt_temporaries(sizes, T, B)}


def _parameters(sizes: ModelSizes, copies: float) -> int:
    """``copies`` float64-sized copies of every parameter."""
    return int(copies * sizes.num_params * FLOAT64)


def _readout_temporaries(sizes: ModelSizes, T: int, B: int, shape: TaskShape | None) -> int:
    """The loss through the readout, in float64: the logits / outputs (T_loss, B, O), about three at once, and
    ``dL/dy @ W`` (T_loss, B, H) before it lands in ``grad_h``."""
    if shape is None or not shape.has_loss:
        return 0
    window = shape.loss_window(T)
    return window * B * (3 * shape.out_size + sizes.hidden_size) * FLOAT64


def _block_steps(sizes: ModelSizes, T: int, n: int) -> int:
    """Steps per block of implicit Jacobians of ``n`` sequences (``jacobian_blocks``)."""
    return min(T, max(1, BLOCK_ELEMENTS // (n * sizes.state_size)))


def _jacobian_block(sizes: ModelSizes, T: int, n: int) -> int:
    """Blocks of implicit Jacobians of ``n`` sequences (``jacobian_blocks``: ``BLOCK_ELEMENTS`` steps x sequences
    x S each): per (row, unit), the factors in float64 (twice where there are several blocks: the loop holds the
    previous one while the next is made) and, while a block is made, the trace's rows it reads and its factors
    in the model's dtype: ``blocks_alive 8 factors + (F + 3 [+ factors, float32]) E`` bytes."""
    fp, E = sizes.footprint, sizes.itemsize
    steps = _block_steps(sizes, T, n)
    alive = 1 if steps >= T else 2
    making = fp.forward_arrays + 3 + (fp.jacobian_factors if E != FLOAT64 else 0)
    return steps * n * sizes.hidden_size * (alive * fp.jacobian_factors * FLOAT64 + making * E)


def _formed(sizes: ModelSizes, T: int, n: int) -> int:
    """Batches of formed dense Jacobian parts (``formed_steps``: ``FORMED_ELEMENTS`` per batch; the previous
    batch is still held while the next is formed)."""
    fp, S, H = sizes.footprint, sizes.state_size, sizes.hidden_size
    block = _block_steps(sizes, T, n)
    per = min(block, max(1, FORMED_ELEMENTS // (n * S * S)))
    alive = 1 if per >= block else 2
    return alive * per * n * fp.formed_per_h2 * H * H * FLOAT64


def _product_norms(sizes: ModelSizes, T: int, n: int) -> int:
    """``product_norms``: a block of factors and four (T, n) curves; then the larger of the step norms (dense
    step Jacobians and an SVD's copy, or the Lanczos vectors) and the running product with its spare (n, S, S),
    an SVD's copies of it and the formed Jacobians."""
    S = sizes.state_size
    if S <= EXACT_MAX_STATE:
        per = min(_block_steps(sizes, T, n), max(1, BLOCK_ELEMENTS // (n * S * S)))
        step_norms = 2 * per * n * S * S * FLOAT64
        products = 4 * n * S * S * FLOAT64
    else:
        rows = _block_steps(sizes, T, n) * n
        step_norms = rows * (sizes.gate_count * sizes.hidden_size + 6 * S) * FLOAT64
        products = 2 * n * S * S * FLOAT64 + 3 * n * S * TRACKED * FLOAT64
    return _jacobian_block(sizes, T, n) + 4 * T * n * FLOAT64 + \
        max(step_norms, products + _formed(sizes, T, n))


def _lyapunov(sizes: ModelSizes, T: int, n: int, k: int) -> int:
    """``lyapunov_spectrum``: the frame (n, S, k), its product with J and the QR's copies (four), a block."""
    return 4 * n * sizes.state_size * k * FLOAT64 + _jacobian_block(sizes, T, n) + _formed(sizes, T, n)


def _gate_histograms(sizes: ModelSizes, T: int, B: int) -> int:
    """``gate_stats``: a gate's bin index per value (int64) and its shifted values (tanh gates), or |h| and
    its comparison for the saturation of h."""
    per_value = max(sizes.itemsize + 1, INDEX + sizes.itemsize if is_gated(sizes.cell) else 0)
    return T * B * sizes.hidden_size * per_value


def _step_norms(sizes: ModelSizes, T: int, B: int) -> int:
    """``step_norms``: ``CHUNK_STEPS`` steps of ``dL/dh`` in float64 (a copy when float32) and their squares."""
    copies = 1 if sizes.itemsize == FLOAT64 else 2
    return copies * min(T, CHUNK_STEPS) * B * sizes.hidden_size * FLOAT64


def _curves(sizes: ModelSizes, T: int, B: int, n: int) -> int:
    """What the analysis keeps per layer (``GradientFlow``): ``||dL/dh_t||`` and the last-step curve (T, B), the
    product and step norms (T, n), all float64."""
    return sizes.num_layers * (2 * T * B + 2 * T * n) * FLOAT64


def analysis_sample(sizes: ModelSizes, T: int, B: int, lyapunov_k: int | None = None) -> tuple[int, int]:
    """``(n, k)``: the sequences the Jacobian products and Lyapunov exponents use (``auto_sample``) and the
    exponents computed (``LYAPUNOV_K`` or the state size, unless ``lyapunov_k``)."""
    k = min(sizes.state_size, LYAPUNOV_K) if lyapunov_k is None else lyapunov_k
    return auto_sample(sizes, T, B, k), k


def analysis_temporaries(sizes: ModelSizes, T: int, B: int, *, lyapunov_k: int | None = None) -> dict[str, int]:
    """The temporaries of ``measure_layer`` (one layer at a time; each of its steps frees its own) and of the
    verdict that follows, by name: the chunked float64 norms of ``dL/dh``, the last-step chain over all B
    sequences, the Jacobian product norms and Lyapunov exponents over the sample (:func:`analysis_sample`), the
    gate histograms with a median's copy of a (T, B) curve, the ``clip_window``-step BPTT behind a suggested
    clipping threshold, and the weight spectra."""
    n, k = analysis_sample(sizes, T, B, lyapunov_k)
    G, H = sizes.gate_count, sizes.hidden_size
    window = min(T, THRESHOLDS["clip_window"])
    return {
        "gradient norms (float64 chunks)": _step_norms(sizes, T, B),
        "last-step chain": _jacobian_block(sizes, T, B) + B * (2 * G + 6) * H * FLOAT64 + T * B * FLOAT64,
        "Jacobian product norms": _product_norms(sizes, T, n),
        "Lyapunov exponents": _lyapunov(sizes, T, n, k),
        "gate histograms": _gate_histograms(sizes, T, B) + T * B * FLOAT64,
        "suggested clipping BPTT": sum(bptt_parts(sizes, window, B).values()),
        "weight spectra": SPECTRUM_COPIES * H * H * FLOAT64,
    }


def _largest(name: str, terms: dict[str, int]) -> dict[str, int]:
    """The largest of ``terms``, named ``name: its name``."""
    key = max(terms, key=terms.get)
    return {f"{name}: {key}": terms[key]}


def _peak(what: str, option: str, fixed: dict[str, int], phases: dict[str, dict[str, int]]) -> MemoryEstimate:
    """The estimate of the largest phase: its terms, the ``fixed`` ones (alive throughout) and ``UNCOUNTED`` of
    their sum for what no term names (small arrays, Python objects, allocator rounding)."""
    phase = max(phases, key=lambda name: sum(phases[name].values()))
    parts = {k: int(v) for k, v in {**fixed, **phases[phase]}.items() if v}
    parts[f"not counted above (+{UNCOUNTED:.0%})"] = math.ceil(UNCOUNTED * sum(parts.values()))
    return MemoryEstimate(sum(parts.values()), what, parts, option, phase)


def analyze_phases(sizes: ModelSizes, T: int, B: int, shape: TaskShape | None, loss: str | None = None, *,
                   lyapunov_k: int | None = None) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """``(fixed terms, phases)`` of ``diagnose_problem`` (or of ``analyze`` on given inputs: ``shape`` None).

    With the task's own loss (:meth:`TaskShape.own_loss_applies`): a forward pass, whose last layer's states the
    loss keeps (``h``; with LSTM and GRU the (2, T, B, H) block it is part of), then the loss in float64 (the
    states' copy, ``dL/dh`` and the readout's temporaries), whose ``dL/dh`` is kept with, for a float32 model, its
    converted copy; with the probe, ``dL/dh`` in the model's dtype. Then the BPTT, then the analysis on the trace
    (:func:`analysis_temporaries`, the largest of them at a time).
    """
    E = sizes.itemsize
    fixed = {"model parameters, gradients and copies": _parameters(sizes, 5),
             "inputs (x, targets)": _inputs(sizes, T, B, shape)}
    if shape is not None and shape.own_loss_applies(loss):
        states = {"last layer's states, kept for the loss": _arrays(sizes, T, B, sizes.footprint.output_arrays)}
        gradient = {**states, "loss gradient dL/dh (float64, and the model's dtype)":
                    _arrays(sizes, T, B, (FLOAT64 + (E if E != FLOAT64 else 0)) / E)}
        loss_phases = {"forward for the task loss": {"forward trace": _forward_trace(sizes, T, B)},
                       "task loss": {**states, "states and dL/dh in float64": _arrays(sizes, T, B, 2 * FLOAT64 / E),
                                     "readout temporaries (float64)": _readout_temporaries(sizes, T, B, shape)}}
    else:
        gradient, loss_phases = {"probe gradient dL/dh": _arrays(sizes, T, B, 1)}, {}
    n, _ = analysis_sample(sizes, T, B, lyapunov_k)
    analysis = {"BPTT trace (forward arrays and gradients)": _trace(sizes, T, B),
                "per-sequence curves and start vectors (float64)": _curves(sizes, T, B, n)
                + 2 * B * sizes.state_size * FLOAT64,
                **_largest("analysis temporaries", analysis_temporaries(sizes, T, B, lyapunov_k=lyapunov_k))}
    return fixed, {**loss_phases, "BPTT": {**gradient, **bptt_parts(sizes, T, B)},
                   "analysis": {**gradient, **analysis}}


def estimate_analyze(cell: str, input_size: int, hidden_size: int, num_layers: int, seq_len: int, batch_size: int,
                     dtype="float64", *, task: str | None = None, loss: str | None = None,
                     lyapunov_k: int | None = None) -> MemoryEstimate:
    """The peak of ``rnndiag analyze``'s library work: ``diagnose_problem`` on ``task``'s batch of ``batch_size``
    sequences (T from :func:`task_steps`: copy's is ``seq_len + 20``) with the ``--loss`` ``loss`` (None: the
    task's own), or, with ``task=None``, ``analyze`` of given inputs (T = ``seq_len``, the probe loss). The model
    and the batch are counted. See :func:`analyze_phases`.

    >>> e = estimate_analyze("rnn_tanh", 2, 64, 1, 100, 32, task="adding")
    >>> e.what, e.phase in ("BPTT", "analysis")
    ('analysis', True)
    """
    sizes = ModelSizes.of(cell, input_size, hidden_size, num_layers, dtype)
    shape = None if task is None else task_shape(task)
    T = check_positive_int(seq_len, "seq_len") if shape is None else shape.steps(seq_len)
    B = check_positive_int(batch_size, "batch_size")
    fixed, phases = analyze_phases(sizes, T, B, shape, loss, lyapunov_k=lyapunov_k)
    return _peak("analysis", ANALYZE_OPTION if task is not None else INPUT_FILE_OPTION, fixed, phases)


def _history(sizes: ModelSizes, T: int, steps: int, diag_points: int) -> int:
    """A run's ``History``, in Python floats: per iteration the loss, three norms, the cosine, a clipped flag and
    every parameter's gradient norm (the readout's two too); per scheduled diagnostic ``T`` step norms and about
    1 KiB a layer."""
    tensors = len(param_shapes(sizes.cell, sizes.input_size, sizes.hidden_size, sizes.num_layers)) + 2
    return steps * (4 + tensors) * PYTHON_FLOAT + steps * 8 + diag_points * (T * PYTHON_FLOAT + sizes.num_layers * 1024)


def _readout_size(sizes: ModelSizes, shape: TaskShape) -> int:
    """Parameters of the task's readout ``y = W h + b``."""
    return shape.out_size * (sizes.hidden_size + 1)


def train_phases(sizes: ModelSizes, T: int, B: int, shape: TaskShape, *, steps: int, diag_points: int,
                 eval_batch: int) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """``(fixed terms, phases)`` of ``train``. Alive throughout: the held-out batch (``eval_batch`` sequences),
    the training batch, the parameters with Adam's two float64 moments and the copies one update makes, the
    history. One iteration (nothing of it outlives it) is, in turn:

    * the loss: a forward trace, the states in float64, ``dL/dh`` (float64) and the readout's temporaries;
    * ``dL/dh`` cast to the model's dtype (both alive for a moment), then the BPTT with the cast one;
    * at a scheduled iteration, with this iteration's trace: the held-out forward and its loss, then the
      diagnostics (``dL/dh`` as float64 and its squares, the gate histograms, a one-sequence Lyapunov block).
    """
    E = sizes.itemsize
    forward = {"forward trace": _forward_trace(sizes, T, B)}
    current = {"this iteration's trace": _trace(sizes, T, B)}
    params = sizes.num_params + _readout_size(sizes, shape)
    fixed = {"held-out batch": _inputs(sizes, T, eval_batch, shape), "training batch": _inputs(sizes, T, B, shape),
             "parameters, gradients, Adam moments and update copies": int(params * (6 * E + 8 * FLOAT64)),
             "history": _history(sizes, T, steps, min(diag_points, steps))}
    held_out = {"held-out forward": _forward_trace(sizes, T, eval_batch),
                "held-out loss": _arrays(sizes, T, eval_batch, sizes.footprint.output_arrays + 2 * FLOAT64 / E)
                + _readout_temporaries(sizes, T, eval_batch, shape)}
    diagnostics = {"dL/dh in float64 and its squares": 2 * T * B * sizes.hidden_size * FLOAT64,
                   "gate histograms": _gate_histograms(sizes, T, B),
                   "one-sequence Lyapunov block": _lyapunov(sizes, T, 1, 1)}
    return fixed, {
        "loss": {**forward, "states and dL/dh in float64": _arrays(sizes, T, B, 2 * FLOAT64 / E),
                 "readout temporaries (float64)": _readout_temporaries(sizes, T, B, shape)},
        "loss gradient cast": {**forward, "dL/dh in float64 and the model's dtype": _arrays(sizes, T, B,
                                                                                         (FLOAT64 + E) / E)},
        "BPTT": {"dL/dh in the model's dtype": _arrays(sizes, T, B, 1), **bptt_parts(sizes, T, B)},
        "held-out test loss": {**current, **_largest("held-out", held_out)},
        "scheduled diagnostics": {**current, "per-step norms (T, B)": 2 * T * B * FLOAT64,
                                  **_largest("diagnostics", diagnostics)},
    }


def _training_sizes(cell, input_size, hidden_size, num_layers, seq_len, batch_size, dtype, task):
    shape = task_shape(task)
    if not shape.has_loss:
        raise ValueError(f"task {shape.task!r} has no loss to train on; choose one of {', '.join(LOSS_TASKS)}")
    sizes = ModelSizes.of(cell, shape.input_size if input_size is None else input_size, hidden_size, num_layers,
                          dtype)
    return sizes, shape, shape.steps(seq_len), check_positive_int(batch_size, "batch_size")


def estimate_train(cell: str, input_size: int | None, hidden_size: int, num_layers: int, seq_len: int,
                   batch_size: int, dtype="float64", *, task: str = TrainConfig.task, steps: int = TrainConfig.steps,
                   diag_points: int = TrainConfig.diag_points,
                   eval_batch: int = TrainConfig.eval_batch) -> MemoryEstimate:
    """The peak of ``train`` (``rnndiag train``) for a :class:`~rnndiag.train.TrainConfig` with these fields
    (``input_size`` None: the task's); see :func:`train_phases`. Where the held-out batch of ``eval_batch``
    sequences makes the peak, ``--batch-size`` does not reduce it, and the option says so.

    >>> estimate_train("gru", None, 32, 1, 100, 64, task="adding", steps=10).what
    'training run'
    """
    sizes, shape, T, B = _training_sizes(cell, input_size, hidden_size, num_layers, seq_len, batch_size, dtype,
                                         task)
    fixed, phases = train_phases(sizes, T, B, shape, steps=check_positive_int(steps, "steps"),
                                 diag_points=diag_points, eval_batch=check_positive_int(eval_batch, "eval_batch"))
    return _held_out_option(_peak("training run", ANALYZE_OPTION, fixed, phases), eval_batch)


def _held_out_option(estimate: MemoryEstimate, eval_batch: int) -> MemoryEstimate:
    """``estimate`` with the options that reduce a held-out peak, which ``--batch-size`` does not."""
    if not estimate.phase.endswith("held-out test loss"):
        return estimate
    return dataclasses.replace(estimate, option=f"--seq-len or --hidden-size (the held-out test batch has "
                                                f"{eval_batch} sequences whatever --batch-size)")


def _merge(*groups: tuple[str, dict[str, int], dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    """Phases of several steps run one after another, each named ``step: phase``, with the terms alive throughout
    that step (its own fixed ones and what the steps before it left) merged in."""
    out = {}
    for step, alive, phases in groups:
        for name, terms in phases.items():
            out[f"{step}: {name}"] = {**alive, **terms}
    return out


def _diagnosis_kept(sizes: ModelSizes, T: int, B: int) -> int:
    """A :class:`~rnndiag.analysis.Diagnosis` (its per-sequence curves) and the model it was made of."""
    return _curves(sizes, T, B, analysis_sample(sizes, T, B)[0]) + sizes.num_params * sizes.itemsize


def _run_kept(sizes: ModelSizes, T: int, shape: TaskShape, steps: int, diag_points: int) -> int:
    """A finished :class:`~rnndiag.train.TrainResult`: the trained parameters and readout, the history."""
    return (sizes.num_params + _readout_size(sizes, shape)) * sizes.itemsize + \
        _history(sizes, T, steps, min(diag_points, steps))


def estimate_clip(cell: str, input_size: int | None, hidden_size: int, num_layers: int, seq_len: int,
                  batch_size: int, dtype="float64", *, task: str = TrainConfig.task, steps: int = TrainConfig.steps,
                  strategies: int = 1, diag_points: int = TrainConfig.diag_points,
                  eval_batch: int = TrainConfig.eval_batch) -> MemoryEstimate:
    """The peak of ``compare_clipping`` (``rnndiag clip``): ``strategies`` training runs one after another
    (:func:`estimate_train` each), the finished ones kept (their parameters and history).

    >>> estimate_clip("rnn_tanh", None, 32, 1, 100, 32, steps=300, strategies=5).what
    'clipping comparison'
    """
    one = estimate_train(cell, input_size, hidden_size, num_layers, seq_len, batch_size, dtype, task=task,
                         steps=steps, diag_points=diag_points, eval_batch=eval_batch)
    sizes, shape, T, _ = _training_sizes(cell, input_size, hidden_size, num_layers, seq_len, batch_size, dtype,
                                         task)
    kept = (check_positive_int(strategies, "strategies") - 1) * _run_kept(sizes, T, shape, steps, diag_points)
    parts = {k: v for k, v in one.parts.items() if not k.startswith("not counted")}
    return _peak("clipping comparison", one.option, {"finished runs (parameters, history)": kept},
                 {one.phase: parts})


def estimate_init(cell: str, input_size: int | None, hidden_size: int, num_layers: int, seq_len: int,
                  batch_size: int, dtype="float64", *, task: str = TrainConfig.task, schemes: int = 1,
                  train_steps: int = 0, diag_points: int = TrainConfig.diag_points,
                  eval_batch: int = TrainConfig.eval_batch) -> MemoryEstimate:
    """The peak of ``compare_inits`` (``rnndiag init``): per scheme, one after another, an analysis at
    initialization on the task (:func:`analyze_phases`, the task's own loss) and, with ``train_steps``, a
    training run (:func:`train_phases`, ``batch_size`` sequences) and a second analysis; every finished scheme's
    diagnoses, model and run are kept.

    >>> estimate_init("lstm", None, 32, 1, 100, 32, schemes=6, train_steps=500).what
    'initialization comparison'
    """
    sizes, shape, T, B = _training_sizes(cell, input_size, hidden_size, num_layers, seq_len, batch_size, dtype,
                                         task)
    diagnosis = _diagnosis_kept(sizes, T, B)
    analysis_fixed, analysis = analyze_phases(sizes, T, B, shape)
    groups = [("analysis at initialization", analysis_fixed, analysis)]
    per_scheme = diagnosis
    if train_steps < 0:
        raise ValueError(f"train_steps must be >= 0; got {train_steps}")
    if train_steps > 0:
        train_fixed, training = train_phases(sizes, T, B, shape, steps=train_steps, diag_points=diag_points,
                                             eval_batch=eval_batch)
        run = _run_kept(sizes, T, shape, train_steps, diag_points)
        groups += [("training", {**train_fixed, "diagnosis at initialization": diagnosis}, training),
                   ("analysis after training", {**analysis_fixed, "diagnosis at initialization": diagnosis,
                                                "training run": run}, analysis)]
        per_scheme += run + diagnosis
    kept = {"finished schemes (diagnoses, models, runs)": (check_positive_int(schemes, "schemes") - 1) * per_scheme}
    return _held_out_option(_peak("initialization comparison", ANALYZE_OPTION, kept, _merge(*groups)), eval_batch)
