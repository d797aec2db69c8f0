"""Figures of huge, infinite and NaN results: every figure draws what is finite, says in the figure what it left
out, and renders; one that fails costs only itself (issue 13).

The results are real ones, poisoned: ``analyze`` of a model with gain 1e308, a training run whose loss reaches
1e280 and then inf, a hand-made history with losses near 1e281, inf and NaN, and a clipping comparison in which
every strategy diverges.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
from matplotlib.figure import Figure

import rnndiag
from rnndiag.experiments import compare_clipping, compare_inits
from rnndiag.render.compare import clip_figures, init_figures, train_figures
from rnndiag.render.figures import (
    DRAW_LIMIT,
    all_figures,
    draw_figures,
    drawable,
    gates_figure,
    new_axes,
    note_omitted,
    png_bytes,
)
from rnndiag.tasks import input_size
from rnndiag.train import History, LayerSnapshot, TrainConfig, TrainDiagnostic, TrainResult, train

PNG = b"\x89PNG\r\n\x1a\n"
ANALYZE_FIGURES = ["grad_norm_per_step", "jacobian_product_norm", "step_jacobian_norm", "eigenvalues_w_hh",
                   "singular_values", "lyapunov_spectrum"]
TRAIN_FIGURES = ["loss", "grad_norm_over_training", "grad_norm_heatmap", "spectral_radius_over_training"]
CLIP_FIGURES = ["loss_per_strategy", "grad_norm_distribution", "fraction_clipped_and_cosine"]
# lr 1e140 with plain SGD: the loss is 1.85, then about 5e280 (test loss 4.9e280), then inf -- the run stops
DIVERGING = {"task": "adding", "seq_len": 20, "batch_size": 4, "steps": 10, "optimizer": "sgd", "momentum": 0.0,
             "lr": 1e140, "clip": "none", "clip_threshold": None, "eval_batch": 8, "diag_points": 3}


def texts(fig: Figure) -> str:
    """Every text drawn on the figure and its axes, one per line."""
    return "\n".join(t.get_text() for t in [*fig.texts, *(t for ax in fig.axes for t in ax.texts)])


def build(builders: dict, name: str) -> Figure:
    """One figure, built (not rendered: :func:`assert_all_drawn` renders them all)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        fig = builders[name]()
    assert isinstance(fig, Figure), f"{name}: {type(fig).__name__}"
    return fig


