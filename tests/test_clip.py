"""Gradient clipping: the strategies against their references (torch, tf.clip_by_norm, AutoClip) and the stats."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from rnndiag.clip import STRATEGIES, Clipper, ClipStats, clip_stats, cosine, global_norm, suggest_threshold


def _grads(rng, n_tensors=None, scale=None):
    """A random gradient dict of 1-4 tensors with shapes like an RNN's (matrices and vectors)."""
    n = int(rng.integers(1, 5)) if n_tensors is None else n_tensors
    out = {}
    for k in range(n):
        shape = (int(rng.integers(1, 9)), int(rng.integers(1, 9))) if k % 2 == 0 else (int(rng.integers(1, 9)),)
        s = 10 ** rng.uniform(-3, 3) if scale is None else scale
        out[f"p{k}"] = s * rng.standard_normal(shape)
    return out


def _copy(g):
    return {k: v.copy() for k, v in g.items()}


def _robust_norm(g):
    """Global norm computed without overflow (scaled), for checks on huge gradients."""
    m = max(float(np.max(np.abs(v))) for v in g.values())
    if m == 0:
        return 0.0
    return m * math.sqrt(sum(float(np.sum((v / m) ** 2)) for v in g.values()))


# -- global_norm ------------------------------------------------------------------------------------------------
def test_global_norm_helper():
    g = {"a": np.array([[3.0, 0.0], [0.0, 0.0]]), "b": np.array([4.0])}
    assert global_norm(g) == 5.0
    assert global_norm({"a": np.zeros(3)}) == 0.0
    rng = np.random.default_rng(0)
    g = _grads(rng, 4)
    assert global_norm(g) == pytest.approx(np.linalg.norm(np.concatenate([v.ravel() for v in g.values()])),
                                           rel=1e-14)
    g32 = {k: v.astype(np.float32) for k, v in g.items()}
    assert isinstance(global_norm(g32), float)


def _reference_global(g, max_norm):
    total = math.sqrt(sum(float(np.sum(v * v)) for v in g.values()))
    coef = min(1.0, max_norm / (total + 1e-6))
    return {k: v * coef for k, v in g.items()}, total, coef


@pytest.mark.parametrize("case", range(12))
def test_global_norm_clipping_formula(case):
    rng = np.random.default_rng([1, case])
    g = _grads(rng)
    thr = float(10 ** rng.uniform(-2, 2))
    before = _copy(g)
    out, total, fired = Clipper("global_norm", thr)(g)
    ref, ref_total, coef = _reference_global(g, thr)
    assert total == pytest.approx(ref_total, rel=1e-14)
    assert fired == (coef < 1.0)
    for k in g:
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-14, atol=0)
        np.testing.assert_array_equal(g[k], before[k])  # the input is not modified
        assert out[k] is not g[k]
    if fired:
        assert global_norm(out) <= thr * (1 + 1e-12)
        assert global_norm(out) == pytest.approx(thr * total / (total + 1e-6), rel=1e-12)
    else:
        for k in g:
            np.testing.assert_array_equal(out[k], g[k])


def test_global_norm_below_threshold_changes_nothing():
    g = {"w": np.array([[0.3, -0.4]]), "b": np.array([0.0])}  # norm 0.5
    out, total, fired = Clipper("global_norm", 1.0)(g)
    assert total == pytest.approx(0.5, rel=1e-15) and not fired
    for k in g:
        np.testing.assert_array_equal(out[k], g[k])


def test_global_norm_epsilon_semantics():
    """coef = max_norm / (total + 1e-6): a gradient exactly at the threshold is still scaled (as torch does)."""
    g = {"w": np.array([3.0, 4.0])}  # total exactly 5
    out, total, fired = Clipper("global_norm", 5.0)(g)
    assert total == 5.0 and fired
    np.testing.assert_allclose(out["w"], g["w"] * 5.0 / (5.0 + 1e-6), rtol=1e-15)
    assert global_norm(out) < 5.0
    # a threshold of total + 1e-6 (or more) leaves it alone
    out, _, fired = Clipper("global_norm", 5.0 + 2e-6)(g)
    assert not fired
    np.testing.assert_array_equal(out["w"], g["w"])


def test_global_norm_keeps_the_direction():
    rng = np.random.default_rng(2)
    g = _grads(rng, 4, scale=100.0)
    out, _, fired = Clipper("global_norm", 1.0)(g)
    assert fired
    assert cosine(out, g) == pytest.approx(1.0, abs=1e-14)


def test_global_norm_float32_gradients_stay_float32():
    g = {"w": np.full((3, 3), 10.0, np.float32)}
    out, total, fired = Clipper("global_norm", 1.0)(g)
    assert fired and out["w"].dtype == np.float32
    assert total == pytest.approx(30.0, rel=1e-7)


