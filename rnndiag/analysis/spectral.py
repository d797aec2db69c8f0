"""Static analysis of the recurrent weights: eigenvalues, singular values, the Pascanu et al. (2013) conditions
and where the matrix sits against a random Gaussian reference.

Pascanu, Mikolov & Bengio (2013), for ``h_t = phi(W h_{t-1} + ...)`` with ``gamma = max |phi'|``:
gradients are sure to vanish when ``sigma_max(W) < 1/gamma``; they can explode only when ``sigma_max(W) > 1/gamma``.
For a random ``W`` with entries ``N(0, g^2/N)`` (circular law and Marchenko-Pastur edge), the spectral radius is
close to ``g`` and ``sigma_max`` close to ``2g``; ``g_equivalent = ||W||_F / sqrt(N)`` is the ``g`` of a Gaussian
matrix with the same entry variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..cells import cell_module, is_gated
from ..jsonsafe import finite_or_none
from ..model import RNNModel


@dataclass(frozen=True)
class MatrixSpectrum:
    """Spectrum of one square matrix."""

    name: str
    eigenvalues: np.ndarray = field(repr=False)  # complex (N,)
    singular_values: np.ndarray = field(repr=False)  # (N,), descending
    spectral_radius: float
    sigma_max: float
    sigma_min: float
    condition_number: float  # sigma_max / sigma_min (inf when singular)
    g_equivalent: float  # ||W||_F / sqrt(N)

    @classmethod
    def of(cls, name: str, w: np.ndarray) -> MatrixSpectrum:
        w = np.asarray(w, dtype=np.float64)
        eig = np.linalg.eigvals(w)
        sv = np.linalg.svd(w, compute_uv=False)
        smax, smin = float(sv[0]), float(sv[-1])
        cond = smax / smin if smin > 0 else math.inf
        return cls(name, eig, sv, float(np.abs(eig).max()), smax, smin, cond,
                   float(np.linalg.norm(w) / math.sqrt(w.shape[0])))

    def to_dict(self, full: bool = True) -> dict:
        d = {
            "name": self.name,
            "spectral_radius": self.spectral_radius,
            "sigma_max": self.sigma_max,
            "sigma_min": self.sigma_min,
            "condition_number": finite_or_none(self.condition_number),
            "g_equivalent": self.g_equivalent,
            "random_reference": {"spectral_radius": self.g_equivalent, "sigma_max": 2 * self.g_equivalent},
        }
        if full:
            d["eigenvalues_real"] = self.eigenvalues.real.tolist()
            d["eigenvalues_imag"] = self.eigenvalues.imag.tolist()
            d["singular_values"] = self.singular_values.tolist()
        return d


@dataclass(frozen=True)
class WeightSpectrum:
    """Spectra of one layer's ``W_hh`` and of each of its gate blocks, with the Pascanu conditions."""

    layer: int
    cell: str
    recurrent: MatrixSpectrum  # RNN: W_hh; gated cells: the candidate block (LSTM g, GRU n)
    blocks: dict[str, MatrixSpectrum]  # per gate block (H, H)
    gamma: float | None  # max |phi'|; None for gated cells (no single gamma bounds their Jacobian)
    sure_to_vanish: bool | None  # sigma_max < 1/gamma
    can_explode: bool | None  # sigma_max > 1/gamma
    direction: int = 0  # 0 forward, 1 reverse
    proj_size: int = 0  # P > 0: the matrices are the P x P products W_hr W_h(gate)

    @property
    def spectral_radius(self) -> float:
        return self.recurrent.spectral_radius

    @property
    def sigma_max(self) -> float:
        return self.recurrent.sigma_max

    def to_dict(self) -> dict:
        pascanu: dict = {"gamma": self.gamma}
        if self.gamma is None:
            pascanu["note"] = ("not applicable to gated cells: their Jacobian has an additive path (f * c, z * h) "
                               "that no single gamma * sigma_max bounds")
        else:
            pascanu.update(
                threshold=1.0 / self.gamma,
                sigma_max=self.sigma_max,
                sure_to_vanish=self.sure_to_vanish,
                can_explode=self.can_explode,
                rule="vanishing is certain when sigma_max(W_hh) < 1/gamma; explosion is possible only when "
                     "sigma_max(W_hh) > 1/gamma (Pascanu et al. 2013)",
            )
        return {
            "layer": self.layer,
            "direction": "reverse" if self.direction else "forward",
            "proj_size": self.proj_size,
            "matrix": self.recurrent.name,
            **{k: v for k, v in self.recurrent.to_dict().items() if k != "name"},
            "pascanu": pascanu,
            "gate_blocks": {k: v.to_dict(full=False) for k, v in self.blocks.items()},
        }


def weight_spectra(model: RNNModel) -> list[WeightSpectrum]:
    """Spectra of every layer's (and direction's) recurrent weights, in PyTorch's order of layers and directions.

    With ``proj_size`` P the step from ``h_{t-1}`` back to ``h_t`` goes through ``W_hr`` (P, H) after each gate
    block ``W_h(gate)`` (H, P), so the spectra are those of the P x P products ``W_hr W_h(gate)`` (the same nonzero
    eigenvalues as ``W_h(gate) W_hr``), named so in ``matrix``.

    >>> from rnndiag import init_model
    >>> s = weight_spectra(init_model("rnn_tanh", 1, 32, init="orthogonal", gain=0.5, seed=0))[0]
    >>> round(s.sigma_max, 12), s.sure_to_vanish
    (0.5, True)
    """
    out = []
    H = model.hidden_size
    mod = cell_module(model.cell)
    gamma = mod.GAMMA  # max |phi'| of the nonlinearity that multiplies W_hh in the step Jacobian, if one bounds it
    for layer in range(model.num_layers):
        for direction in range(model.num_directions):
            w_hh = model.layer_params(layer, direction)[1]
            w_hr = model.projection(layer, direction)
            if is_gated(model.cell):  # every gate block, the candidate's first
                if w_hr is None:
                    blocks = {name: MatrixSpectrum.of(f"W_h{name}", w_hh[k * H : (k + 1) * H])
                              for k, name in enumerate(mod.GATE_NAMES)}
                else:
                    blocks = {name: MatrixSpectrum.of(f"W_hr W_h{name}", w_hr @ w_hh[k * H : (k + 1) * H])
                              for k, name in enumerate(mod.GATE_NAMES)}
                main = blocks[mod.CANDIDATE_GATE]
            else:  # one block: W_hh itself
                main, blocks = MatrixSpectrum.of("W_hh", w_hh), {}
            vanish = explode = None
            if gamma is not None:
                vanish, explode = main.sigma_max < 1.0 / gamma, main.sigma_max > 1.0 / gamma
            out.append(WeightSpectrum(layer, model.cell, main, blocks, gamma, vanish, explode, direction,
                                      model.proj_size))
    return out