def assert_all_drawn(builders: dict) -> dict[str, bytes]:
    """draw_figures renders every figure (a builder may return None), fails none, prints no warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pngs, failures = draw_figures(builders)
    assert failures == {}, failures
    assert [w.message for w in caught] == [], "warnings escaped from draw_figures"
    assert all(data.startswith(PNG) for data in pngs.values())
    return pngs


# -- analyze ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["rnn_tanh", "lstm", "gru"])
def huge(request):
    """``rnndiag analyze --gain 1e308``: the weights are finite, their spectra and the states overflow."""
    model = rnndiag.init_model(request.param, 2, 6, init="orthogonal", gain=1e308, seed=0)
    x = np.random.default_rng(0).standard_normal((20, 3, 2))
    with np.errstate(all="ignore"):
        return rnndiag.analyze(model, x)


def test_analyze_figures_are_builders_in_the_same_order(huge):
    builders = all_figures(huge)
    gated = huge.cell != "rnn_tanh"
    assert list(builders) == ANALYZE_FIGURES + (["gate_saturation"] if gated else [])
    assert all(callable(b) and not isinstance(b, Figure) for b in builders.values())


def test_analyze_figures_of_a_huge_gain_render(huge):
    builders = all_figures(huge)
    pngs = assert_all_drawn(builders)
    assert list(pngs) == list(builders)
    # the singular values are all above 1e300 (or inf): an empty axes that says so
    note = texts(build(builders, "singular_values"))
    assert "no finite values to draw" in note and "not drawn" in note and "metrics.json" in note
    assert build(builders, "singular_values").axes[0].get_yscale() == "linear"
    assert "not drawn" in texts(build(builders, "eigenvalues_w_hh"))
    if huge.cell == "rnn_tanh":  # the state overflows at once: only the last step's gradient norms are finite
        fig = build(builders, "grad_norm_per_step")
        assert "57 of 60 values" in texts(fig) and "not drawn" in texts(fig)
        assert fig.axes[0].get_yscale() == "log"


def test_gates_figure_of_a_plain_rnn_is_none():
    model = rnndiag.init_model("rnn_tanh", 2, 4, seed=0)
    diag = rnndiag.analyze(model, np.random.default_rng(0).standard_normal((10, 2, 2)))
    assert gates_figure(diag) is None
    builders = all_figures(diag)
    assert "gate_saturation" not in builders
    assert draw_figures({"gate_saturation": lambda: gates_figure(diag)}) == ({}, {})


def test_a_failing_figure_costs_only_itself():
    def broken():
        raise ValueError("Axis limits cannot be NaN or Inf\n(second line)")

    model = rnndiag.init_model("rnn_tanh", 2, 4, seed=0)
    diag = rnndiag.analyze(model, np.random.default_rng(0).standard_normal((10, 2, 2)))
    figures = all_figures(diag)
    builders = {"grad_norm_per_step": figures["grad_norm_per_step"], "jacobian_product_norm": broken,
                "nothing": lambda: None, "singular_values": figures["singular_values"]}
    pngs, failures = draw_figures(builders)
    assert failures == {"jacobian_product_norm": "ValueError: Axis limits cannot be NaN or Inf (second line)"}
    assert list(pngs) == ["grad_norm_per_step", "singular_values"]
    assert all(data.startswith(PNG) for data in pngs.values())


# -- train -----------------------------------------------------------------------------------------------------------
def _snapshot(radius: float, sigma: float) -> LayerSnapshot:
    return LayerSnapshot(spectral_radius=radius, sigma_max=sigma, top_lyapunov=math.nan, gate_saturation={},
                         memory_timescale=None, hidden_saturated=None)


@pytest.fixture(scope="module")
def poisoned_history() -> TrainResult:
    """A hand-made run: losses near 1e281, beyond the drawing limit, inf and NaN; test losses and spectra too."""
    model = rnndiag.init_model("rnn_tanh", input_size("adding"), 4, seed=0)
    loss = [1.8, 0.9, 5.1e280, 2e281, 1e305, math.inf, math.nan, 0.0]
    grad = [1.0, 3e150, 1e299, 1e305, math.inf, math.nan, 2.0, 0.5]
    diag = [TrainDiagnostic(0, (1.0, 0.5, 0.0, 1e-320), 1.9, (_snapshot(0.9, 1.1),)),
            TrainDiagnostic(3, (math.inf, 1e281, math.nan, 2.0), 4.9e280, (_snapshot(3e139, 1e305),)),
            TrainDiagnostic(7, (math.nan, math.nan, math.inf, math.inf), math.inf, (_snapshot(math.inf, math.nan),))]
    history = History(loss=loss, grad_norm=grad, grad_norm_clipped=grad, clipped=[False] * 8, cosine=[1.0] * 8,
                      param_norms={}, diag=diag, stopped="iteration 5: the loss is inf (non-finite)")
    cfg = TrainConfig(task="adding", seq_len=4, batch_size=2, steps=8)
    return TrainResult(model, np.zeros((1, 4)), np.zeros(1), cfg, history, baseline=0.167, test_loss=None)


def test_train_figures_of_a_poisoned_history_render(poisoned_history):
    builders = train_figures(poisoned_history)
    assert list(builders) == TRAIN_FIGURES
    assert_all_drawn(builders)
    for name in TRAIN_FIGURES:
        assert "not drawn" in texts(build(builders, name)), f"{name} does not say what it left out"
    # 1.8, 0.9, 5.1e280, 2e281 and the test losses 1.9, 4.9e280 are drawn, on a log axis
    ax = build(builders, "loss").axes[0]
    assert "5 of 11 values" in texts(ax.figure)
    assert ax.get_yscale() == "log"
    lo, hi = ax.get_ylim()
    assert lo < 0.9 and 2e281 < hi < math.inf


def test_train_figures_of_a_run_whose_loss_reaches_1e280():
    """A real run (SGD, lr 1e140): the loss reaches about 5e280, then inf; the history and every figure survive."""
    model = rnndiag.init_model("rnn_tanh", input_size("adding"), 6, seed=0)
    with np.errstate(all="ignore"):
        result = train(model, TrainConfig(**DIVERGING))
    assert result.diverged and max(result.history.loss) > 1e270
    builders = train_figures(result)
    assert list(assert_all_drawn(builders)) == TRAIN_FIGURES


def test_train_figures_of_an_empty_history_render():
    model = rnndiag.init_model("rnn_tanh", input_size("adding"), 4, seed=0)
    cfg = TrainConfig(task="adding", seq_len=4, batch_size=2, steps=1)
    result = TrainResult(model, np.zeros((1, 4)), np.zeros(1), cfg, History(stopped="iteration 0: the loss is nan"),
                         baseline=None, test_loss=None)
    assert list(assert_all_drawn(train_figures(result))) == ["loss", "grad_norm_over_training"]


# -- clip and init ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def diverging_clip():
    model = rnndiag.init_model("rnn_tanh", input_size("adding"), 6, seed=0)
    base = TrainConfig(**DIVERGING)
    with np.errstate(all="ignore"):
        return compare_clipping(model, [("none", None), ("global_norm", 1e140), ("value", 1e300)], base)


def test_clip_figures_of_a_diverging_comparison_render(diverging_clip):
    assert all(r.trained.diverged for r in diverging_clip.runs)
    builders = clip_figures(diverging_clip)
    assert list(assert_all_drawn(builders)) == CLIP_FIGURES
    # every recorded loss is finite, up to about 5e280: all drawn (on a log axis), nothing to note
    ax = build(builders, "loss_per_strategy").axes[0]
    assert ax.get_yscale() == "log" and texts(ax.figure) == ""
    assert max(np.nanmax(line.get_ydata()) for line in ax.lines) > 1e270


def test_clip_figures_of_poisoned_statistics_render(diverging_clip):
    """Gradient norms of inf, NaN and 0, a NaN cosine and a NaN fraction clipped."""
    run = diverging_clip.runs[0]
    stats = dataclasses.replace(run.stats, norms=[math.inf, math.nan, 0.0, 1e305, 2.0], mean_cosine=math.nan,
                                fraction_clipped=math.nan)
    cmp = dataclasses.replace(diverging_clip, runs=(dataclasses.replace(run, stats=stats), *diverging_clip.runs[1:]))
    builders = clip_figures(cmp)
    assert list(assert_all_drawn(builders)) == CLIP_FIGURES
    assert "not drawn" in texts(build(builders, "grad_norm_distribution"))
    assert "not drawn" in texts(build(builders, "fraction_clipped_and_cosine"))


def test_init_figures_of_a_huge_gain_render():
    with np.errstate(all="ignore"):
        cmp = compare_inits("rnn_tanh", input_size("adding"), 6, schemes=["orthogonal", "identity"], gain=1e308,
                            seq_len=15, batch_size=4, train_steps=3,
                            train_kwargs={"batch_size": 4, "eval_batch": 8, "diag_points": 2})
    builders = init_figures(cmp)
    assert list(builders) == ["grad_flow_at_init", "horizon_at_init", "training_loss"]
    assert list(assert_all_drawn(builders)) == list(builders)
    assert "not drawn" in texts(build(builders, "grad_flow_at_init"))


# -- the helpers -----------------------------------------------------------------------------------------------------
def test_drawable_leaves_out_what_cannot_be_drawn():
    values = [1.0, -2.0, 0.0, math.inf, -math.inf, math.nan, 2 * DRAW_LIMIT, -1e305, 1e-320]
    linear, n = drawable(values)
    assert n == 5
    np.testing.assert_array_equal(np.isnan(linear), [0, 0, 0, 1, 1, 1, 1, 1, 0])
    log, n = drawable(values, positive=True)
    assert n == 8 and log[0] == 1.0 and np.isnan(log[1:]).all()
    assert drawable([])[1] == 0


def test_note_omitted_says_what_was_left_out():
    fig, ax = new_axes()
    note_omitted(ax, 0, 10)
    assert texts(fig) == ""
    note_omitted(ax, 3, 10)
    assert "3 of 10 values non-finite or out of range" in texts(fig) and "not drawn" in texts(fig)
    fig, ax = new_axes()
    note_omitted(ax, 4, 4)
    assert texts(fig).startswith("no finite values to draw")
    assert png_bytes(fig).startswith(PNG)
