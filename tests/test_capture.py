"""Captures of a user's PyTorch model: what the recorder keeps, the capture file (format, atomic write, every bad
file refused in one line), ``rnndiag analyze --capture`` and a diverging tanh run read EXPLODING before it
overflows. (Exactness against autograd: tests/test_capture_exact.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
from _cli_helpers import invoke, result_stderr

import rnndiag
from rnndiag.capture import CAPTURE_FORMAT, HEADER_KEY, CaptureError, load_capture

torch = pytest.importorskip("torch", reason="capture needs torch")
nn = torch.nn
import rnndiag.pytorch  # noqa: E402  (after the skip: it needs torch)

pytestmark = pytest.mark.torch


class Tagger(nn.Module):
    """An encoder GRU and a decoder LSTM: two recurrent modules."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential()
        self.encoder.rnn = nn.GRU(3, 6, batch_first=True)
        self.decoder = nn.LSTM(6, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        h, _ = self.encoder.rnn(x)
        out, _ = self.decoder(h.transpose(0, 1))
        return self.head(out[-1])


def tagger_capture(iteration=3):
    torch.manual_seed(0)
    model = Tagger().double()
    x = torch.randn(4, 12, 3, dtype=torch.float64)
    y = torch.randn(4, 2, dtype=torch.float64)
    return rnndiag.pytorch.capture(model, x, lambda out: ((out - y) ** 2).mean(), iteration=iteration)


def test_capture_records_every_module_and_leaves_grad_alone():
    torch.manual_seed(0)
    model = Tagger().double()
    x = torch.randn(4, 12, 3, dtype=torch.float64)
    cap = rnndiag.pytorch.capture(model, x, lambda out: out.sum(), iteration=0)
    assert cap.names == ("encoder.rnn", "decoder") and cap.stage == "init" and cap.iteration == 0
    assert all(p.grad is None for p in model.parameters())
    enc, dec = cap.modules
    assert enc.batch_first and enc.x.shape == (12, 4, 3) and np.allclose(enc.x, x.transpose(0, 1).numpy())
    assert dec.cell == "lstm" and dec.grad_output.shape == (12, 4, 5)
    assert not dec.grad_output[:-1].any() and dec.grad_output[-1].any()  # the loss reads the last step only
    assert enc.grad_h_n is None  # h_n of the encoder is unused


def test_a_module_called_twice_is_recorded_per_call():
    rnn = nn.RNN(2, 4).double()
    x = torch.randn(5, 3, 2, dtype=torch.float64)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnn

        def forward(self, x):
            return self.rnn(x)[0].sum() + self.rnn(x * 2)[0].sum()

    cap = rnndiag.pytorch.capture(Twice(), x, lambda loss: loss)
    assert cap.names == ("rnn", "rnn#1") and cap.stage == "unknown"
    assert np.allclose(cap.module("rnn#1").x, 2 * x.numpy())


def test_save_load_round_trip_is_atomic_and_never_overwrites(tmp_path):
    cap = tagger_capture()
    p = cap.save(tmp_path / "c.npz")
    assert [f.name for f in tmp_path.iterdir()] == ["c.npz"]  # no temporary file left
    again = load_capture(p)
    assert again.names == cap.names and again.iteration == 3 and again.stage == "trained"
    for a, b in zip(cap.modules, again.modules):
        assert np.array_equal(a.x, b.x) and np.array_equal(a.grad_output, b.grad_output)
        assert a.params.keys() == b.params.keys()
    with pytest.raises(FileExistsError, match="exists"):
        cap.save(p)
    with np.load(p, allow_pickle=False) as z:  # no pickle anywhere
        header = json.loads(z[HEADER_KEY].tobytes())
    assert header["format"] == CAPTURE_FORMAT and header["modules"][1]["architecture"]["cell"] == "lstm"
    assert header["rnndiag_version"] == rnndiag.__version__ and header["torch_version"] == torch.__version__


def _rewrite_header(src, dst, **changes):
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays[HEADER_KEY].tobytes())
    header.update(changes)
    arrays[HEADER_KEY] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(dst, **arrays)
    return dst


@pytest.fixture
def capture_file(tmp_path):
    return tagger_capture().save(tmp_path / "cap.npz")