def test_global_norm_clipping_of_huge_but_finite_gradients():
    g = {"w": np.full((2, 2), 1e200), "b": np.array([-3e199])}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, total, fired = Clipper("global_norm", 1.0)(g)
    assert fired
    assert all(np.isfinite(v).all() for v in out.values())
    assert _robust_norm(out) <= 1.0 + 1e-6


# -- against torch -----------------------------------------------------------------------------------------------
def _torch_params(torch, g):
    ps = []
    for v in g.values():
        p = torch.nn.Parameter(torch.zeros(v.shape, dtype=torch.float64))
        p.grad = torch.from_numpy(v.copy())
        ps.append(p)
    return ps


@pytest.mark.torch
@pytest.mark.parametrize("case", range(20))
def test_global_norm_matches_torch_clip_grad_norm(case):
    """Same returned pre-clip total norm and clipped gradients as torch.nn.utils.clip_grad_norm_ (float64).

    Agreement is to a few ulps, not bit for bit: torch sums the per-tensor norms' squares in its own (vectorised)
    order; the exact-coefficient check is test_global_norm_bit_exact_with_torch_when_the_norm_is_exact.
    """
    torch = pytest.importorskip("torch", reason="torch is not installed")
    rng = np.random.default_rng([3, case])
    g = _grads(rng)
    total_ref = math.sqrt(sum(float(np.sum(v * v)) for v in g.values()))
    # half the cases below the threshold (nothing changes), half above
    thr = total_ref * (rng.uniform(1.5, 10) if case % 2 else rng.uniform(0.01, 0.9))
    ps = _torch_params(torch, g)
    t_total = float(torch.nn.utils.clip_grad_norm_(ps, thr))
    out, total, fired = Clipper("global_norm", thr)(g)
    assert total == pytest.approx(t_total, rel=1e-14, abs=0)
    assert fired == bool(case % 2 == 0)
    for (k, v), p in zip(out.items(), ps):
        assert v.dtype == np.float64
        np.testing.assert_allclose(v, p.grad.numpy(), rtol=1e-14, atol=0)
        if not fired:  # below the threshold both leave the gradient bit for bit unchanged
            np.testing.assert_array_equal(v, g[k])
            np.testing.assert_array_equal(p.grad.numpy(), g[k])


@pytest.mark.torch
def test_global_norm_bit_exact_with_torch_when_the_norm_is_exact():
    """With a gradient whose norm both compute exactly (3-4-5), the clipped gradients must be identical."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    g = {"w": np.array([[3.0, 0.0], [0.0, 4.0]]), "b": np.array([0.0, 0.0])}
    for thr in (0.1, 0.3, 0.7, 1.1, 2.3, 3.7, 4.9):
        ps = _torch_params(torch, g)
        t_total = float(torch.nn.utils.clip_grad_norm_(ps, thr))
        out, total, _ = Clipper("global_norm", thr)(g)
        assert total == t_total == 5.0
        for (k, v), p in zip(out.items(), ps):
            np.testing.assert_array_equal(v, p.grad.numpy(), err_msg=f"threshold {thr}, {k}")


@pytest.mark.torch
@pytest.mark.parametrize("case", range(8))
def test_value_clipping_matches_torch_clip_grad_value(case):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    rng = np.random.default_rng([4, case])
    g = _grads(rng, scale=float(10 ** rng.uniform(-1, 1)))
    v = float(rng.uniform(0.1, 3))
    ps = _torch_params(torch, g)
    torch.nn.utils.clip_grad_value_(ps, v)
    out, total, fired = Clipper("value", v)(g)
    assert total == pytest.approx(global_norm(g), rel=0)  # the pre-clip norm
    assert fired == any((np.abs(a) > v).any() for a in g.values())
    for (k, a), p in zip(out.items(), ps):
        np.testing.assert_array_equal(a, p.grad.numpy(), err_msg=k)


# -- value, per_param, autoclip, none by hand ---------------------------------------------------------------------
def test_value_clipping_by_hand_and_it_turns_the_direction():
    """The seed tutorial's np.clip(dparam, -5, 5): with mixed magnitudes the direction changes."""
    g = {"W": np.array([[100.0, 0.1], [-3.0, -40.0]]), "b": np.array([0.5, -7.0])}
    out, total, fired = Clipper("value", 5.0)(g)
    assert fired
    np.testing.assert_array_equal(out["W"], [[5.0, 0.1], [-3.0, -5.0]])
    np.testing.assert_array_equal(out["b"], [0.5, -5.0])
    assert total == pytest.approx(math.sqrt(100**2 + 0.01 + 9 + 1600 + 0.25 + 49), rel=1e-15)
    c = cosine(out, g)
    assert c < 0.99
    # while global-norm clipping at the same norm keeps it
    out_n, _, _ = Clipper("global_norm", global_norm(out))(g)
    assert cosine(out_n, g) == pytest.approx(1.0, abs=1e-14)
    # nothing above the value: unchanged, not fired, cosine 1
    out, _, fired = Clipper("value", 200.0)(g)
    assert not fired
    for k in g:
        np.testing.assert_array_equal(out[k], g[k])


