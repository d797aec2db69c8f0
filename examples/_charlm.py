"""The character-level language model the PyTorch examples train (embedding -> 2-layer ``nn.LSTM(batch_first=True)``
-> linear) and its batches. Not an example itself; it needs torch (``pip install 'rnndiag[torch]'``)."""

from __future__ import annotations

import torch
from torch import nn


class CharLM(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int):
        super().__init__()
        self.emb = nn.Embedding(vocab, embed)
        self.rnn = nn.LSTM(embed, hidden, num_layers=2, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        h, _ = self.rnn(self.emb(tokens))
        return self.out(h)


def batches(ids: torch.Tensor, batch: int, seq_len: int, generator: torch.Generator):
    """Random windows of the text: inputs and next-character targets, (B, T) each."""
    while True:
        start = torch.randint(0, ids.numel() - seq_len - 1, (batch,), generator=generator)
        window = torch.stack([ids[s : s + seq_len + 1] for s in start.tolist()])
        yield window[:, :-1], window[:, 1:]
