"""rnndiag.memory: each command's estimate against the peak ``tracemalloc`` measures (numpy reports its arrays to
it) at three sizes, where the (T, B, H) arrays dominate; the memory available; the one-line refusal.

Every measurement traces the library calls a command makes from the model's construction on, as the estimate
counts them: ``diagnose_problem`` (or ``analyze`` of given inputs) for ``analyze``, ``train`` for ``train``. The
bound asked of every estimate: ``measured <= estimate <= 2 measured``.
"""

from __future__ import annotations

import ast
import gc
import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import rnndiag
from rnndiag.experiments import compare_clipping, compare_inits, diagnose_problem
from rnndiag.memory import (
    UNKNOWN_AVAILABLE,
    MemoryEstimate,
    ResourceError,
    _cgroup_headroom,
    available_memory,
    cell_footprint,
    check_fits,
    estimate_analyze,
    estimate_clip,
    estimate_init,
    estimate_train,
    format_bytes,
    task_steps,
)
from rnndiag.tasks import input_size, task_problem
from rnndiag.train import TrainConfig, train

MiB = 2**20
# (T, B) growing together, with few hidden units (the analysis's per-step work grows as S^3): about 4-10, 10-25
# and 30-80 MiB for the cases below
SIZES = ((16, 128), (32, 256), (64, 512))


@pytest.fixture(scope="module", autouse=True)
def libraries_loaded():
    """SciPy's first import (about 12 MiB of module objects, once per process) is in no estimate: load it first."""
    import scipy.linalg  # noqa: F401


def traced_peak(run) -> int:
    """The peak bytes ``tracemalloc`` sees while ``run()`` runs (what was allocated before it is not traced)."""
    assert not tracemalloc.is_tracing(), "another measurement is running"
    gc.collect()
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def check_bound(estimate: MemoryEstimate, measured: int, label: str) -> None:
    ratio = estimate.bytes / measured
    detail = (f"{label}: measured {format_bytes(measured)}, estimate {format_bytes(estimate.bytes)} (ratio "
              f"{ratio:.2f}, peak phase {estimate.phase!r})\n  " +
              "\n  ".join(f"{k}: {format_bytes(v)}" for k, v in estimate.parts.items()))
    print(detail)
    assert measured <= estimate.bytes <= 2 * measured, detail


# -- analyze ----------------------------------------------------------------------------------------------------
# (cell, dtype, layers, hidden, task): the task's own loss (adding), the probe on a task without one (noise)
ANALYZE_TASK_CASES = [("lstm", "float32", 1, 16, "adding"), ("gru", "float64", 2, 16, "noise")]


@pytest.mark.parametrize("T, B", SIZES)
@pytest.mark.parametrize("cell, dtype, layers, hidden, task", ANALYZE_TASK_CASES)
def test_analyze_on_a_task_is_within_the_estimate(cell, dtype, layers, hidden, task, T, B):
    """``rnndiag analyze --task``: the model, the task's batch and ``diagnose_problem``."""
    I = input_size(task)
    estimate = estimate_analyze(cell, I, hidden, layers, T, B, dtype, task=task)

    def run():
        model = rnndiag.init_model(cell, I, hidden, num_layers=layers, seed=0, dtype=dtype)
        problem = task_problem(task, T, B, 0, hidden, dtype=model.dtype)
        diagnose_problem(model, problem, 0)

    check_bound(estimate, traced_peak(run), f"analyze {cell} {dtype} L={layers} {task} T={T} B={B}")


@pytest.mark.parametrize("T, B", SIZES)
def test_analyze_of_given_inputs_is_within_the_estimate(T, B):
    """``rnndiag analyze --input x.npy``: ``analyze`` of a (T, B, I) array with the probe loss."""
    cell, dtype, hidden, I = "rnn_tanh", "float64", 24, 3
    estimate = estimate_analyze(cell, I, hidden, 1, T, B, dtype)

    def run():
        model = rnndiag.init_model(cell, I, hidden, seed=0, dtype=dtype)
        rnndiag.analyze(model, np.random.default_rng(0).standard_normal((T, B, I)))

    check_bound(estimate, traced_peak(run), f"analyze {cell} {dtype} inputs T={T} B={B}")


