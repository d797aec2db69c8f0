"""An exploding gradient caught at its first non-finite value, with the layer and the time step named.

A tanh RNN (``nn.RNN(4, 64, batch_first=True)`` -> linear on the last state) learns, with Adam at lr 1e-2, to sum
the first input channel over the last 3 of T = 300 steps, under ``rnndiag.pytorch.watch(model, run_dir,
every=10)``. At iteration 25 its recurrent weights become 5 x a random orthogonal matrix -- a deliberate stand-in
for a bad update (a corrupted checkpoint, a learning-rate spike): the network is then chaotic (top Lyapunov exponent
about +0.48 nats/step), so ``dL/dh_t`` grows by about e^0.48 per step back. Its states are tanh's, bounded, so the
loss stays finite and an ``isfinite(loss)`` check sees nothing; but about 185 steps back from the loss the float32
backward exceeds 3.4e38 = e^88.7 and every gradient of the RNN is inf or NaN. ``watch`` notices it as the parameters'
gradients arrive, captures that iteration (the weights before any step, the input, the loss's gradient on the
outputs), replays it in float32 to find where it first overflowed, and warns::

    RuntimeWarning: rnndiag.watch: the gradient of rnn.bias_hh_l0 is not finite at iteration 25; the replay finds
    the gradient of rnn layer 0 (forward) non-finite first at time step 113; ...

The loop here stops at that warning, before the optimizer steps on an infinite gradient, and then runs

    rnndiag analyze --capture RUN_DIR/captures/it00000025.npz    # the float64 replay: the numbers behind it
    rnndiag report RUN_DIR                                       # the run: norms, captures, the event

Why a deliberate jump and not a learning rate that is simply too high: a search of tanh RNNs (H = 64, T = 200 to
1000, sign-of-sum classification and sum regression, SGD with momentum and Adam at lr 0.01 to 3, orthogonal gains
1 to 1.6, 100-150 iterations) found runs that diverge by themselves, but almost always with the loss itself
overflowing first (the linear readout's weights blow up; watch then says the loss's gradient was not finite and
nothing can be replayed), or with the backward vanishing in saturated states. The few that overflowed in the
backward with a finite loss were not reproducible: orthogonal x 1.25, Adam lr 0.1, T = 300 overflowed at iteration
51 with one torch thread, but not within 100 iterations with two, nor with a 1e-6 change of the initial weights,
nor for three other seeds. The jump makes the event certain on every machine.

Measured (full run, 2 shared cores, torch 2.13 CPU): iterations 0-24 train normally (loss 0.88 -> 0.13, gradient
norm of the RNN 0.6 to 5.4; captures at 0, 10 and 20, VANISHING, horizon 12 to 42 of 300 steps). At iteration 25
the loss is 1.27 and the gradient of every RNN parameter is inf or NaN; the float32 replay finds it first at time
step 113 (186 steps back from the loss at step 299). The float64 replay of that capture: EXPLODING, the gradient
growing 10^61.9 over 299 steps (global gradient norm 5.4e63, where float32 ends at 3.4e38; top Lyapunov exponent
+0.48 nats/step). The whole script took 15 s.

Run: ``python examples/watch_exploding.py`` (~15-30 s; needs ``pip install 'rnndiag[torch]'``); ``--quick``: JSON
reports only (for the tests). Everything goes into ``reports/watch-exploding-<YYYYmmdd-HHMMSS>/``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads must not spin on a shared machine

import argparse
import json
import subprocess
import sys
import warnings

import torch
from _shared import DEFAULT_REPORTS, console, fresh_report_dir
from torch import nn

import rnndiag.pytorch
from rnndiag.run import read_iterations

T, BATCH, HIDDEN, INPUTS, WINDOW = 300, 16, 64, 4, 3
LR = 1e-2
JUMP, GAIN = 25, 5.0  # the iteration whose weights jump, and to what gain x orthogonal
MAX_ITERATIONS = 60


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(INPUTS, HIDDEN, batch_first=True)  # tanh
        self.head = nn.Linear(HIDDEN, 1)

    def forward(self, x):
        h, _ = self.rnn(x)
        return self.head(h[:, -1]).squeeze(-1)


def jump(model: Model, generator: torch.Generator) -> None:
    """The deliberate bad update: recurrent weights = GAIN x a random orthogonal matrix."""
    q, _ = torch.linalg.qr(torch.randn(HIDDEN, HIDDEN, generator=generator))
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(GAIN * q)


def train(run_dir) -> dict:
    """The training loop under watch, stopped at the first non-finite gradient; returns what happened."""
    torch.manual_seed(0)
    model = Model()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    data = torch.Generator().manual_seed(0)
    norms, losses = [], []
    # without optimizer=..., watch finishes each iteration as its last recurrent gradient arrives (in backward),
    # so the loop can look at it before opt.step()
    with warnings.catch_warnings(record=True) as caught, rnndiag.pytorch.watch(model, run_dir, every=10) as w:
        warnings.simplefilter("always", RuntimeWarning)
        for it in range(MAX_ITERATIONS):
            if it == JUMP:
                jump(model, data)
                console.print(f"iteration {it}: the recurrent weights jump to {GAIN:g} x orthogonal (the deliberate "
                              "bad update)")
            x = torch.randn(BATCH, T, INPUTS, generator=data)
            y = x[:, -WINDOW:, 0].sum(1) / WINDOW**0.5
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            losses.append(loss.item())
            norms.append(float(torch.sqrt(sum(p.grad.double().square().sum() for p in model.rnn.parameters()))))
            if w.nonfinite_events:  # watch has warned: stop before stepping on an infinite gradient
                break
            opt.step()
    warned = [str(m.message) for m in caught if "rnndiag.watch" in str(m.message)]
    return {"losses": losses, "norms": norms, "warnings": warned, "events": w.nonfinite_events,
            "captures": list(w.captures)}


def cli(args: list[str]) -> None:
    """``rnndiag <args>`` as a user would type it."""
    console.print("$ " + " ".join(["rnndiag", *args]))
    subprocess.run([sys.executable, "-m", "rnndiag", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="JSON reports only (for the tests)")
    parser.add_argument("--reports", default=str(DEFAULT_REPORTS), help="parent folder of the run and report folder")
    args = parser.parse_args()
    formats = "json" if args.quick else "html,png,json"
    folder = fresh_report_dir(args.reports, "watch-exploding" + ("-quick" if args.quick else ""))
    run_dir = folder / "run"
    console.print(f"tanh RNN H={HIDDEN}, T={T}, batch {BATCH}; Adam lr {LR:g}; watch(model, {str(run_dir)!r}, "
                  "every=10)")
    r = train(run_dir)
    last = len(r["losses"]) - 1
    console.print(f"iterations 0-{JUMP - 1}: loss {r['losses'][0]:.3g} -> {r['losses'][JUMP - 1]:.3g}, gradient "
                  f"norm of the RNN {min(r['norms'][:JUMP]):.3g} to {max(r['norms'][:JUMP]):.3g}")
    if not r["events"]:
        raise SystemExit(f"no non-finite gradient in {last + 1} iterations: nothing to show")
    console.print(f"iteration {last}: loss {r['losses'][last]:.3g} (finite: a check of the loss would not stop "
                  f"this run); gradient norm of the RNN {r['norms'][last]}")
    for message in r["warnings"]:
        console.print(f"watch warned: {message}")
    event = next(line for line in read_iterations(run_dir).lines if line.get("nonfinite"))
    nf = event["nonfinite"]
    console.print(f"iterations.jsonl: iteration {event['iteration']}, first parameter {nf['first_parameter']}, "
                  f"module {nf.get('module')}, layer {nf.get('layer')}, direction {nf.get('direction')}, time step "
                  f"{nf.get('step')} ({nf.get('kind')}), capture {event['capture']}")
    console.print(f"the loop stopped there, before opt.step(); captures: "
                  f"{', '.join(p.name for p in r['captures'])}")

    capture = run_dir / event["capture"]
    analysis = folder / "analyze"
    cli(["analyze", "--capture", str(capture), "--out", str(analysis), "--format", formats, "--json",
         str(analysis.with_suffix(".json"))])
    m = json.loads(analysis.with_suffix(".json").read_text())
    layer = m["layers"][0]
    console.print(f"float64 replay of iteration {event['iteration']}: {m['verdict'].upper()} ({m['verdict_detail']}); "
                  f"global gradient norm {m['global_grad_norm']:.3g} (float32 ends at 3.4e38); top Lyapunov "
                  f"exponent {layer['lyapunov_top']:+.3f} nats/step")

    report = folder / "report"
    cli(["report", str(run_dir), "--out", str(report), "--format", formats, "--json",
         str(report.with_suffix(".json"))])
    rm = json.loads(report.with_suffix(".json").read_text())
    for ev in rm["nonfinite"]:
        console.print(f"report: non-finite gradient at iteration {ev['iteration']} ({ev['first_parameter']}; "
                      f"layer {ev.get('layer')}, {ev.get('direction')}, time step {ev.get('step')})")
    for module, latest in rm["latest"].items():
        console.print(f"report: latest verdict ({module}, iteration {latest['iteration']}): "
                      f"{latest['verdict'].upper()} ({latest['verdict_detail']})")
    console.print(f"reports: {analysis} and {report}")


if __name__ == "__main__":
    main()
