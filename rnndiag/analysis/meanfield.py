r"""Mean-field theory of large random tanh networks ``h_t = tanh(W h_{t-1})``, ``W_ij ~ N(0, g^2 / N)``, no input and
no bias (Molgedey, Schuchhardt & Schuster 1992; Poole et al. 2016): the top Lyapunov exponent is ``ln g`` for
g < 1 (the state decays to the fixed point 0, where the Jacobian is W) and, for g > 1,
``0.5 ln(g^2 E[sech^4(sqrt(q*) z)])`` with ``q* = g^2 E[tanh^2(sqrt(q*) z)]``, ``z ~ N(0, 1)``; it crosses 0 at
g = 1 (the order-chaos transition).

>>> round(mean_field_exponent(0.5), 6) == round(math.log(0.5), 6)
True
>>> mean_field_exponent(2.0) > 0
True
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numpy.polynomial.hermite_e import hermegauss

QUADRATURE_NODES = 301  # tanh and sech^4 are far from polynomials: 301 nodes give lambda(g = 3) to ~1e-7


@functools.lru_cache(maxsize=8)
def _nodes(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    return hermegauss(nodes)


def gauss_expect(fn, q: float, nodes: int = QUADRATURE_NODES) -> float:
    """``E[fn(sqrt(q) z)]``, z ~ N(0, 1), by Gauss-Hermite (probabilists') quadrature."""
    z, w = _nodes(nodes)
    return float(np.sum(w * fn(math.sqrt(q) * z)) / math.sqrt(2.0 * math.pi))


@functools.lru_cache(maxsize=1024)
def fixed_point_variance(g: float) -> float:
    """``q*``: the variance of the pre-activations at the mean-field fixed point (0 for g <= 1), the root of
    ``g^2 E[tanh^2(sqrt(q) z)] - q`` (Brent's method: the plain iteration slows down without end near g = 1)."""
    from scipy.optimize import brentq

    if g <= 1.0:
        return 0.0
    def excess(q: float) -> float:
        return g * g * gauss_expect(lambda a: np.tanh(a) ** 2, q) - q

    lo = 1e-300
    return float(brentq(excess, lo, g * g, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=500))


def mean_field_exponent(g: float) -> float:
    """The mean-field top Lyapunov exponent (nats/step) of a random tanh network of gain ``g`` > 0."""
    if not g > 0:
        raise ValueError(f"gain must be positive; got {g!r}")
    if g <= 1.0:
        return math.log(g)
    q = fixed_point_variance(float(g))
    return 0.5 * math.log(g * g * gauss_expect(lambda a: 1.0 / np.cosh(a) ** 4, q))