# -- train ------------------------------------------------------------------------------------------------------
# (cell, dtype, layers, hidden, task, eval_batch): copy's sequences are seq_len + 20 steps long
TRAIN_CASES = [("rnn_tanh", "float32", 2, 32, "adding", 64), ("lstm", "float64", 1, 16, "sine", 64),
               ("gru", "float32", 1, 16, "copy", 32)]


@pytest.mark.parametrize("T, B", SIZES)
@pytest.mark.parametrize("cell, dtype, layers, hidden, task, eval_batch", TRAIN_CASES)
def test_training_is_within_the_estimate(cell, dtype, layers, hidden, task, eval_batch, T, B):
    """``rnndiag train``: two iterations, both with the scheduled diagnostics and the held-out test loss."""
    I = input_size(task)
    config = TrainConfig(task=task, seq_len=T, batch_size=B, steps=2, diag_points=2, eval_batch=eval_batch)
    estimate = estimate_train(cell, I, hidden, layers, T, B, dtype, task=task, steps=config.steps,
                              diag_points=config.diag_points, eval_batch=config.eval_batch)

    def run():
        model = rnndiag.init_model(cell, I, hidden, num_layers=layers, seed=0, dtype=dtype)
        train(model, config)

    check_bound(estimate, traced_peak(run), f"train {cell} {dtype} L={layers} {task} T={T} B={B}")


def test_a_clipping_comparison_is_within_the_estimate():
    """``rnndiag clip``: one training run per strategy, the finished runs kept."""
    T, B = SIZES[1]
    config = TrainConfig(task="adding", seq_len=T, batch_size=B, steps=2, diag_points=2, eval_batch=64)
    estimate = estimate_clip("gru", None, 16, 1, T, B, "float32", task="adding", steps=2, strategies=2, diag_points=2,
                             eval_batch=64)

    def run():
        model = rnndiag.init_model("gru", input_size("adding"), 16, seed=0, dtype="float32")
        compare_clipping(model, [("none", None), ("global_norm", 1.0)], config)

    check_bound(estimate, traced_peak(run), f"clip gru float32 T={T} B={B}")


def test_an_initialization_comparison_is_within_the_estimate():
    """``rnndiag init`` (no training): one analysis per scheme, the finished diagnoses kept."""
    T, B = SIZES[1]
    estimate = estimate_init("gru", None, 16, 1, T, B, task="adding", schemes=2)

    def run():
        compare_inits("gru", input_size("adding"), 16, schemes=["pytorch", "orthogonal"], task="adding", seq_len=T,
                      batch_size=B)

    check_bound(estimate, traced_peak(run), f"init gru float64 T={T} B={B}")


# -- the estimates' structure -----------------------------------------------------------------------------------
def test_cell_footprints_are_read_off_the_engine():
    """F (forward arrays), K (gradient arrays) and the Jacobian factors per cell, as the cells' docstrings say."""
    counts = {cell: (fp.forward_arrays, fp.gradient_arrays, fp.output_arrays, fp.jacobian_factors)
              for cell in ("rnn_tanh", "rnn_relu", "lstm", "gru") for fp in [cell_footprint(cell)]}
    assert counts == {"rnn_tanh": (1, 1, 1, 1), "rnn_relu": (1, 1, 1, 1), "lstm": (6, 2, 2, 6), "gru": (5, 1, 2, 4)}


def test_task_steps_follow_the_tasks():
    assert task_steps("copy", 100) == 120
    assert task_steps("adding", 100) == task_steps("text", 100) == 100


def test_estimates_grow_with_each_size_and_parts_add_up():
    base = estimate_analyze("lstm", 2, 32, 1, 100, 32, task="adding")
    assert sum(base.parts.values()) == base.bytes
    for bigger in (estimate_analyze("lstm", 2, 32, 1, 200, 32, task="adding"),
                   estimate_analyze("lstm", 2, 32, 1, 100, 64, task="adding"),
                   estimate_analyze("lstm", 2, 64, 1, 100, 32, task="adding"),
                   estimate_analyze("lstm", 2, 32, 2, 100, 32, task="adding")):
        assert bigger.bytes > base.bytes
    assert estimate_analyze("lstm", 2, 32, 1, 100, 32, "float32", task="adding").bytes < base.bytes
    assert json.loads(json.dumps(base.to_dict()))["bytes"] == base.bytes


