"""The analysis layer: from a trace to numbers, a verdict and advice. Never draws."""

from .diagnose import Diagnosis, LayerDiagnosis, NonFinite, analyze
from .flow import GradientFlow, fit_decay, horizon, last_step_chain
from .gates import GateStats, gate_stats
from .jacobians import product_norms
from .lyapunov import LyapunovSpectrum, lyapunov_spectrum
from .settings import HORIZON_FACTOR, AnalysisSettings, probe_grad_h
from .spectral import MatrixSpectrum, WeightSpectrum, weight_spectra
from .verdict import THRESHOLDS, RuleHit

__all__ = [
    "HORIZON_FACTOR",
    "THRESHOLDS",
    "AnalysisSettings",
    "Diagnosis",
    "GateStats",
    "GradientFlow",
    "LayerDiagnosis",
    "LyapunovSpectrum",
    "MatrixSpectrum",
    "NonFinite",
    "RuleHit",
    "WeightSpectrum",
    "analyze",
    "fit_decay",
    "gate_stats",
    "horizon",
    "last_step_chain",
    "lyapunov_spectrum",
    "probe_grad_h",
    "product_norms",
    "weight_spectra",
]
