"""The small numpy RNN of a typical blog tutorial, done right with rnndiag's engine.

The seed article for this example (a Chinese blog post on RNN forward and backward passes, sections 5.2-5.3)
builds a ``SimpleRNN`` in numpy -- weights ``0.01 * randn``, ``h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h)``,
``y_t = W_hy h_t + b_y`` -- and trains it on two sequences of length 3: ``[1, 0, 1] -> 1`` and
``[0, 1, 0] -> 0``, then predicts for ``[1, 0, 0]``. Its code has four problems:

(a) It does not run as printed. The inputs are (3, 1) arrays and ``for t, x in enumerate(inputs)`` yields
    their rows, each of shape (1,), while ``W_xh`` is (hidden_size, input_size) = (4, 3), so the very first
    ``np.dot(W_xh, x)`` fails on shapes. The data is three timesteps of a 1-d input, i.e. ``input_size=1``.
(b) Its backward pass computes ``dy = ys[t] - targets[t]`` at every step, as if each step had its own target,
    although the task has one target per sequence (and ``targets[t]`` of the (1, 1) target array does not even
    exist for t = 1, 2). With one target per sequence only the last step's output enters the loss, so the
    gradient on the hidden states is ``W_hy^T dy`` at the last step and zero elsewhere.
(c) Its prediction reads ``ys[0]``, the output after the first step, which has seen only ``x_0``; the answer
    for a sequence is the output after the last step, ``ys[T-1]``.
(d) It clips every gradient entry to [-5, 5] with ``np.clip``. Clipping by value changes the direction of the
    gradient whenever some entries are clipped and others are not; clipping by the global norm (PyTorch's
    ``torch.nn.utils.clip_grad_norm_``) only rescales it. (With 0.01 * randn weights the gradients here never
    reach 5, so the article's clip does nothing at all; it matters once gradients explode.)

What this script does instead:

* the recurrent part is
  ``rnndiag.init_model("rnn_tanh", input_size=1, hidden_size=4, init="tutorial", seed=0)``
  (every weight ``0.01 * randn``, biases 0, as in the article), run on both sequences at once as a batch
  ``x`` of shape (T=3, B=2, I=1);
* a linear readout ``y = W_hy h_{T-1} + b_y`` on the LAST hidden state, with mean squared error over the two
  sequences, one target each;
* gradients: ``rnndiag.bptt(model, x, grad_h)`` with ``grad_h`` nonzero only at the last step
  (``W_hy^T dy``), the readout's gradients by hand; checked against central finite differences;
* training with plain (full-batch) gradient descent and global-norm clipping.

It also shows the vanishing-gradient effect of the 0.01 * randn start: ``||dL/dh_t||`` (``trace.grad_h``)
shrinks by one to two orders of magnitude per step back in time, so the loss sits on a plateau for a while
before the hidden layer starts to carry the signal.

Run: ``python examples/tutorial_rnn.py`` (about a second, deterministic).
"""

from __future__ import annotations

import dataclasses

import numpy as np

import rnndiag

# The article's data, read as 3 timesteps of a 1-d input; both sequences form one batch.
# x[t, b, 0] is the input at step t of sequence b.
X_TRAIN = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]).T[:, :, None]  # (T=3, B=2, I=1)
Y_TRAIN = np.array([[1.0], [0.0]])  # (B=2, 1): one target per sequence
X_TEST = np.array([[1.0, 0.0, 0.0]]).T[:, :, None]  # (T=3, B=1, I=1)

HIDDEN = 4
LEARNING_RATE = 0.1
EPOCHS = 200
MAX_NORM = 1.0
PRINT_EVERY = 10
READOUT_KEYS = ("W_hy", "b_y")


def heading(title: str) -> None:
    print()
    print(title)
    print("-" * len(title))


def seq_str(x: np.ndarray, b: int) -> str:
    return "[" + ", ".join(f"{v:g}" for v in x[:, b, 0]) + "]"


# ------------------------------------------------------------------------------------------------------------
# The article's problems, demonstrated
# ------------------------------------------------------------------------------------------------------------
def article_shape_error() -> str:
    """Run the article's forward loop on its own data (input_size=3) and return numpy's error message."""
    rng = np.random.default_rng(0)
    input_size, hidden_size = 3, 4  # as in SimpleRNN(input_size=3, hidden_size=4, output_size=1)
    W_xh = 0.01 * rng.standard_normal((hidden_size, input_size))
    W_hh = 0.01 * rng.standard_normal((hidden_size, hidden_size))
    b_h = np.zeros((hidden_size, 1))
    inputs = np.array([[1], [0], [1]])  # the article's first training input, shape (3, 1)
    h = np.zeros((hidden_size, 1))
    try:
        for x in inputs:  # x has shape (1,), not (3, 1)
            h = np.tanh(np.dot(W_xh, x) + np.dot(W_hh, h) + b_h)
    except ValueError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error (unexpected)"


