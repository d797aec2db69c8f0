"""rnndiag for PyTorch users: record what a training iteration fed each ``nn.RNN/nn.LSTM/nn.GRU`` and what the
loss sent back, so that rnndiag replays the exact BPTT of *your* model, data and loss.

Needs the ``torch`` extra (``pip install 'rnndiag[torch]'``); ``import rnndiag`` never imports torch.

>>> import torch, rnndiag.pytorch                                    # doctest: +SKIP
>>> cap = rnndiag.pytorch.capture(model, inputs, lambda out: loss(out, targets), iteration=step)  # doctest: +SKIP
>>> cap.save("capture.npz")                                           # doctest: +SKIP
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError("rnndiag.pytorch needs PyTorch: pip install 'rnndiag[torch]' (torch==2.13.0)") from exc

from .recorder import RECURRENT_TYPES, RecordedCall, Recorder, capture, recurrent_modules
from .watch import Watch, unwatch, watch

__all__ = ["RECURRENT_TYPES", "RecordedCall", "Recorder", "Watch", "capture", "recurrent_modules", "unwatch", "watch"]