def test_comparisons_add_the_runs_they_keep():
    one = estimate_train("rnn_tanh", None, 32, 1, 100, 32, steps=300)
    clip = estimate_clip("rnn_tanh", None, 32, 1, 100, 32, steps=300, strategies=5)
    assert clip.bytes > one.bytes and clip.what == "clipping comparison"
    at_init = estimate_init("lstm", None, 32, 1, 100, 32, schemes=6)
    trained = estimate_init("lstm", None, 32, 1, 100, 32, schemes=6, train_steps=500)
    assert trained.bytes > at_init.bytes and trained.what == "initialization comparison"


def test_a_held_out_peak_names_the_options_that_reduce_it():
    """With the default 256 held-out sequences and a small batch, the held-out forward is the peak, and
    --batch-size does not reduce it."""
    estimate = estimate_train("lstm", None, 64, 1, 100, 8)
    assert estimate.phase == "held-out test loss"
    assert estimate.option.startswith("--seq-len or --hidden-size")


# -- the memory available and the refusal -----------------------------------------------------------------------
def test_available_memory_is_a_positive_number_and_its_source():
    available, source = available_memory()
    assert isinstance(available, int) and available > 0
    assert isinstance(source, str) and source


def test_available_memory_never_raises_when_nothing_is_readable(monkeypatch):
    def unreadable(self, *args, **kwargs):
        raise OSError("no such file")

    monkeypatch.setattr("pathlib.Path.read_text", unreadable)
    available, source = available_memory()
    assert available > 0 and isinstance(source, str)
    if source == "unknown":
        assert available == UNKNOWN_AVAILABLE


def test_cgroup_v2_limit_less_usage_over_the_process_and_its_parents(tmp_path):
    (tmp_path / "cgroup").write_text("0::/jobs/run1\n")
    mount = tmp_path / "fs"
    run = mount / "jobs" / "run1"
    run.mkdir(parents=True)
    (run / "memory.max").write_text("max\n")  # no limit of its own ...
    (mount / "jobs" / "memory.max").write_text(f"{3 * 2**30}\n")  # ... but its parent has one
    (mount / "jobs" / "memory.current").write_text(f"{2**30}\n")
    assert _cgroup_headroom(tmp_path / "cgroup", mount) == (2 * 2**30, "cgroup memory.max")


def test_cgroup_v1_limit_and_no_limit(tmp_path):
    (tmp_path / "cgroup").write_text("4:memory:/box\n0::/\n")
    box = tmp_path / "fs" / "memory" / "box"
    box.mkdir(parents=True)
    (box / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert _cgroup_headroom(tmp_path / "cgroup", tmp_path / "fs") is None
    (box / "memory.limit_in_bytes").write_text(f"{2**30}\n")
    (box / "memory.usage_in_bytes").write_text(f"{2**28}\n")
    assert _cgroup_headroom(tmp_path / "cgroup", tmp_path / "fs") == (3 * 2**28, "cgroup memory.limit_in_bytes")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_an_address_space_limit_is_the_limit():
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (2**33, 2**33)); "
            "from rnndiag.memory import available_memory; print(available_memory())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    available, source = ast.literal_eval(out.stdout.strip())
    if source == "RLIMIT_AS":  # unless MemAvailable or a cgroup allows less than 8 GiB
        assert 0 < available < 2**33


def test_check_fits_refuses_in_one_line_with_both_sizes_and_the_option():
    estimate = estimate_train("rnn_tanh", None, 32, 1, 100, 1_000_000)
    with pytest.raises(ResourceError) as info:
        check_fits(estimate, available=(int(1.1 * 2**30), "MemAvailable"))
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, ValueError)
    assert format_bytes(estimate.bytes) in message and "1.1 GiB is available (MemAvailable" in message
    assert message.startswith("the training run needs about ")
    assert message.endswith("reduce --batch-size, --seq-len or --hidden-size")


def test_check_fits_passes_a_small_estimate():
    check_fits(estimate_analyze("rnn_tanh", 2, 8, 1, 10, 2, task="adding"))
    check_fits(MemoryEstimate(2**20, "analysis"), available=2**30)
    with pytest.raises(ResourceError):
        check_fits(MemoryEstimate(900 * MiB, "analysis"), available=2**30)  # above the default 80%


def test_format_bytes():
    assert [format_bytes(n) for n in (100, 12 * 1024, 512 * MiB, int(2.3 * 2**30), 300 * 2**30)] == \
        ["100 B", "12.0 KiB", "512 MiB", "2.3 GiB", "300 GiB"]