def article_target_error() -> str:
    """The article's backward indexes the (1, 1) target of one sequence with the timestep t = 2, 1, 0."""
    target = np.array([[1]])  # targets[i] for the first sequence, as the article passes it to backward
    try:
        for t in reversed(range(3)):
            _ = target[t]
    except IndexError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error (unexpected)"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """Global-norm clipping as ``torch.nn.utils.clip_grad_norm_``: scale all gradients together by
    ``max_norm / (norm + 1e-6)`` when that factor is below 1. Returns the clipped gradients and the norm."""
    norm = float(np.sqrt(sum(float(np.sum(g * g)) for g in grads.values())))
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        return {k: g * coef for k, g in grads.items()}, norm
    return grads, norm


def show_clipping() -> None:
    # A concrete exploding gradient: one large entry, the rest moderate.
    g = np.array([40.0, 4.0, -3.0, 1.0, -0.5])
    by_value = np.clip(g, -5.0, 5.0)  # the article's clip
    by_norm, norm = clip_grad_norm({"g": g}, 5.0)
    print(f"  gradient g                   = {g}  (norm {norm:.2f})")
    print(f"  np.clip(g, -5, 5)            = {by_value}  cosine with g = {cosine(g, by_value):.4f} "
          f"({np.degrees(np.arccos(min(1.0, cosine(g, by_value)))):.0f} degrees off)")
    print(f"  global-norm clip to norm 5   = {np.round(by_norm['g'], 4)}  cosine with g = "
          f"{cosine(g, by_norm['g']):.4f}")


# ------------------------------------------------------------------------------------------------------------
# The fixed model: rnndiag's RNN + a linear readout of the last hidden state
# ------------------------------------------------------------------------------------------------------------
def init_params(init: str = "tutorial", seed: int = 0) -> tuple[rnndiag.RNNModel, dict[str, np.ndarray]]:
    """The recurrent model and a dict of ALL trainable parameters (the RNN's, keyed like PyTorch, plus
    ``W_hy`` (1, H) and ``b_y`` (1,)). The readout gets its own seed so it is not a copy of W_ih."""
    model = rnndiag.init_model("rnn_tanh", input_size=1, hidden_size=HIDDEN, init=init, seed=seed)
    rng = np.random.default_rng(seed + 1)
    if init == "tutorial":
        readout = {"W_hy": 0.01 * rng.standard_normal((1, HIDDEN)), "b_y": np.zeros(1)}
    else:  # a generic point with O(1) weights, for the gradient check
        k = 1.0 / np.sqrt(HIDDEN)
        readout = {"W_hy": rng.uniform(-k, k, (1, HIDDEN)), "b_y": rng.uniform(-k, k, 1)}
    return model, {**model.params, **readout}


def rnn_part(template: rnndiag.RNNModel, params: dict[str, np.ndarray]) -> rnndiag.RNNModel:
    """``template`` with the recurrent weights taken from ``params``."""
    return dataclasses.replace(template, params={k: params[k] for k in template.params})


def outputs(template, params, x) -> np.ndarray:
    """Readout at every step, (T, B, 1); the prediction for a sequence is the last step, ``[-1]``."""
    h = rnndiag.forward(rnn_part(template, params), x).h  # (T, B, H)
    return h @ params["W_hy"].T + params["b_y"]


def loss_only(template, params, x, y) -> float:
    return float(np.mean((outputs(template, params, x)[-1] - y) ** 2))


def loss_and_grads(template, params, x, y):
    """MSE of the last step's readout against one target per sequence; gradients of every parameter."""
    model = rnn_part(template, params)
    h = rnndiag.forward(model, x).h  # (T, B, H)
    h_last = h[-1]  # (B, H)
    y_hat = h_last @ params["W_hy"].T + params["b_y"]  # (B, 1)
    residual = y_hat - y
    loss = float(np.mean(residual**2))
    dy = 2.0 * residual / residual.size  # dL/dy_hat, (B, 1)
    grad_h = np.zeros_like(h)
    grad_h[-1] = dy @ params["W_hy"]  # W_hy^T dy, only at the last step: the loss looks nowhere else
    trace = rnndiag.bptt(model, x, grad_h)
    grads = dict(trace.param_grads)
    grads["W_hy"] = dy.T @ h_last  # (1, H)
    grads["b_y"] = dy.sum(axis=0)  # (1,)
    return loss, grads, trace