def _tf_clip_by_norm(t, c):
    """tf.clip_by_norm: t * c / max(||t||_2, c)."""
    n = math.sqrt(float(np.sum(t * t)))
    return t * c / max(n, c)


@pytest.mark.parametrize("case", range(8))
def test_per_param_matches_tf_clip_by_norm(case):
    rng = np.random.default_rng([5, case])
    g = _grads(rng, 4)
    c = float(np.median([np.linalg.norm(v) for v in g.values()]))  # some tensors above, some below
    out, total, fired = Clipper("per_param", c)(g)
    assert total == pytest.approx(global_norm(g), rel=0)
    norms = {k: float(np.linalg.norm(v)) for k, v in g.items()}
    assert fired == any(n > c for n in norms.values())
    for k, v in g.items():
        np.testing.assert_allclose(out[k], _tf_clip_by_norm(v, c), rtol=1e-14, atol=0)
        assert np.linalg.norm(out[k]) <= c * (1 + 1e-14)
        if norms[k] <= c:
            np.testing.assert_array_equal(out[k], v)
        else:
            assert np.linalg.norm(out[k]) == pytest.approx(c, rel=1e-14)
            assert cosine({k: out[k]}, {k: v}) == pytest.approx(1.0, abs=1e-14)


def test_per_param_zero_tensor():
    out, total, fired = Clipper("per_param", 1.0)({"a": np.zeros(3), "b": np.array([3.0, 4.0])})
    np.testing.assert_array_equal(out["a"], 0.0)
    np.testing.assert_allclose(out["b"], [0.6, 0.8], rtol=1e-15)
    assert fired and total == 5.0


@pytest.mark.parametrize("p", [10.0, 50.0, 90.0, 100.0])
def test_autoclip_percentile_of_history_including_current(p):
    rng = np.random.default_rng(int(p))
    clipper = Clipper("autoclip", p)
    seen = []
    for step in range(15):
        g = _grads(rng, 3, scale=float(10 ** rng.uniform(-2, 2)))
        out, total, fired = clipper(g)
        seen.append(math.sqrt(sum(float(np.sum(v * v)) for v in g.values())))
        assert total == pytest.approx(seen[-1], rel=1e-14)
        np.testing.assert_allclose(clipper.history, seen, rtol=1e-14)
        thr = float(np.percentile(seen, p, method="linear"))
        coef = min(1.0, thr / (total + 1e-6))
        assert fired == (coef < 1.0), step
        for k in g:
            np.testing.assert_allclose(out[k], g[k] * coef, rtol=1e-13, atol=0)
        if coef < 1.0:
            assert global_norm(out) <= thr * (1 + 1e-12)
    state = clipper.state()
    assert state["strategy"] == "autoclip" and state["threshold"] == p and len(state["history"]) == 15


def test_autoclip_first_call_is_scaled_to_its_own_norm():
    out, total, fired = Clipper("autoclip", 10.0)({"w": np.array([30.0, 40.0])})
    assert total == 50.0
    np.testing.assert_allclose(out["w"], np.array([30.0, 40.0]) * 50.0 / (50.0 + 1e-6), rtol=1e-15)


def test_autoclip_clips_a_spike_after_a_calm_history():
    clipper = Clipper("autoclip", 50.0)
    for _ in range(9):
        clipper({"w": np.array([1.0, 0.0])})
    out, total, fired = clipper({"w": np.array([0.0, 1000.0])})
    assert total == 1000.0 and fired
    assert global_norm(out) == pytest.approx(1.0, rel=1e-6)  # the median of [1]*9 + [1000]


def test_none_leaves_gradients_unchanged():
    rng = np.random.default_rng(6)
    g = _grads(rng, 3, scale=1e3)
    c = Clipper("none", 5.0)
    assert c.threshold is None
    out, total, fired = c(g)
    assert not fired and total == pytest.approx(global_norm(g), rel=0)
    assert set(out) == set(g)
    for k in g:
        np.testing.assert_array_equal(out[k], g[k])
    assert Clipper("none", None)(g)[2] is False


@pytest.mark.parametrize("strategy", ["global_norm", "per_param", "value", "autoclip"])
def test_nonfinite_gradient_is_passed_through(strategy):
    g = {"w": np.array([1.0, np.nan]), "b": np.array([np.inf])}
    out, total, fired = Clipper(strategy, 1.0)(g)
    assert not math.isfinite(total)


