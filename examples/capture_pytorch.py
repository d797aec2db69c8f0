"""Diagnose YOUR PyTorch training: record a capture in the training loop, analyse it from the command line.

A small character-level language model (embedding 16 -> 2-layer ``nn.LSTM(batch_first=True)`` with hidden 64 ->
linear) trains on a short text with Adam. Twice -- before the first update and after the last -- the script calls

    cap = rnndiag.pytorch.capture(model, inputs, loss_fn, iteration=step)
    cap.save(path)

which runs ``loss_fn(model(inputs))`` once more with forward hooks on the LSTM and keeps what a replay needs: the
LSTM's real input (the embedded characters), its weights as they were, and the gradient of the real loss on its
output and final states (``torch.autograd.grad``: the model's ``.grad`` and the optimizer are not touched). Then

    rnndiag analyze --capture capture-final.npz --dependency-length 20

replays the exact BPTT of that iteration in numpy (float64) and reports the gradient flow of the user's own loss on
the user's own data -- every output saying so in its first line -- with advice for a trained model (what the forget
gates learned, where the gradient dies), not initialization recipes.

Run: ``python examples/capture_pytorch.py`` (about 20-60 s; needs ``pip install 'rnndiag[torch]'``);
``--quick``: 40 training steps and JSON reports only (for the tests). The captures and the reports go into
``reports/capture-<YYYYmmdd-HHMMSS>/``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
from _charlm import CharLM, batches
from _shared import DEFAULT_REPORTS, console, fresh_report_dir
from torch import nn

import rnndiag.pytorch

TEXT = ("the quick brown fox jumps over the lazy dog. " * 3 +
        "recurrent networks carry a state from step to step; their gradients flow back through every step, "
        "and they vanish or explode when the product of the step jacobians shrinks or grows. ") * 4
SEQ_LEN, BATCH, HIDDEN, EMBED = 60, 16, 64, 16


def analyse(capture_file, out_dir, formats: str) -> dict:
    """``rnndiag analyze --capture`` as a user would type it; returns its metrics.json."""
    cmd = [sys.executable, "-m", "rnndiag", "analyze", "--capture", str(capture_file), "--dependency-length", "20",
           "--out", str(out_dir), "--format", formats, "--json", str(out_dir.with_suffix(".json"))]
    console.print("$ " + " ".join(["rnndiag", *cmd[3:]]))
    subprocess.run(cmd, check=True)
    return json.loads(out_dir.with_suffix(".json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 steps, JSON reports only")
    parser.add_argument("--reports", default=str(DEFAULT_REPORTS))
    args = parser.parse_args()
    steps = 40 if args.quick else 300
    torch.manual_seed(0)
    vocab = sorted(set(TEXT))
    ids = torch.tensor([vocab.index(c) for c in TEXT])
    model = CharLM(len(vocab), EMBED, HIDDEN)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = batches(ids, BATCH, SEQ_LEN, torch.Generator().manual_seed(0))
    folder = fresh_report_dir(args.reports, "capture")
    captures = {}
    for step in range(steps + 1):
        x, y = next(data)

        def loss_fn(logits, y=y):
            return nn.functional.cross_entropy(logits.reshape(-1, len(vocab)), y.reshape(-1))

        if step in (0, steps):  # before the first update, and after the last
            cap = rnndiag.pytorch.capture(model, x, loss_fn, iteration=step)
            captures[step] = cap.save(folder / f"capture-{step}.npz")
            console.print(f"iteration {step}: captured {', '.join(cap.names)} (loss {cap.loss_value:.3f}) "
                          f"-> {captures[step]}")
        if step == steps:
            break
        loss = loss_fn(model(x))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    formats = "json" if args.quick else "html,png,json"
    for step, path in captures.items():
        m = analyse(path, folder / f"report-{step}", formats)
        console.print(f"iteration {step}: looked at {m['looked_at']}")
        console.print(f"iteration {step}: verdict {m['verdict'].upper()} ({m['verdict_detail']}), global gradient "
                      f"norm {m['global_grad_norm']:.3g}, stage {m['stage']}")


if __name__ == "__main__":
    main()
