"""rnndiag: find out whether, where and why a recurrent network's gradients vanish or explode."""

from ._version import __version__
from .engine import LayerTrace, Trace, backward, bptt, forward
from .init import SCHEMES, init_model
from .model import RNNModel
from .weights import load_weights, save_weights

__all__ = [
    "SCHEMES",
    "LayerTrace",
    "RNNModel",
    "Trace",
    "__version__",
    "backward",
    "bptt",
    "forward",
    "init_model",
    "load_weights",
    "save_weights",
]
