r"""Top Lyapunov exponent of large random tanh networks against mean-field theory.

``h_t = tanh(W h_{t-1})`` with ``W_ij ~ N(0, g^2 / N)``, no input, no bias, a random non-zero initial state
(h = 0 is a fixed point), B = 1:

* g < 1: the state decays to 0 and the Jacobian becomes ``W`` itself, so the top exponent is ``ln rho(W)``,
  which is ``ln g`` up to the finite-N edge of the circular law;
* g > 1: the dynamics are chaotic and the mean-field (Molgedey, Schuchhardt & Schuster 1992) top exponent is
  ``0.5 ln(g^2 E[sech^4(sqrt(q*) z)])`` with ``q* = g^2 E[tanh^2(sqrt(q*) z)]``, ``z ~ N(0, 1)``.

``analyze`` would also form Jacobian products (O(N^3) per step), so these call ``rnndiag.forward`` and
``lyapunov_spectrum`` (k = 1) directly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import rnndiag
from rnndiag.analysis import lyapunov_spectrum
from rnndiag.analysis.meanfield import fixed_point_variance, gauss_expect, mean_field_exponent

N, T, WARMUP = 1000, 500, 100


def random_network(g: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, N)) * (g / math.sqrt(N))
    base = rnndiag.init_model("rnn_tanh", 1, N, init="xavier_normal", seed=seed)  # zero biases
    p = base.state_dict()
    p["weight_hh_l0"] = w
    model = base.with_params(p)
    h0 = rng.standard_normal((1, 1, N))
    return model, w, rnndiag.forward(model, np.zeros((T, 1, 1)), h0)


def test_mean_field_helper():
    """Sanity of the quadrature: E[z^2] = 1, and q* solves its equation; q* = 0 below g = 1."""
    assert gauss_expect(lambda a: a**2, 1.0) == pytest.approx(1.0, rel=1e-12)
    lam, q = mean_field_exponent(2.0), fixed_point_variance(2.0)
    assert q == pytest.approx(4.0 * gauss_expect(lambda a: np.tanh(a) ** 2, q), rel=1e-12)
    assert 0 < lam < math.log(2.0)


@pytest.mark.slow
def test_contracting_random_network_top_exponent_is_ln_g():
    g = 0.5
    model, w, tr = random_network(g)
    lt = tr.layers[0]
    assert np.abs(lt.h[WARMUP]).max() < 1e-20  # decayed: from here on J_t = W
    ly = lyapunov_spectrum(lt, [0], k=1, warmup=WARMUP)
    assert ly.steps == T - WARMUP
    rho = float(np.abs(np.linalg.eigvals(w)).max())
    assert ly.top == pytest.approx(math.log(rho), abs=5e-3)
    assert ly.top == pytest.approx(math.log(g), abs=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("g", [1.5, 2.0, 3.0])
def test_chaotic_random_network_top_exponent_matches_mean_field(g):
    model, w, tr = random_network(g)
    lt = tr.layers[0]
    assert np.abs(lt.h[-1]).max() > 0.1  # still active: chaos, not decay
    ly = lyapunov_spectrum(lt, [0], k=1, warmup=WARMUP)
    lam_mf = mean_field_exponent(g)
    assert ly.top > 0
    assert ly.top == pytest.approx(lam_mf, rel=0.10)