# -- validation ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["global_norm", "per_param", "value", "autoclip"])
@pytest.mark.parametrize("threshold", [0, 0.0, -1.0, float("nan"), float("inf"), -float("inf"), None, True, "1"])
def test_bad_thresholds(strategy, threshold):
    with pytest.raises(ValueError, match="threshold"):
        Clipper(strategy, threshold)


@pytest.mark.parametrize("p", [100.5, 101, 1e9])
def test_autoclip_percentile_above_100(p):
    with pytest.raises(ValueError, match="percentile"):
        Clipper("autoclip", p)


def test_autoclip_percentile_100_is_fine():
    assert Clipper("autoclip", 100).threshold == 100


@pytest.mark.parametrize("strategy", ["norm", "Global_Norm", "", "clipnorm", None])
def test_unknown_strategy(strategy):
    with pytest.raises(ValueError, match="unknown clipping strategy"):
        Clipper(strategy, 1.0)


def test_strategies_listed():
    assert set(STRATEGIES) == {"global_norm", "per_param", "value", "autoclip", "none"}


# -- statistics ---------------------------------------------------------------------------------------------------
def test_cosine():
    a = {"x": np.array([1.0, 0.0]), "y": np.array([0.0])}
    b = {"x": np.array([1.0, 1.0]), "y": np.array([0.0])}
    assert cosine(a, b) == pytest.approx(1 / math.sqrt(2), rel=1e-15)
    assert cosine(a, {"x": np.array([-2.0, 0.0]), "y": np.array([0.0])}) == pytest.approx(-1.0, rel=1e-15)
    assert cosine(a, {"x": np.zeros(2), "y": np.zeros(1)}) == 1.0


def test_clip_stats():
    norms = [0.5, 2.0, 4.0, 1.0, 8.0]
    fired = [False, True, True, False, True]
    cos = [1.0, 0.9, 0.7, 1.0, 0.8]
    st = clip_stats("value", 1.0, norms, fired, cos)
    assert isinstance(st, ClipStats)
    assert st.strategy == "value" and st.threshold == 1.0
    assert st.fraction_clipped == pytest.approx(0.6, rel=1e-15)
    assert st.mean_cosine == pytest.approx(0.8, rel=1e-15)  # over the clipped iterations only
    assert st.min_cosine == pytest.approx(0.7, rel=1e-15)
    np.testing.assert_array_equal(st.norms, norms)
    assert st.suggested_threshold == pytest.approx(np.percentile(norms, 90), rel=1e-15)
    d = st.to_dict()
    assert d["fraction_clipped"] == st.fraction_clipped
    assert d["mean_cosine_clipped_vs_unclipped"] == st.mean_cosine
    assert d["min_cosine_clipped_vs_unclipped"] == st.min_cosine
    assert d["norm_percentiles"]["50"] == pytest.approx(2.0)
    assert d["suggested_threshold"] == st.suggested_threshold


def test_clip_stats_when_nothing_fired():
    st = clip_stats("global_norm", 10.0, [1.0, 2.0], [False, False], [1.0, 1.0])
    assert st.fraction_clipped == 0.0 and st.mean_cosine is None and st.min_cosine is None
    st = clip_stats("none", None, [], [], [])
    assert st.fraction_clipped == 0.0 and st.suggested_threshold is None
    assert st.to_dict()["norm_percentiles"] is None


def test_clip_stats_from_a_real_sequence_of_calls():
    rng = np.random.default_rng(8)
    clipper = Clipper("value", 0.5)
    norms, fired, cos = [], [], []
    for _ in range(10):
        g = _grads(rng, 2, scale=float(10 ** rng.uniform(-2, 0.5)))
        out, total, f = clipper(g)
        norms.append(total)
        fired.append(f)
        cos.append(cosine(out, g) if f else 1.0)
    st = clip_stats("value", 0.5, norms, fired, cos)
    assert 0 < st.fraction_clipped < 1
    assert st.fraction_clipped == pytest.approx(np.mean(fired))
    assert st.min_cosine < 1.0


def test_suggest_threshold():
    norms = np.arange(1.0, 101.0)
    assert suggest_threshold(norms) == pytest.approx(np.percentile(norms, 90), rel=1e-15)
    assert suggest_threshold(norms, 50) == pytest.approx(50.5, rel=1e-15)
    # non-finite and zero norms are ignored
    assert suggest_threshold([np.nan, np.inf, 0.0, 2.0, 4.0], 50) == pytest.approx(3.0, rel=1e-15)
    assert suggest_threshold([]) is None
    assert suggest_threshold([np.nan, 0.0]) is None