def bad_files(capture_file, tmp_path):
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(capture_file.read_bytes()[: capture_file.stat().st_size // 2])
    weights = rnndiag.save_weights(rnndiag.init_model("gru", 2, 4, seed=0), tmp_path / "weights.npz")
    return {
        "newer": (_rewrite_header(capture_file, tmp_path / "newer.npz", format=CAPTURE_FORMAT + 1),
                  "newer than this rnndiag reads"),
        "older": (_rewrite_header(capture_file, tmp_path / "older.npz", format=0), "no longer reads"),
        "truncated": (truncated, "truncated or corrupt"),
        "weights file": (weights, "is not an rnndiag capture"),
        "no modules": (_rewrite_header(capture_file, tmp_path / "empty.npz", modules=[]), "holds no recurrent module"),
        "missing": (tmp_path / "nope.npz", "does not exist"),
    }


@pytest.mark.parametrize("case", ["newer", "older", "truncated", "weights file", "no modules", "missing"])
def test_bad_capture_files_are_one_line_with_the_fix(capture_file, tmp_path, case):
    path, fragment = bad_files(capture_file, tmp_path)[case]
    with pytest.raises((CaptureError, FileNotFoundError, ValueError), match=fragment) as info:
        load_capture(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    result = invoke(["analyze", "--capture", path, "--format", "none"])
    err = result_stderr(result)
    assert result.exit_code == 2, err
    assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_module_choice_on_the_command_line(capture_file, tmp_path):
    several = invoke(["analyze", "--capture", capture_file, "--format", "none"])
    assert several.exit_code == 2 and "encoder.rnn" in result_stderr(several) and "decoder" in result_stderr(several)
    assert "--module" in result_stderr(several)
    none = invoke(["analyze", "--capture", capture_file, "--module", "attention", "--format", "none"])
    assert none.exit_code == 2 and "names none of the recurrent modules" in result_stderr(none)
    ok = invoke(["analyze", "--capture", capture_file, "--module", "rnn", "--format", "none", "--json", "-",
                 "--quiet"])
    assert ok.exit_code == 0, result_stderr(ok)
    metrics = json.loads(ok.stdout)
    assert metrics["cell"] == "gru" and metrics["input_source"] == "user" and metrics["loss_source"] == "user"
    assert metrics["stage"] == "trained" and "--capture" in metrics["command"]
    assert "captured" in metrics["loss_detail"] and "iteration 3" in metrics["input"]
    assert metrics["capture"]["module"] == "encoder.rnn" and metrics["capture"]["iteration"] == 3
    assert metrics["capture"]["modules"] == ["encoder.rnn", "decoder"] and metrics["capture"]["batch_first"]


def test_capture_excludes_the_options_it_decides(capture_file):
    for extra in (["--task", "adding"], ["--input", "x.npy"], ["--hidden-size", "8"], ["--loss", "all"]):
        r = invoke(["analyze", "--capture", capture_file, *extra, "--format", "none"])
        assert r.exit_code == 2 and "cannot be combined with --capture" in result_stderr(r), extra


def test_capture_of_a_model_without_recurrent_modules_is_refused():
    with pytest.raises(CaptureError, match=r"contains no nn\.RNN"):
        rnndiag.pytorch.capture(nn.Linear(2, 2), torch.randn(3, 2), lambda out: out.sum())


def test_terminal_summary_starts_with_what_it_looked_at(capture_file):
    r = invoke(["analyze", "--capture", capture_file, "--module", "decoder", "--format", "none"])
    assert r.exit_code == 0, result_stderr(r)
    first = r.stdout.splitlines()[0]
    assert first.startswith("looked at: trained weights") and "the user's input" in r.stdout


def test_stage_option_for_weights(tmp_path):
    p = rnndiag.save_weights(rnndiag.init_model("lstm", 1, 8, seed=0), tmp_path / "w.npz")
    r = invoke(["analyze", "--weights", p, "--task", "noise", "--seq-len", "30", "--batch-size", "4",
                "--stage", "trained", "--format", "none", "--json", "-", "--quiet"])
    assert r.exit_code == 0, result_stderr(r)
    m = json.loads(r.stdout)
    assert m["stage"] == "trained" and m["input_source"] == "synthetic" and m["warnings"]
    assert "--stage trained" in m["command"]


def diverging_run(steps=25):
    """A tanh RNN trained by plain SGD (float32, as users train) at a learning rate that makes it diverge:
    (iteration, loss, global gradient norm of the recurrent module as autograd saw it, diagnosis of a capture)."""
    torch.manual_seed(0)
    rnn, head = nn.RNN(2, 32, batch_first=True), nn.Linear(32, 1)
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(2.0)
    opt = torch.optim.SGD([*rnn.parameters(), *head.parameters()], lr=0.05)
    history, seen = [], []
    for it in range(steps):
        x = torch.randn(16, 50, 2)
        y = x[:, :, 0].sum(1, keepdim=True)

        def loss_fn(out, y=y):
            return ((head(out[0][:, -1]) - y) ** 2).mean()

        loss = loss_fn(rnn(x))
        cap = rnndiag.pytorch.capture(rnn, x, loss_fn, iteration=it, grad_norm_history=history[-20:])
        opt.zero_grad()
        loss.backward()
        norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in rnn.parameters())))
        seen.append((it, float(loss.detach()), norm, rnndiag.analyze(cap)))
        history.append(norm)
        opt.step()
    return seen


def test_a_diverging_tanh_run_reads_exploding_before_it_overflows():
    seen = diverging_run()
    start = seen[0][1]
    blown = next(it for it, loss, _, _ in seen if loss > 100 * start)  # the loss has blown up by then
    large = [(it, norm, d) for it, _, norm, d in seen if norm > 100]
    assert large and large[0][0] < blown, "no large gradient before the blow-up; make the run diverge harder"
    for it, norm, d in large:
        assert d.verdict == "exploding", (it, norm, d.verdict, d.verdict_detail)
        assert d.global_grad_norm == pytest.approx(norm, rel=1e-4)  # float32 autograd vs the float64 replay
        assert d.nonfinite is None  # caught by the rules while everything was still finite


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(3, 4)
        self.drop = nn.Dropout(0.5)
        self.norm = nn.BatchNorm1d(4)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.norm(self.drop(out[-1]))


