"""The label script of the forecast (benchmarks/forecast_labels.py): its sample spans what the issue asks, its
split holds out what it says, and a PyTorch run starts from rnndiag's initial weights."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
labels = pytest.importorskip("forecast_labels")


def test_the_sample_spans_the_space():
    configs = labels.all_configs()
    assert len(configs) >= 300
    assert configs == labels.all_configs()  # deterministic
    assert [c["config"] for c in configs] == list(range(len(configs)))
    assert {c["cell"] for c in configs} == {"rnn_tanh", "rnn_relu", "lstm", "gru"}
    assert {c["task"] for c in configs} == {"adding", "copy"}
    lens = {c["seq_len"] for c in configs}
    assert min(lens) == 10 and max(lens) == 500
    sizes = {c["hidden_size"] for c in configs}
    assert min(sizes) == 16 and max(sizes) == 128
    lrs = [c["lr"] for c in configs]
    assert max(lrs) / min(lrs) >= 100  # two decades
    gains = {c["gain"] for c in configs if c["gain"] is not None}
    assert min(gains) < 1 < max(gains)  # both sides of the order-chaos line
    assert {c["forget_bias"] for c in configs if c["cell"] == "lstm"} >= {None, 0.0, 1.0, 3.0}
    assert all(labels.estimated_seconds(c) <= labels.MAX_RUN_SECONDS for c in configs)
    keys = [tuple(sorted((k, str(v)) for k, v in c.items() if k != "config")) for c in configs]
    assert len(set(keys)) == len(keys)  # no configuration twice


def test_the_extension_adds_tuning_configurations_only():
    first = labels.sample_configs()
    extension = labels.sample_extension()
    assert labels.all_configs()[:len(first)] == first  # the first sample's ids are unchanged
    assert all(not any(c[k] == v for k, v in labels.HELD_OUT.items()) for c in extension)
    assert {labels.split({**c, "seed": s}) for c in extension for s in labels.SEEDS} == {"tune", "seed"}


def test_the_split_holds_out_seeds_and_whole_slices():
    configs = labels.all_configs()
    runs = [{**c, "seed": s} for c in configs for s in labels.SEEDS]
    tune = [r for r in runs if labels.split(r) == "tune"]
    assert all(r["seed"] == labels.SEEDS[0] for r in tune)
    for key, value in labels.HELD_OUT.items():
        assert not any(r[key] == value for r in tune)
        assert any(r[key] == value for r in runs)
    assert len(runs) - len(tune) >= 150


def test_a_label_run_starts_from_rnndiag_weights_and_trains_in_torch():
    torch = pytest.importorskip("torch")
    from rnndiag import init_model

    c = {"cell": "lstm", "init": "orthogonal", "gain": 1.0, "forget_bias": 1.0, "hidden_size": 8, "task": "adding",
         "seq_len": 10, "optimizer": "adam", "lr": 1e-2, "clip": 1.0, "budget": 40}
    module = labels.torch_model(torch, c, seed=3)
    ref = init_model("lstm", 2, 8, init="orthogonal", gain=1.0, forget_bias=1.0, seed=3)
    for k, v in module.state_dict().items():
        np.testing.assert_allclose(v.numpy(), ref.params[k].astype(np.float32))
    x, y = labels.adding_batch(torch, 10, 5, torch.Generator().manual_seed(0))
    assert x.shape == (10, 5, 2) and torch.equal(x[:, :, 1].sum(0), torch.full((5,), 2.0))
    assert torch.allclose(y, (x[:, :, 0] * x[:, :, 1]).sum(0))
    x, y = labels.copy_batch(torch, 10, 5, torch.Generator().manual_seed(0))
    assert x.shape == (30, 5, 10) and y.shape == (10, 5)
    assert torch.equal(x[:10].argmax(-1) - 1, y) and bool((x[19].argmax(-1) == 9).all())


def test_the_committed_labels_are_the_sampled_configurations():
    """Every labelled run's configuration is the sampler's under its id: a change to the sampling code that moved
    a configuration would silently relabel it."""
    import json

    configs = labels.all_configs()
    runs = [json.loads(line) for line in (BENCH / "forecast_labels.jsonl").open()]
    assert {(r["config"], r["seed"]) for r in runs} == {(c["config"], s) for c in configs for s in labels.SEEDS}
    for r in runs:
        assert {k: r[k] for k in configs[r["config"]]} == configs[r["config"]], r["config"]
        assert r["split"] == labels.split(r)


def test_the_shipped_coefficients_reproduce_the_published_scores():
    """The committed labels, measurements and COEFFICIENTS give the held-out scores in forecast_scores.json (and
    the README): refitting on the tuning part gives the shipped table back."""
    import json

    fit = pytest.importorskip("forecast_fit")
    from rnndiag import forecast as fc

    runs = fit.load_joined()
    assert len(runs) == 2 * len(labels.all_configs())
    published = json.loads((BENCH / "forecast_scores.json").read_text())
    scored = fit.score(runs)
    for key in ("accuracy", "balanced_accuracy", "brier", "coverage"):
        assert scored["forecast"][key] == pytest.approx(published["forecast"][key], abs=1e-6), key
    assert 0.35 <= scored["held_out"]["train_share"] <= 0.65 and scored["held_out"]["runs"] >= 150
    refit = fit.fit(runs)
    assert refit.pop("observed") == fc.COEFFICIENTS["observed"]
    for method, model in refit.items():
        for name, c in model["coefficients"].items():
            assert c == pytest.approx(fc.COEFFICIENTS[method]["coefficients"][name], rel=1e-4, abs=1e-6), name
