"""``rnndiag.pytorch.watch`` on live PyTorch loops, the run folder it writes, and ``rnndiag report`` reading it:
the schedule, captures that replay the loop's own gradients exactly, the first non-finite gradient caught with its
time step named, GradScaler steps recorded as skipped, an append-only folder read while incomplete, and every bad
run folder refused in one line."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from _cli_helpers import invoke, result_stderr

import rnndiag
from rnndiag.run import analyze_run, read_iterations, run_metrics

torch = pytest.importorskip("torch", reason="watch needs torch")
nn = torch.nn
import rnndiag.pytorch  # noqa: E402  (after the skip: it needs torch)
from rnndiag.pytorch.watch import scheduled  # noqa: E402

pytestmark = pytest.mark.torch


class LM(nn.Module):
    def __init__(self, vocab=12, dtype=torch.float64):
        super().__init__()
        self.emb = nn.Embedding(vocab, 6)
        self.rnn = nn.LSTM(6, 10, num_layers=2, batch_first=True)
        self.out = nn.Linear(10, vocab)
        self.to(dtype)

    def forward(self, x):
        return self.out(self.rnn(self.emb(x))[0])


def train_lm(log_dir, steps=12, every=5, **kw):
    """A few Adam steps with watch; returns the watch and the .grad of the LSTM at every iteration (before the
    step), to compare the captures with."""
    torch.manual_seed(0)
    model = LM()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    seen = []
    with rnndiag.pytorch.watch(model, log_dir, every=every, **kw) as w:
        for _ in range(steps):
            x = torch.randint(0, 12, (3, 15))
            loss = nn.functional.cross_entropy(model(x).reshape(-1, 12), torch.roll(x, 2, 1).reshape(-1))
            opt.zero_grad()
            loss.backward()
            seen.append({k: p.grad.detach().clone().numpy() for k, p in model.rnn.named_parameters()})
            opt.step()
    return w, seen


def test_schedule():
    assert [i for i in range(0, 301) if scheduled(i, 100, False)] == [0, 100, 200, 300]
    log = [i for i in range(0, 101) if scheduled(i, 100, True)]
    assert log[:8] == [0, 1, 2, 3, 4, 6, 8, 11] and log[-1] == 100 and len(log) < 20


def test_captures_replay_the_loops_own_gradients(tmp_path):
    w, seen = train_lm(tmp_path / "run")
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "captures").glob("*.npz")) == \
        ["it00000000.npz", "it00000005.npz", "it00000010.npz"]
    lines = read_iterations(run).lines
    assert [line["iteration"] for line in lines] == list(range(12))
    for line in lines:
        norm = math.sqrt(sum(float((g ** 2).sum()) for g in seen[line["iteration"]].values()))
        assert line["grad_norm"]["rnn"] == pytest.approx(norm, rel=1e-12)
    for it in (0, 5, 10):
        cap = rnndiag.load_capture(run / "captures" / f"it{it:08d}.npz")
        assert cap.iteration == it and cap.stage == ("init" if it == 0 else "trained")
        d = rnndiag.analyze(cap, keep_trace=True)
        for name, g in seen[it].items():
            err = np.abs(d.trace.param_grads[name] - g).max() / np.abs(g).max()
            assert err < 1e-10, (it, name, err)
    later = rnndiag.load_capture(run / "captures" / "it00000010.npz")
    assert len(later.module_grad_norm_history["rnn"]) == 10  # the spike rule's history: the norms before it


def test_first_nonfinite_gradient_is_caught_with_its_timestep(tmp_path):
    torch.manual_seed(0)
    rnn, head = nn.RNN(4, 64), nn.Linear(64, 1)
    model = nn.ModuleDict({"rnn": rnn, "head": head})
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def forward(x):
        return head(rnn(x)[0][-1])

    model.forward = forward  # an nn.Module whose forward is the loop's function
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with rnndiag.pytorch.watch(model, tmp_path / "run", every=100, optimizer=opt):
            for it in range(6):
                if it == 3:  # the recurrent weights jump: the backward overflows in float32, the loss does not
                    with torch.no_grad():
                        q, _ = torch.linalg.qr(torch.randn(64, 64))
                        rnn.weight_hh_l0.copy_(5.0 * q)
                loss = model(torch.randn(300, 8, 4) * 0.1).square().mean()
                opt.zero_grad()
                loss.backward()
                if not all(torch.isfinite(p.grad).all() for p in model.parameters()):
                    break
                opt.step()
    assert it == 3 and torch.isfinite(loss)
    lines = read_iterations(tmp_path / "run").lines
    event = lines[-1]["nonfinite"]
    assert lines[-1]["iteration"] == 3 and lines[-1]["capture"] == "captures/it00000003.npz"
    assert event["first_parameter"].startswith("rnn.") and event["module"] == "rnn"
    assert event["kind"] == "gradient" and event["layer"] == 0 and 0 < event["step"] < 299
    messages = [str(c.message) for c in caught if issubclass(c.category, RuntimeWarning)]
    assert any("iteration 3" in m and f"time step {event['step']}" in m for m in messages), messages
    cap = rnndiag.load_capture(tmp_path / "run" / lines[-1]["capture"])
    assert rnndiag.analyze(cap).verdict == "exploding"  # the float64 replay: the gradient grows going back
    metrics = run_metrics(analyze_run(tmp_path / "run"))
    assert metrics["nonfinite"][0]["step"] == event["step"]


def test_gradscaler_steps_are_skipped_not_divergence(tmp_path):
    torch.manual_seed(0)
    model = LM(dtype=torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127, growth_interval=1000)  # overflows at first
    with rnndiag.pytorch.watch(model, tmp_path / "run", every=100, scaler=scaler, optimizer=opt):
        for _ in range(200):
            x = torch.randint(0, 12, (3, 15))
            loss = nn.functional.cross_entropy(model(x).reshape(-1, 12), x.reshape(-1), reduction="sum")
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if scaler.get_scale() < 2.0 ** 110:
                break
    lines = read_iterations(tmp_path / "run").lines
    skipped = [line for line in lines if line["skipped"]]
    assert skipped and all(line["nonfinite"] is None for line in lines)
    finite = [line for line in lines if not line["skipped"]]
    assert finite and all(line["grad_norm"]["rnn"] < 1e3 for line in finite)  # divided by the scale
    assert lines[0]["capture"] is None or lines[0]["skipped"]


def test_resume_and_refusal(tmp_path):
    train_lm(tmp_path / "run", steps=3)
    with pytest.raises(FileExistsError, match="already holds an rnndiag run"):
        rnndiag.pytorch.watch(LM(), tmp_path / "run")
    w, _ = train_lm(tmp_path / "run", steps=3, resume=True)
    assert [line["iteration"] for line in read_iterations(tmp_path / "run").lines] == [0, 1, 2, 3, 4, 5]


def test_report_reads_a_run_still_being_written(tmp_path):
    train_lm(tmp_path / "run", steps=11)
    run = tmp_path / "run"
    (run / "captures" / ".it00000015.npz.abc.tmp").write_bytes(b"PK\x03\x04half")  # a capture being written
    good = (run / "captures" / "it00000010.npz").read_bytes()
    (run / "captures" / "it00000013.npz").write_bytes(good[: len(good) // 3])  # a torn copy
    with open(run / "iterations.jsonl", "a") as fh:
        fh.write('{"iteration": 11, "grad_n')  # a line being written
    ra = analyze_run(run)
    assert [a.iteration for a in ra.analyses] == [0, 5, 10]
    assert len(ra.skipped) == 2 and any("half-written" in s for s in ra.skipped)
    assert any("it00000013.npz" in s and "truncated" in s for s in ra.skipped)
    assert ra.log.partial_last and [line["iteration"] for line in ra.log.lines][-1] == 10
    assert all(not a.cached for a in ra.analyses)
    again = analyze_run(run)
    assert all(a.cached for a in again.analyses)  # cached beside each capture
    assert [a.metrics for a in again.analyses] == [a.metrics for a in ra.analyses]


def test_report_cli_json(tmp_path):
    train_lm(tmp_path / "run", steps=6)
    r = invoke(["report", tmp_path / "run", "--format", "none", "--json", "-", "--quiet"])
    assert r.exit_code == 0, result_stderr(r)
    m = json.loads(r.stdout)
    assert m["kind"] == "run report" and m["looked_at"].startswith("a watched PyTorch training run")
    assert [c["iteration"] for c in m["captures"]] == [0, 5]
    assert {(s["layer"], s["direction"]) for s in m["series"]} == {(0, "forward"), (1, "forward")}
    assert len(m["series"][0]["log10_grad_norm"]) == 2 and len(m["series"][0]["log10_grad_norm"][0]) == 15
    assert m["iterations"]["count"] == 6 and m["latest"]["rnn"]["iteration"] == 5


def _newer(run):
    header = json.loads((run / "run.json").read_text())
    header["format"] = 99
    (run / "run.json").write_text(json.dumps(header))
    return run


@pytest.mark.parametrize("case, fragment", [
    ("missing", "does not exist"),
    ("not a run", "is not an rnndiag run"),
    ("newer", "newer than this rnndiag reads"),
    ("a file", "is not a folder"),
])
def test_bad_run_folders_are_one_line(tmp_path, case, fragment):
    if case == "newer":
        train_lm(tmp_path / "run", steps=1)
        target = _newer(tmp_path / "run")
    elif case == "not a run":
        target = tmp_path
    elif case == "a file":
        target = tmp_path / "x.npz"
        target.write_bytes(b"")
    else:
        target = tmp_path / "nope"
    r = invoke(["report", target, "--format", "none"])
    err = result_stderr(r)
    assert r.exit_code == 2 and fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_watch_leaves_the_model_and_its_gradients_as_they_would_be(tmp_path):
    torch.manual_seed(0)
    plain = LM()
    watched = LM()
    watched.load_state_dict(plain.state_dict())
    x = torch.randint(0, 12, (3, 15))
    for model, log in ((plain, None), (watched, tmp_path / "run")):
        w = rnndiag.pytorch.watch(model, log, every=1) if log else None
        loss = model(x).sum()
        loss.backward()
        if w:
            rnndiag.pytorch.unwatch(w)
    for (k, a), (_, b) in zip(plain.named_parameters(), watched.named_parameters()):
        assert torch.equal(a.grad, b.grad), k
    assert not watched.rnn._forward_hooks and not watched._forward_pre_hooks


def test_watch_frees_each_iteration(tmp_path):
    """Hooks on an output's grad_fn that refer back to the output form a cycle through autograd's C++ objects:
    each iteration's records must be released, or every iteration's graph leaks."""
    import gc

    from rnndiag.pytorch.recorder import RecordedCall

    train_lm(tmp_path / "run", steps=6)
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o) is RecordedCall]
