"""rnndiag: find out whether, where and why a recurrent network's gradients vanish or explode.

>>> import numpy as np, rnndiag
>>> model = rnndiag.init_model("lstm", input_size=2, hidden_size=16, seed=0)
>>> diag = rnndiag.analyze(model, np.random.default_rng(0).standard_normal((40, 4, 2)))
>>> diag.verdict in ("vanishing", "exploding", "healthy")
True
"""

from ._version import __version__
from .analysis import Diagnosis, analyze
from .capture import Capture, analyze_capture, load_capture
from .engine import LayerTrace, Trace, backward, bptt, forward
from .init import SCHEMES, init_model
from .model import RNNModel
from .weights import find_recurrent_modules, load_weights, model_from_state_dict, save_weights

__all__ = [
    "SCHEMES",
    "Capture",
    "Diagnosis",
    "LayerTrace",
    "RNNModel",
    "Trace",
    "__version__",
    "analyze",
    "analyze_capture",
    "backward",
    "bptt",
    "find_recurrent_modules",
    "forward",
    "init_model",
    "load_capture",
    "load_weights",
    "model_from_state_dict",
    "save_weights",
]