def test_capture_works_under_no_grad_and_restores_rng_and_buffers():
    torch.manual_seed(0)
    model = Encoder().train()
    x = torch.randn(6, 5, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with torch.no_grad():
        cap = rnndiag.pytorch.capture(model, x, lambda out: out.sum())
    assert torch.equal(torch.rand(3), expected)  # the random stream goes on as if nothing had happened
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics put back
    assert cap.modules[0].receives_gradient


def test_a_frozen_module_is_captured_without_touching_its_flags():
    torch.manual_seed(0)
    rnn = nn.GRU(3, 4).double().requires_grad_(False)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    cap = rnndiag.pytorch.capture(rnn, x, lambda out: out[0][-1].square().sum())
    assert cap.modules[0].grad_output[-1].any()
    assert not any(p.requires_grad for p in rnn.parameters())
    diag = rnndiag.analyze(cap, keep_trace=True)  # the replay gives the gradient autograd would have given
    ref = rnn.requires_grad_(True)
    g = torch.autograd.grad(ref(x)[0][-1].square().sum(), ref.weight_hh_l0)[0]
    assert np.allclose(diag.trace.param_grads["weight_hh_l0"], g.numpy(), rtol=1e-10, atol=1e-14)


def test_a_module_the_loss_does_not_use_is_refused_when_analysed():
    m = Tagger().double()
    x = torch.randn(4, 12, 3, dtype=torch.float64)
    cap = rnndiag.pytorch.capture(m, x, lambda out: m.encoder.rnn(x)[0].sum() + 0 * out.sum())
    with pytest.raises(CaptureError, match="sends no gradient to 'decoder'") as info:
        rnndiag.analyze(cap, module="decoder")
    assert "choose another --module: encoder.rnn" in str(info.value)


def test_an_output_changed_in_place_is_refused():
    rnn = nn.RNN(2, 3)

    def loss_fn(out):
        out[0].mul_(2)
        return out[0].sum()

    with pytest.raises(CaptureError, match="modified in place"):
        rnndiag.pytorch.capture(rnn, torch.randn(4, 2, 2), loss_fn)


def test_recurrent_modules_run_without_autograd_are_named():
    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(2, 3)
            self.lin = nn.Linear(2, 1)

        def forward(self, x):
            with torch.no_grad():
                h = self.rnn(x)[0]
            return self.lin(x).sum() + h.sum()

    with pytest.raises(CaptureError, match="ran without autograd"):
        rnndiag.pytorch.capture(Frozen(), torch.randn(4, 2, 2), lambda loss: loss)


def test_bad_capture_arguments_are_one_line():
    rnn = nn.RNN(2, 3)
    x = torch.randn(4, 2, 2)
    with pytest.raises(ValueError, match="grad_norm_history must hold finite"):
        rnndiag.pytorch.capture(rnn, x, lambda out: out[0].sum(), grad_norm_history=[1.0, float("inf")])
    with pytest.raises(ValueError, match="iteration must be a non-negative integer"):
        rnndiag.pytorch.capture(rnn, x, lambda out: out[0].sum(), iteration=-1)
    assert rnndiag.pytorch.capture(rnn, x, lambda out: out[0].sum(), iteration=np.int64(3)).iteration == 3
    with pytest.raises(CaptureError, match="scalar"):
        rnndiag.pytorch.capture(rnn, x, lambda out: out[0])
    cap = rnndiag.pytorch.capture(rnn, x, lambda out: out[0].sum())
    with pytest.raises(TypeError, match="do not pass x"):
        rnndiag.analyze(cap, np.zeros((4, 2, 2)))


def test_a_torch_file_given_as_capture_points_to_weights(tmp_path):
    p = tmp_path / "w.pt"
    torch.save(nn.RNN(2, 3).state_dict(), p)
    r = invoke(["analyze", "--capture", p, "--format", "none"])
    assert r.exit_code == 2 and "weights go to --weights" in result_stderr(r)


def test_a_step_by_step_loop_is_said_not_to_be_replayed_across_calls():
    cell = nn.GRU(2, 3).double()
    x = torch.randn(5, 1, 2, dtype=torch.float64)

    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = cell

        def forward(self, x):
            h, outs = None, []
            for t in range(x.shape[0]):
                out, h = self.cell(x[t : t + 1], h)
                outs.append(out)
            return torch.cat(outs)

    cap = rnndiag.pytorch.capture(Loop(), x, lambda out: out.sum())
    assert cap.names == ("cell", "cell#1", "cell#2", "cell#3", "cell#4")
    assert not cap.modules[0].chained and all(m.chained for m in cap.modules[1:])
    d = rnndiag.analyze(cap, module="cell#2")
    assert any("step by step" in n for n in d.notes)