def gradient_check(template, params, x, y, eps: float = 1e-5) -> dict[str, float]:
    """Max over entries of |g - fd| / max(|g|, |fd|) per parameter, fd = central finite differences."""
    _, grads, _ = loss_and_grads(template, params, x, y)
    errors = {}
    for name, value in params.items():
        fd = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            plus = {k: v.copy() for k, v in params.items()}
            minus = {k: v.copy() for k, v in params.items()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            fd[idx] = (loss_only(template, plus, x, y) - loss_only(template, minus, x, y)) / (2 * eps)
        g = grads[name]
        denom = np.maximum(np.maximum(np.abs(g), np.abs(fd)), 1e-12)
        errors[name] = float(np.max(np.abs(g - fd) / denom))
    return errors


def train(template, params, x, y):
    params = {k: v.copy() for k, v in params.items()}
    loss = float("nan")
    clipped = 0
    for epoch in range(EPOCHS + 1):
        loss, grads, _ = loss_and_grads(template, params, x, y)
        if epoch % PRINT_EVERY == 0:
            print(f"  epoch {epoch:4d}  loss {loss:.3e}")
        if epoch == EPOCHS:
            break
        grads, norm = clip_grad_norm(grads, MAX_NORM)
        clipped += norm > MAX_NORM
        params = {k: v - LEARNING_RATE * grads[k] for k, v in params.items()}
    return params, loss, clipped


# ------------------------------------------------------------------------------------------------------------
def main() -> int:
    np.set_printoptions(precision=4, suppress=False)
    print("rnndiag tutorial: the seed article's SimpleRNN, done right")
    print("=" * 58)

    heading("What is wrong with the article's code")
    print("(a) It does not run: iterating a (3, 1) input yields rows of shape (1,), but W_xh is (4, 3).")
    print(f"    The article's first forward step raises {article_shape_error()}")
    print("    The data is 3 timesteps of a 1-d input: input_size=1, x of shape (T=3, B, 1).")
    print("(b) Its backward uses dy = ys[t] - targets[t] at every step, but each sequence has ONE target;")
    print(f"    read literally, targets[t] of the (1, 1) target fails too: {article_target_error()}")
    print("    Fixed: only the last step's output enters the loss: dL/dh_t = W_hy^T dy at t = T-1, else 0.")
    print("(c) It predicts with ys[0], the output after the FIRST step (it has seen only x_0); use ys[T-1].")
    print("(d) np.clip(grad, -5, 5) clips entries independently and changes the gradient's direction;")
    print("    global-norm clipping only rescales it:")
    show_clipping()

    template, params = init_params("tutorial", seed=0)

    heading("Gradient check: bptt + hand-written readout vs central finite differences")
    _, grads0, _ = loss_and_grads(template, params, X_TRAIN, Y_TRAIN)
    print(f"  At the 0.01*randn start max |dL/dW_hh| is only {np.abs(grads0['weight_hh_l0']).max():.1e}, "
          "too small for float64")
    print("  finite differences to resolve to 1e-9 (the vanishing gradient again), so the check runs at a")
    print("  generic point: the same architecture with init='pytorch' (U(-1/2, 1/2)) weights and readout.")
    check_template, check_params = init_params("pytorch", seed=1)
    errors = gradient_check(check_template, check_params, X_TRAIN, Y_TRAIN)
    print(f"  {'parameter':<14}{'shape':<10}{'max rel. error':>15}")
    for name, err in errors.items():
        print(f"  {name:<14}{check_params[name].shape!s:<10}{err:>15.1e}")
    print(f"gradient check: max relative error {max(errors.values()):.1e}")

    heading("The 0.01*randn start: the gradient vanishes back through time")
    loss0, _, trace0 = loss_and_grads(template, params, X_TRAIN, Y_TRAIN)
    w_hh_norm = np.linalg.norm(template.params["weight_hh_l0"], 2)
    print(f"  initial loss {loss0:.4f}; spectral norm of W_hh = {w_hh_norm:.4f}, which bounds the factor")
    print("  ||dL/dh_{t-1}|| / ||dL/dh_t|| (tanh' <= 1):")
    norms = np.linalg.norm(trace0.grad_h.reshape(trace0.seq_len, -1), axis=1)  # over batch and hidden units
    for t in range(trace0.seq_len - 1, -1, -1):
        ratio = f"   (x{norms[t] / norms[t + 1]:.1e} vs step {t + 1})" if t < trace0.seq_len - 1 else ""
        print(f"    ||dL/dh_{t}|| = {norms[t]:.2e}{ratio}")
    print("  So at first only the readout (mostly b_y) learns and the loss stalls near 0.25 (predicting the")
    print("  mean); it drops once W_ih and W_hy have grown enough to carry the last input to the output.")

    heading(f"Training: gradient descent, lr={LEARNING_RATE}, global-norm clipping at {MAX_NORM}")
    trained, final_loss, clipped = train(template, params, X_TRAIN, Y_TRAIN)
    print(f"  global-norm clipping was active in {clipped} of {EPOCHS} epochs")
    print(f"final loss: {final_loss:.1e}")

    heading("Predictions (readout of the LAST step)")
    y_train = outputs(template, trained, X_TRAIN)
    y_test = outputs(template, trained, X_TEST)
    for b in range(X_TRAIN.shape[1]):
        print(f"  train {seq_str(X_TRAIN, b)}  target {Y_TRAIN[b, 0]:g}  prediction {y_train[-1, b, 0]:.4f}")
    print(f"  test  {seq_str(X_TEST, 0)}            prediction {y_test[-1, 0, 0]:.4f}")
    print("  Two training sequences do not determine a rule: the test answer is how the fit extrapolates.")
    print(f"  Reading step 0 as the article does: {seq_str(X_TRAIN, 0)} -> {y_train[0, 0, 0]:.4f} and "
          f"{seq_str(X_TEST, 0)} -> {y_test[0, 0, 0]:.4f},")
    print("  identical, because after one step both sequences have seen only x_0 = 1.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
