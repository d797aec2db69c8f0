"""A capture replays exactly: three user models, float64, eval mode, captured with :func:`rnndiag.pytorch.capture`,
written to ``.npz`` and read back, diagnosed with ``rnndiag.analyze(loaded, keep_trace=True)``:

* (a) ``lm``: a 2-layer LSTM language model with an embedding, ``batch_first``, cross-entropy over all steps;
* (b) ``bigru_packed``: a 2-layer bidirectional GRU classifier on packed variable-length input
  (``pack_padded_sequence(..., enforce_sorted=False)``), the classifier on ``h_n`` of both directions;
* (c) ``rnn_last``: a 2-layer tanh RNN from a given ``h0``, MSE of a linear readout of ``output[-1]`` only.

Against autograd on the real model: every parameter gradient of the recurrent module. Against an UNROLLED copy of
the same user model (its recurrent module swapped for a cell-by-cell torch drop-in on the same weights, whose loss
must first equal the real one): the total ``dL/dh_t`` (and ``dL/dc_t``) of every step, layer and direction, as
vectors in processing order and as norms per (step, sequence) in time order. Errors are relative,
``max|ours - theirs| / max|theirs|``, and the norms also entry by entry (``|ours - theirs| / theirs``, so that a
vanishing gradient's tiny norms count). Measured maxima, parameter gradients / per-step gradients (vectors and
norms; torch 2.13.0 CPU; ``-rP`` prints them), all far below the 1e-10 asserted:

* (a) lm: 1.1e-15 / 4.2e-16;
* (b) bigru_packed: 5.5e-16 / 5.0e-16;
* (c) rnn_last: 7.6e-16 / 1.5e-15 (the pointwise norm error at ||dL/dh_t|| ~ 1e-13, 40 steps back).

The unrolled loss equals the fused model's to the bit in all three cases.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import rnndiag
from rnndiag.capture import load_capture

torch = pytest.importorskip("torch", reason="torch is not installed: the PyTorch reference tests need it")
from test_torch_configs import (  # noqa: E402  (tests/ is on sys.path, see conftest.py)
    PARAM_NAMES,
    TOL,
    TOL_REF,
    Checker,
    gru_step,
    lstm_cell,
    lstm_output,
    reverse_index,
    rnn_step,
)

import rnndiag.pytorch as rp  # noqa: E402  (needs torch)

nn = torch.nn
PackedSequence = nn.utils.rnn.PackedSequence
pack_padded_sequence = nn.utils.rnn.pack_padded_sequence
pad_packed_sequence = nn.utils.rnn.pad_packed_sequence

pytestmark = pytest.mark.torch


# -- the user models -----------------------------------------------------------------------------------------------
class LanguageModel(nn.Module):
    def __init__(self, vocab=30, emb=8, hidden=16):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = nn.LSTM(emb, hidden, 2, batch_first=True, dropout=0.2)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, tokens):
        h, _ = self.rnn(self.emb(tokens))
        return self.out(h)


class PackedClassifier(nn.Module):
    def __init__(self, features=5, hidden=12, classes=4):
        super().__init__()
        self.rnn = nn.GRU(features, hidden, 2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, h_n = self.rnn(packed)
        return self.head(torch.cat([h_n[-2], h_n[-1]], dim=1))  # top layer, forward and reverse


class LastStepRegressor(nn.Module):
    def __init__(self, features=3, hidden=16):
        super().__init__()
        self.rnn = nn.RNN(features, hidden, 2, nonlinearity="tanh")
        self.readout = nn.Linear(hidden, 1)

    def forward(self, x, h0):
        out, _ = self.rnn(x, h0)
        return self.readout(out[-1])


def case_lm():
    torch.manual_seed(1)
    model = LanguageModel().double().eval()
    tokens, targets = torch.randint(0, 30, (2, 5, 25))
    return model, tokens, lambda logits: nn.functional.cross_entropy(logits.reshape(-1, 30), targets.reshape(-1)), 100


def case_bigru_packed():
    torch.manual_seed(2)
    model = PackedClassifier().double().eval()
    lengths = torch.tensor([9, 3, 12, 1, 7, 12])  # unsorted, 1 and the maximum included
    x = torch.randn(6, 12, 5, dtype=torch.float64) * (torch.arange(12)[None, :, None] < lengths[:, None, None])
    labels = torch.randint(0, 4, (6,))
    return model, (x, lengths), lambda logits: nn.functional.cross_entropy(logits, labels), 7


def case_rnn_last():
    torch.manual_seed(3)
    model = LastStepRegressor().double().eval()
    x, h0 = torch.randn(40, 4, 3, dtype=torch.float64), 0.5 * torch.randn(2, 4, 16, dtype=torch.float64)
    y = torch.randn(4, 1, dtype=torch.float64)
    return model, (x, h0), lambda pred: nn.functional.mse_loss(pred, y), 0


CASES = {"lm": case_lm, "bigru_packed": case_bigru_packed, "rnn_last": case_rnn_last}


def run(model, inputs):
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


# -- the unrolled drop-in ------------------------------------------------------------------------------------------
class Unrolled(nn.Module):
    """A cell-by-cell stand-in for a fused ``nn.RNN/LSTM/GRU`` (eval mode), on its parameters: same call, same
    outputs (a packed input gives a packed output, ``h_n`` at each sequence's last step). Keeps every step's
    state tensors per layer trace k = layer * D + direction, in processing order, and the lengths it saw."""

    def __init__(self, fused):
        super().__init__()
        assert not (fused.training and fused.dropout > 0)
        self.fused = fused
        self.cell = {nn.LSTM: "lstm", nn.GRU: "gru"}.get(type(fused), "rnn")
        self.steps_h, self.steps_c, self.lengths = {}, {}, None

    def forward(self, inp, hx=None):
        m = self.fused
        if isinstance(inp, PackedSequence):
            x, lengths = pad_packed_sequence(inp)
        else:
            x = inp.transpose(0, 1) if m.batch_first else inp
            lengths = torch.full((x.shape[1],), x.shape[0])
        self.lengths = lens = lengths.numpy()
        h0, c0 = self._initial(hx, x)
        out, h_n, c_n = self._layers(x, lens, h0, c0)
        if isinstance(inp, PackedSequence):
            out = pack_padded_sequence(out, lengths, enforce_sorted=False)
        elif m.batch_first:
            out = out.transpose(0, 1)
        return out, (h_n, c_n) if self.cell == "lstm" else h_n

    def _initial(self, hx, x):
        m, D = self.fused, 2 if self.fused.bidirectional else 1
        if hx is not None:
            return hx if isinstance(hx, tuple) else (hx, None)
        h0 = x.new_zeros((m.num_layers * D, x.shape[1], m.hidden_size))
        return h0, (h0.clone() if self.cell == "lstm" else None)

    def _layers(self, x, lens, h0, c0):
        m, (T, B) = self.fused, x.shape[:2]
        D = 2 if m.bidirectional else 1
        valid = torch.from_numpy(np.arange(T)[:, None] < lens[None, :])
        rev, cols = reverse_index(lens, T), torch.arange(B)
        inp, h_n, c_n = x, [], []
        for layer in range(m.num_layers):
            outs = []
            for d in range(D):
                k = layer * D + d
                p = {n: getattr(m, f"{n}_l{layer}" + ("_reverse" if d else ""), None) for n in PARAM_NAMES}
                h, c = self._direction(k, p, inp if d == 0 else inp[rev, cols], valid, h0[k],
                                       None if c0 is None else c0[k])
                h_n.append(h)
                c_n.append(c)
                proc = torch.stack(self.steps_h[k])
                in_time = proc if d == 0 else proc[rev, cols]
                outs.append(torch.where(valid[:, :, None], in_time, torch.zeros_like(in_time)))
            inp = torch.cat(outs, dim=2)
        return inp, torch.stack(h_n), (torch.stack(c_n) if c0 is not None else None)

    def _direction(self, k, p, seen, valid, h, c):
        """One direction of one layer over its processing order; a sequence past its length keeps its state."""
        self.steps_h[k], self.steps_c[k] = [], []
        for t in range(seen.shape[0]):
            keep = valid[t][:, None]
            if self.cell == "lstm":  # c_t kept as its own tensor: its gradient is the total dL/dc_t
                c_new, o = lstm_cell(p, seen[t], h, c)
                c = torch.where(keep, c_new, c)
                self.steps_c[k].append(c)
                h_new = lstm_output(p, o, c)
            elif self.cell == "gru":
                h_new = gru_step(p, seen[t], h)
            else:
                h_new = rnn_step(p, seen[t], h, relu=self.fused.nonlinearity == "relu")
            h = torch.where(keep, h_new, h)
            self.steps_h[k].append(h)
        return h, c


def unrolled_step_grads(model, inputs, loss_fn, check):
    """The unrolled copy of the user model: its loss checked against the real one, then ``{k: (grad_h, grad_c)}``
    -- every step's total gradient (T, B, P), processing order, zeros past each sequence's length."""
    ref_model = copy.deepcopy(model)
    ref_model.rnn = unrolled = Unrolled(ref_model.rnn)
    ref_loss = loss_fn(run(ref_model, inputs))
    with torch.no_grad():
        check("unrolled loss vs fused", ref_loss, loss_fn(run(model, inputs)), TOL_REF)
    steps = [s for k in unrolled.steps_h for s in unrolled.steps_h[k] + unrolled.steps_c[k]]
    grads = iter(torch.autograd.grad(ref_loss, steps, allow_unused=True))
    T = len(unrolled.steps_h[0])
    valid = (np.arange(T)[:, None] < unrolled.lengths[None, :])[:, :, None]
    out = {}
    for k in unrolled.steps_h:
        stacked = []
        for states in (unrolled.steps_h[k], unrolled.steps_c[k]):
            gs = [next(grads) for _ in states]
            gs = [np.zeros(s.shape) if g is None else g.numpy() for g, s in zip(gs, states)]
            stacked.append(np.where(valid, np.stack(gs), 0.0) if gs else None)
        out[k] = tuple(stacked)
    return out, unrolled.lengths


# -- the checks ----------------------------------------------------------------------------------------------------
def captured_and_loaded(model, inputs, loss_fn, iteration, path):
    params = list(model.parameters())
    assert all(p.grad is None for p in params)
    cap = rp.capture(model, inputs, loss_fn, iteration=iteration)
    assert all(p.grad is None for p in params), "capture wrote into the parameters' .grad"
    cap.save(path)
    loaded = load_capture(path)
    assert loaded.names == cap.names == ("rnn",)
    assert (loaded.iteration, loaded.stage) == (iteration, "init" if iteration == 0 else "trained")
    return cap, loaded


def check_param_grads(check, model, inputs, loss_fn, trace):
    names, params = zip(*model.rnn.named_parameters())
    theirs = torch.autograd.grad(loss_fn(run(model, inputs)), list(params))
    assert set(trace.param_grads) == set(names)
    for name, g in zip(names, theirs):
        check(f"param_grads[{name}]", trace.param_grads[name], g)


def check_step_grads(check, trace, ref, lengths):
    assert len(trace.layers) == len(ref)
    D = 2 if trace.model.bidirectional else 1
    for k, lt in enumerate(trace.layers):
        assert (lt.layer, lt.direction) == (k // D, k % D), f"layer trace {k} is {lt.name}"
        np.testing.assert_array_equal(lt.seq_lengths, lengths)
        for what, ours, theirs in (("dL/dh_t", lt.grad_h, ref[k][0]), ("dL/dc_t", lt.grad_c, ref[k][1])):
            if theirs is None:
                assert ours is None
                continue
            check(f"{lt.name} {what} (processing order)", ours, theirs)
            time_ours, time_theirs = lt.in_time_order(ours), lt.in_time_order(theirs)
            norm_ours, norm_theirs = np.linalg.norm(time_ours, axis=2), np.linalg.norm(time_theirs, axis=2)
            check(f"{lt.name} ||{what}|| per (step, seq)", norm_ours, norm_theirs)
            check_pointwise(check, f"{lt.name} ||{what}|| per (step, seq), pointwise", norm_ours, norm_theirs)


def check_pointwise(check, name, ours, theirs):
    """``|ours - theirs| / theirs`` at every entry where ``theirs > 0`` (a vanishing gradient's tiny norms too)."""
    nonzero = theirs > 0
    assert nonzero.any()
    err = float(np.max(np.abs(ours - theirs)[nonzero] / theirs[nonzero]))
    assert err <= TOL, f"{check.case} {name}: pointwise relative error {err:.3e} > {TOL:.0e}"
    check.errors[name] = err


def report(check):
    check.report()
    groups = {"param grads": [n for n in check.errors if n.startswith("param_grads")],
              "per-step grads": [n for n in check.errors if "dL/d" in n]}
    for label, names in groups.items():
        print(f"[{check.case}] {label}: max relative error {max(check.errors[n] for n in names):.2e}")


@pytest.mark.parametrize("case", list(CASES))
def test_capture_replays_exactly(case, tmp_path):
    model, inputs, loss_fn, iteration = CASES[case]()
    check = Checker(case)
    cap, loaded = captured_and_loaded(model, inputs, loss_fn, iteration, tmp_path / f"{case}.npz")
    with torch.no_grad():
        check("capture loss_value vs torch", cap.loss_value, loss_fn(run(model, inputs)), TOL_REF)
    diag = rnndiag.analyze(loaded, keep_trace=True)
    assert (diag.input_source, diag.loss_source) == ("user", "user")
    assert diag.stage == ("init" if iteration == 0 else "trained")
    check_param_grads(check, model, inputs, loss_fn, diag.trace)
    ref, lengths = unrolled_step_grads(model, inputs, loss_fn, check)
    check_step_grads(check, diag.trace, ref, lengths)
    assert all(p.grad is None for p in model.parameters())
    report(check)


def test_capture_leaves_existing_grads_alone():
    model, inputs, loss_fn, _ = case_lm()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    rp.capture(model, inputs, loss_fn, iteration=3)
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, torch.full_like(p, 0.25)), name
