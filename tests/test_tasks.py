"""The seeded task generators (adding, copy, sine, noise) and their readout losses and gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
from _helpers import central_diff

from rnndiag.tasks import (
    COPY_LENGTH,
    COPY_SYMBOLS,
    TASKS,
    input_size,
    make_task,
    out_size,
    readout,
    task_loss_grad,
    task_loss_grads,
)


# -- adding ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [2, 3, 10, 17])
def test_adding_layout(T):
    B = 8
    tb = make_task("adding", T, B, seed=1)
    assert tb.name == "adding" and tb.loss_steps == "last"
    assert tb.x.shape == (T, B, 2) and tb.input_size == 2 == input_size("adding")
    assert tb.targets.shape == (B,)
    values, marks = tb.x[:, :, 0], tb.x[:, :, 1]
    assert ((values >= 0) & (values <= 1)).all()
    assert set(np.unique(marks)) <= {0.0, 1.0}
    half = T // 2
    # exactly one marker in each half of every sequence
    np.testing.assert_array_equal(marks[:half].sum(axis=0), np.ones(B))
    np.testing.assert_array_equal(marks[half:].sum(axis=0), np.ones(B))
    # target = the sum of the two marked values
    np.testing.assert_allclose(tb.targets, (values * marks).sum(axis=0), rtol=0, atol=1e-15)
    assert tb.baseline == pytest.approx(1 / 6, abs=1e-15)


def test_adding_values_are_uniform_and_markers_cover_each_half():
    T, B = 10, 4000
    tb = make_task("adding", T, B, seed=2)
    v = tb.x[:, :, 0].ravel()
    assert abs(v.mean() - 0.5) < 5 * math.sqrt(1 / 12 / v.size)
    assert abs(v.var() - 1 / 12) < 0.005
    pos = np.argmax(tb.x[:, :, 1] > 0, axis=0)  # first marker
    last = T - 1 - np.argmax(tb.x[::-1, :, 1] > 0, axis=0)  # second marker
    assert set(np.unique(pos)) == set(range(T // 2))
    assert set(np.unique(last)) == set(range(T // 2, T))


def test_adding_predict_one_baseline_is_one_sixth():
    """mean((target - 1)^2) over a big batch is 1/6 within sampling error (Var of (S-1)^2 is 7/180)."""
    B = 100_000
    tb = make_task("adding", 6, B, seed=3)
    mse = float(np.mean((tb.targets - 1.0) ** 2))
    se = math.sqrt(7 / 180 / B)
    assert abs(mse - 1 / 6) < 5 * se, (mse, 1 / 6, se)
    assert abs(mse - tb.baseline) < 5 * se


# -- copy ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1, 2, 5, 13])
def test_copy_layout(T):
    B = 6
    tb = make_task("copy", T, B, seed=4)
    total = T + 2 * COPY_LENGTH
    assert tb.name == "copy" and tb.loss_steps == "window"
    assert tb.x.shape == (total, B, COPY_SYMBOLS + 2) == (T + 20, B, 10)
    assert input_size("copy") == 10 and out_size("copy") == 8
    # every step is one-hot
    np.testing.assert_array_equal(tb.x.sum(axis=2), np.ones((total, B)))
    assert set(np.unique(tb.x)) == {0.0, 1.0}
    channel = tb.x.argmax(axis=2)  # (total, B)
    # the 10 symbols (channels 1..8) first
    assert ((channel[:10] >= 1) & (channel[:10] <= 8)).all()
    # then T-1 blanks
    np.testing.assert_array_equal(channel[10 : 10 + T - 1], 0)
    # the delimiter (channel 9) at position T + 9
    delim = T + 9
    np.testing.assert_array_equal(channel[delim], 9)
    assert (channel == 9).sum() == B
    # then 10 blanks
    np.testing.assert_array_equal(channel[delim + 1 :], 0)
    assert channel[delim + 1 :].shape[0] == 10
    # targets: the 10 symbols as class indices 0..7
    assert tb.targets.shape == (10, B)
    assert np.issubdtype(tb.targets.dtype, np.integer)
    np.testing.assert_array_equal(tb.targets, channel[:10] - 1)
    assert tb.baseline == pytest.approx(10 * math.log(8) / (T + 20), rel=1e-15)


def test_copy_symbols_cover_all_eight():
    tb = make_task("copy", 3, 200, seed=5)
    assert set(np.unique(tb.targets)) == set(range(8))


@pytest.mark.parametrize("T", [1, 5, 20])
def test_copy_uniform_readout_scores_the_memoryless_baseline_exactly(T):
    """A readout predicting uniform over the 8 symbols (zero weights and bias) gets 10 ln 8 / (T + 20)."""
    B, H = 5, 4
    tb = make_task("copy", T, B, seed=6)
    h = np.random.default_rng(0).standard_normal((T + 20, B, H))
    w, b = np.zeros((8, H)), np.zeros(8)
    loss, grad_h, gw, gb = task_loss_grads(tb, h, w, b)
    expected = 10 * math.log(8) / (T + 20)
    assert loss == pytest.approx(expected, rel=1e-14, abs=0)
    assert loss == pytest.approx(tb.baseline, rel=1e-14, abs=0)
    np.testing.assert_array_equal(grad_h, 0.0)  # W = 0: nothing flows back to h
    # d loss / d b for uniform predictions: (1/8 - onehot) summed over window and batch / (B * total)
    counts = np.bincount(tb.targets.ravel(), minlength=8)
    np.testing.assert_allclose(gb, (10 * B / 8 - counts) / (B * (T + 20)), rtol=1e-13, atol=1e-15)
    assert gw.shape == (8, H)


# -- sine ------------------------------------------------------------------------------------------------------
def test_sine_next_step_targets():
    T, B = 15, 7
    tb = make_task("sine", T, B, seed=7)
    assert tb.name == "sine" and tb.loss_steps == "all"
    assert tb.x.shape == (T, B, 1) and tb.targets.shape == (T, B)
    assert input_size("sine") == 1 == out_size("sine")
    # the target at t is the input at t + 1
    np.testing.assert_array_equal(tb.targets[:-1], tb.x[1:, :, 0])
    assert (np.abs(tb.x) <= 1).all() and (np.abs(tb.targets) <= 1).all()
    # and the last target continues the same sinusoid: x_{t+1} = 2 cos(w) x_t - x_{t-1}
    x = np.concatenate([tb.x[:, :, 0], tb.targets[-1:]], axis=0)
    two_cos = (x[2:-1] + x[:-3]) / np.where(np.abs(x[1:-2]) > 1e-3, x[1:-2], np.nan)
    two_cos = np.nanmedian(two_cos, axis=0)
    np.testing.assert_allclose(x[-1], two_cos * x[-2] - x[-3], atol=1e-8)


def test_noise_task():
    tb = make_task("noise", 9, 3, seed=0, input_size=4)
    assert tb.x.shape == (9, 3, 4) and tb.targets is None and tb.baseline is None
    assert make_task("noise", 9, 3, seed=0).x.shape == (9, 3, 1)
    with pytest.raises(ValueError, match="no loss"):
        task_loss_grads(tb, np.zeros((9, 3, 2)), np.zeros((1, 2)), np.zeros(1))


# -- seeding ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_data_different_seed_different_data(task):
    a = make_task(task, 8, 4, seed=11)
    b = make_task(task, 8, 4, seed=11)
    c = make_task(task, 8, 4, seed=12)
    np.testing.assert_array_equal(a.x, b.x)
    if a.targets is not None:
        np.testing.assert_array_equal(a.targets, b.targets)
    assert not np.array_equal(a.x, c.x)
    if a.targets is not None:
        assert not np.array_equal(a.targets, c.targets)
    # a Generator is accepted as the seed, and consumed like the integer seed
    g = make_task(task, 8, 4, seed=np.random.default_rng(11))
    np.testing.assert_array_equal(g.x, a.x)


@pytest.mark.parametrize("task", TASKS)
def test_dtype(task):
    tb = make_task(task, 4, 2, seed=0, dtype=np.float32)
    assert tb.x.dtype == np.float32


def test_readout_is_seeded_pytorch_linear_init():
    w, b = readout(4, 8, seed=3)
    w2, b2 = readout(4, 8, seed=3)
    np.testing.assert_array_equal(w, w2)
    np.testing.assert_array_equal(b, b2)
    assert w.shape == (8, 4) and b.shape == (8,)
    assert np.abs(w).max() <= 0.5 and np.abs(b).max() <= 0.5  # U(-1/sqrt(H), 1/sqrt(H))


# -- gradients of the readout losses ---------------------------------------------------------------------------
def _assert_rel(name, ours, ref, tol=1e-6):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    scale = float(np.max(np.abs(ref)))
    assert scale > 0, f"{name}: the reference gradient is zero; the check would be vacuous"
    err = float(np.max(np.abs(ours - ref))) / scale
    assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e}\nours {ours.ravel()[:8]}\nref  {ref.ravel()[:8]}"


@pytest.mark.parametrize("task", ["adding", "copy", "sine"])
@pytest.mark.parametrize("seed", [0, 1])
def test_task_loss_grads_against_finite_differences(task, seed):
    T, B, H = 6, 3, 4
    tb = make_task(task, T, B, seed=seed)
    n = tb.x.shape[0]
    rng = np.random.default_rng([seed, 99])
    h = rng.standard_normal((n, B, H))
    w, b = rng.standard_normal((out_size(task), H)), rng.standard_normal(out_size(task))
    loss, grad_h, gw, gb = task_loss_grads(tb, h, w, b)
    assert grad_h.shape == h.shape and gw.shape == w.shape and gb.shape == b.shape
    assert task_loss_grad(tb, h, w, b)[0] == loss
    np.testing.assert_array_equal(task_loss_grad(tb, h, w, b)[1], grad_h)
    _assert_rel(f"{task} dL/dh", grad_h, central_diff(lambda a: task_loss_grads(tb, a, w, b)[0], h))
    _assert_rel(f"{task} dL/dW", gw, central_diff(lambda a: task_loss_grads(tb, h, a, b)[0], w))
    _assert_rel(f"{task} dL/db", gb, central_diff(lambda a: task_loss_grads(tb, h, w, a)[0], b))
    # where the loss does not look, dL/dh is exactly zero
    if task == "adding":
        np.testing.assert_array_equal(grad_h[:-1], 0.0)
    if task == "copy":
        np.testing.assert_array_equal(grad_h[:-COPY_LENGTH], 0.0)


def test_losses_by_hand():
    T, B, H = 4, 2, 3
    rng = np.random.default_rng(5)
    h = rng.standard_normal((T, B, H))
    w, b = rng.standard_normal((1, H)), rng.standard_normal(1)
    tb = make_task("adding", T, B, seed=0)
    y = h[-1] @ w[0] + b[0]
    assert task_loss_grads(tb, h, w, b)[0] == pytest.approx(np.mean((y - tb.targets) ** 2), rel=1e-14)
    tb = make_task("sine", T, B, seed=0)
    y = h @ w[0] + b[0]
    assert task_loss_grads(tb, h, w, b)[0] == pytest.approx(np.mean((y - tb.targets) ** 2), rel=1e-14)


# -- bad input -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["addition", "", "ADD", "noise2"])
def test_unknown_task(name):
    with pytest.raises(ValueError, match="unknown task"):
        make_task(name, 5, 2)


def test_task_name_not_a_string():
    with pytest.raises((ValueError, TypeError)):
        make_task(None, 5, 2)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize(("seq_len", "batch", "exc", "what"), [
    (0, 2, ValueError, "seq_len"),
    (-3, 2, ValueError, "seq_len"),
    (5, 0, ValueError, "batch_size"),
    (5, -1, ValueError, "batch_size"),
    (5.0, 2, TypeError, "seq_len"),
    (5, 2.5, TypeError, "batch_size"),
    (True, 2, TypeError, "seq_len"),
])
def test_bad_sizes(task, seq_len, batch, exc, what):
    with pytest.raises(exc, match=what):
        make_task(task, seq_len, batch)


def test_adding_needs_two_steps():
    with pytest.raises(ValueError, match="seq_len"):
        make_task("adding", 1, 2)


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        make_task("adding", 5, 2, seed=seed)


# -- text: character-level language modelling -----------------------------------------------------------------------
def test_text_task_layout_and_baseline():
    from rnndiag.tasks import load_text, out_size, text_vocab

    text, vocab = load_text(), text_vocab()
    assert "Four score and seven years ago" in text
    tb = make_task("text", 30, 5, 0)
    assert tb.x.shape == (30, 5, len(vocab)) and tb.targets.shape == (30, 5)
    assert np.array_equal(tb.x.sum(axis=2), np.ones((30, 5)))  # one-hot
    assert np.array_equal(tb.x[1:].argmax(axis=2), tb.targets[:-1])  # the target is the next character
    for b in range(5):  # every window is a real piece of the text
        window = "".join(vocab[i] for i in tb.x[:, b].argmax(axis=1)) + vocab[tb.targets[-1, b]]
        assert window in text
    counts = np.array([text.count(ch) for ch in vocab]) / len(text)
    assert tb.baseline == pytest.approx(float(-(counts * np.log(counts)).sum()), rel=1e-12)
    assert out_size("text") == len(vocab)
    # a readout predicting uniformly scores ln V
    h = np.random.default_rng(0).standard_normal((30, 5, 4))
    w, b = np.zeros((len(vocab), 4)), np.zeros(len(vocab))
    assert task_loss_grads(tb, h, w, b)[0] == pytest.approx(np.log(len(vocab)), rel=1e-12)


def test_text_task_gradients_match_finite_differences():
    from rnndiag.tasks import out_size

    tb = make_task("text", 6, 2, 1)
    rng = np.random.default_rng(2)
    h = rng.standard_normal((6, 2, 3))
    w, b = readout(3, out_size("text"), seed=3)
    _, gh, gw, gb = task_loss_grads(tb, h, w, b)
    for arr, g in ((h, gh), (w, gw), (b, gb)):
        num = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + 1e-6
            lp = task_loss_grads(tb, h, w, b)[0]
            arr[i] = old - 1e-6
            lm = task_loss_grads(tb, h, w, b)[0]
            arr[i] = old
            num[i] = (lp - lm) / 2e-6
        assert np.abs(num - g).max() <= 1e-6 * max(1.0, np.abs(num).max())


def test_text_task_rejects_a_sequence_longer_than_the_text():
    from rnndiag.tasks import load_text

    n = len(load_text())
    with pytest.raises(ValueError, match="too long for a text"):
        make_task("text", n, 2, 0)


# -- adding problem, Hochreiter & Schmidhuber (1997) form -------------------------------------------------------------
def test_adding_hs97_layout_target_and_baseline():
    T, B = 40, 5000
    tb = make_task("adding_hs97", T, B, 3)
    x0, m = tb.x[:, :, 0], tb.x[:, :, 1]
    assert ((x0 >= -1) & (x0 <= 1)).all()
    assert ((m == 1).sum(axis=0) == 2).all()  # exactly two marked steps
    marked = np.sort(np.argwhere((m == 1).T)[:, 1].reshape(B, 2), axis=1)
    assert (marked[:, 0] < 10).all() and (marked[:, 1] < T // 2).all()  # one of the first 10, one of the first T/2-1
    assert (m[T - 1] == -1).all()
    assert ((m[0] == -1) | (m[0] == 1)).all()  # -1 unless the first step is marked
    cols = np.arange(B)
    np.testing.assert_allclose(tb.targets, 0.5 + (x0[marked[:, 0], cols] + x0[marked[:, 1], cols]) / 4.0,
                               rtol=0, atol=1e-15)
    # predicting 0.5 scores the documented baseline (within sampling error)
    big = make_task("adding_hs97", 30, 400_000, 0)
    err = (big.targets - 0.5) ** 2
    assert abs(err.mean() - big.baseline) < 5 * err.std() / np.sqrt(err.size)


# -- the problem: one place decides the data, the readout and the loss a diagnosis sees ----------------------------
def test_problem_streams_are_fixed_and_independent():
    """The diagnosis batch, the readout, training batch i and the held-out batch come from their own seeded
    streams ([seed, 3], [seed, 7], [seed, 0, i], [seed, 1, 0]): what analyze, init, clip and train share."""
    from rnndiag.tasks import DIAGNOSIS_STREAM, TEST_STREAM, TRAIN_STREAM, task_problem

    p = task_problem("adding", 12, 3, seed=5, hidden_size=4)
    np.testing.assert_array_equal(p.x, make_task("adding", 12, 3, np.random.default_rng([5, 3])).x)
    w, b = readout(4, 1, seed=np.random.default_rng([5, 7]))
    np.testing.assert_array_equal(p.readout_w, w)
    np.testing.assert_array_equal(p.readout_b, b)
    assert p.readout_label == "a seeded random linear readout" and p.loss_steps == "last"
    train_2 = task_problem("adding", 12, 3, 5, 4, stream=TRAIN_STREAM, index=(2,))
    np.testing.assert_array_equal(train_2.x, make_task("adding", 12, 3, np.random.default_rng([5, 0, 2])).x)
    held_out = task_problem("adding", 12, 3, 5, 4, stream=TEST_STREAM, index=(0,))
    assert not np.array_equal(held_out.x, train_2.x) and not np.array_equal(held_out.x, p.x)
    assert DIAGNOSIS_STREAM not in (TRAIN_STREAM, TEST_STREAM)
    trained = task_problem("adding", 12, 3, 5, 4, readout_wb=(w * 2, b))
    assert trained.readout_label == "the trained readout"
    np.testing.assert_array_equal(trained.readout_w, 2 * w)


@pytest.mark.parametrize(("task", "steps"), [("adding", "last"), ("copy", "last"), ("sine", "all"), ("text", "all")])
def test_analysed_loss_is_the_tasks_own(task, steps):
    from rnndiag.tasks import task_problem

    p = task_problem(task, 10, 2, seed=1, hidden_size=3)
    h = np.random.default_rng(0).standard_normal((p.x.shape[0], 2, 3))
    loss = p.analysed_loss(h)
    value, grad_h = task_loss_grad(p.batch, h, p.readout_w, p.readout_b)
    assert (loss.steps, loss.label, loss.value) == (steps, f"{task} task loss", value)
    np.testing.assert_array_equal(loss.grad_h, grad_h)
    assert loss.detail.startswith(f"{task} task loss on a seeded random linear readout (value ")


def test_analysed_loss_falls_back_to_the_probe_and_says_why():
    from rnndiag.tasks import task_problem

    h = np.zeros((10, 2, 3))
    other = task_problem("adding", 10, 2, 0, 3).analysed_loss(h, steps="all")
    assert (other.grad_h, other.steps, other.label) == (None, "all", None)
    assert "adding task's own loss looks at last steps" in other.detail
    overflowed = task_problem("sine", 10, 2, 0, 3).analysed_loss(np.full((10, 2, 3), np.inf))
    assert (overflowed.grad_h, overflowed.steps) == (None, "all") and "overflowed" in overflowed.detail
    noise = task_problem("noise", 10, 2, 0, 3, input_size=4)
    assert noise.x.shape == (10, 2, 4) and not noise.has_loss
    probe = noise.analysed_loss(h)
    assert (probe.grad_h, probe.steps, probe.label) == (None, "last", None)
    assert probe.detail == "probe loss <u, h> (last): seeded random unit vectors"
