"""Loading what people save: flat state_dicts of bidirectional and projected LSTMs, whole models, training
checkpoints (``model``, ``model_state_dict``, ``state_dict``, Lightning's ``.ckpt``), DataParallel's prefix; the
recurrent module found by its keys, and one line naming the fix for every file that cannot be used.

Torch files are written by real ``torch.nn`` modules and ``torch.save``; the Lightning layout is built by hand.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re

import numpy as np
import pytest
from _cli_helpers import assert_one_line_error, invoke

import rnndiag
from rnndiag import load_weights, model_from_state_dict
from rnndiag.inputs import load_input
from rnndiag.weights import RecurrentModule, WeightsFileError, find_recurrent_modules

# what analyze needs with --weights to run small and fast
RUN = ["--task", "noise", "--seq-len", "8", "--batch-size", "2", "--format", "none", "--json", "-", "--quiet"]


def _torch():
    return pytest.importorskip("torch", reason="torch is not installed: .pt files cannot be tested")


def _one_line(info, path=None) -> str:
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg, msg
    if path is not None:
        assert str(path) in msg, msg
    return msg


def _assert_params_equal(model, state_dict, prefix=""):
    """Every parameter of ``model`` is the tensor of the same name, value for value (float32 stays float32)."""
    assert set(model.params) == {k[len(prefix):] for k in state_dict if k.startswith(prefix)
                                 and "." not in k[len(prefix):]}
    for k, v in model.params.items():
        expected = state_dict[prefix + k].detach().numpy()
        assert v.dtype == expected.dtype, k
        np.testing.assert_array_equal(v, expected, err_msg=k)


def _lstm_net(torch, *, hidden=4, layers=1):
    """Embedding -> LSTM -> Linear, as a language model saves it (``emb.*``, ``rnn.*``, ``head.*``)."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 3)
            self.rnn = torch.nn.LSTM(3, hidden, num_layers=layers, batch_first=True)
            self.head = torch.nn.Linear(hidden, 10)

    torch.manual_seed(0)
    return Net()


def _pickled_net(torch):
    """A whole model as ``torch.save(model)`` pickles it (classes a test module can define cannot be pickled)."""
    return torch.nn.Sequential(torch.nn.Embedding(10, 3), torch.nn.LSTM(3, 4), torch.nn.Linear(4, 10))


def _lightning(state_dict, **hyper_parameters) -> dict:
    """A checkpoint laid out as PyTorch Lightning saves one (its module's attributes prefix every key)."""
    return {"epoch": 1, "global_step": 10, "pytorch-lightning_version": "2.4.0",
            "state_dict": {f"model.{k}": v for k, v in state_dict.items()}, "loops": {}, "callbacks": {},
            "optimizer_states": [], "lr_schedulers": [], "hyper_parameters": hyper_parameters}


# -- flat state_dicts of every architecture ------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
def test_bidirectional_lstm_state_dict(tmp_path, suffix):
    torch = _torch()
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    torch.save(lstm.state_dict(), tmp_path / f"w{suffix}")
    model = load_weights(tmp_path / f"w{suffix}")
    assert (model.cell, model.input_size, model.hidden_size, model.num_layers) == ("lstm", 3, 5, 2)
    assert model.bidirectional and model.proj_size == 0 and model.source_dtype is None
    assert model.params["weight_ih_l1_reverse"].shape == (20, 10)  # layer 1 reads both directions of layer 0
    _assert_params_equal(model, lstm.state_dict())
    assert model.init == f"loaded from w{suffix}"


def test_lstm_with_proj_size(tmp_path):
    torch = _torch()
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 6, num_layers=2, proj_size=2)
    torch.save(lstm.state_dict(), tmp_path / "proj.pt")
    model = load_weights(tmp_path / "proj.pt")
    assert (model.cell, model.hidden_size, model.proj_size, model.bidirectional) == ("lstm", 6, 2, False)
    assert model.params["weight_hh_l0"].shape == (24, 2) and model.params["weight_ih_l1"].shape == (24, 2)
    np.testing.assert_array_equal(model.projection(1), lstm.weight_hr_l1.detach().numpy())
    _assert_params_equal(model, lstm.state_dict())

    both = torch.nn.LSTM(3, 6, num_layers=2, proj_size=2, bidirectional=True)
    model = model_from_state_dict(both.state_dict())
    assert (model.proj_size, model.bidirectional, model.params["weight_ih_l1"].shape) == (2, True, (24, 4))
    _assert_params_equal(model, both.state_dict())


@pytest.mark.parametrize("bias", [True, False])
def test_gru_state_dict(tmp_path, bias):
    torch = _torch()
    torch.manual_seed(0)
    gru = torch.nn.GRU(3, 4, num_layers=3, bias=bias)
    torch.save(gru.state_dict(), tmp_path / "gru.pt")
    model = load_weights(tmp_path / "gru.pt")
    assert (model.cell, model.num_layers, model.bias, model.bidirectional) == ("gru", 3, bias, False)
    _assert_params_equal(model, gru.state_dict())


def test_npz_of_a_bidirectional_state_dict(tmp_path):
    torch = _torch()
    torch.manual_seed(0)
    gru = torch.nn.GRU(2, 3, num_layers=2, bidirectional=True).double()
    np.savez(tmp_path / "bi.npz", **{k: v.detach().numpy() for k, v in gru.state_dict().items()})
    model = load_weights(tmp_path / "bi.npz")
    assert (model.cell, model.bidirectional, model.num_layers, model.dtype) == ("gru", True, 2, np.float64)
    _assert_params_equal(model, gru.state_dict())
    # and saved again by rnndiag, it comes back the same
    again = load_weights(rnndiag.save_weights(model, tmp_path / "again.npz"))
    assert again.bidirectional and all(np.array_equal(again.params[k], v) for k, v in model.params.items())


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_precision_is_widened_and_named(tmp_path, half):
    torch = _torch()
    lstm = torch.nn.LSTM(2, 3, bidirectional=True).to(getattr(torch, half))
    torch.save(lstm.state_dict(), tmp_path / "half.pt")
    model = load_weights(tmp_path / "half.pt")
    assert (model.dtype, model.source_dtype) == (np.float32, half)
    np.testing.assert_array_equal(model.params["weight_hh_l0_reverse"],
                                  lstm.weight_hh_l0_reverse.detach().float().numpy())
    assert f"stored as {half}" in model.describe()
    wide = load_weights(tmp_path / "half.pt", dtype=np.float64)
    assert (wide.dtype, wide.source_dtype) == (np.float64, half)
    assert load_weights(tmp_path / "half.pt", dtype=np.float32).source_dtype == half


def test_npz_float16_names_its_source_dtype(tmp_path):
    model = rnndiag.init_model("gru", 2, 3, seed=0)
    np.savez(tmp_path / "h.npz", **{k: v.astype(np.float16) for k, v in model.params.items()})
    loaded = load_weights(tmp_path / "h.npz")
    assert (loaded.dtype, loaded.source_dtype) == (np.float32, "float16")


# -- whole models and checkpoints ------------------------------------------------------------------------------
def test_whole_model_state_dict_needs_no_prefix(tmp_path):
    torch = _torch()
    net = _lstm_net(torch, layers=2)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    model = load_weights(tmp_path / "net.pt")
    assert (model.cell, model.input_size, model.hidden_size, model.num_layers) == ("lstm", 3, 4, 2)
    assert model.init == "loaded from net.pt (rnn)"
    _assert_params_equal(model, net.state_dict(), "rnn.")
    assert model_from_state_dict(net.state_dict()).init == "state_dict (rnn)"


def _checkpoints(torch):
    """name -> (what torch.save writes, the prefix of the recurrent module's keys in its state_dict)."""
    net = _lstm_net(torch)
    sd = net.state_dict()
    opt = torch.optim.Adam(net.parameters())
    return net, {
        "flat": (net.rnn.state_dict(), ""),
        "model": ({"model": sd}, "rnn."),
        "model_state_dict": ({"model_state_dict": sd, "optimizer_state_dict": opt.state_dict(), "epoch": 3}, "rnn."),
        "state_dict": ({"state_dict": sd, "epoch": 3, "best_loss": 0.5}, "rnn."),
        "net": ({"net": sd, "step": 100, "rng_state": torch.get_rng_state()}, "rnn."),
        "module": ({"module": sd}, "rnn."),
        "lightning": (_lightning(sd, data_dir="/tmp/x", lr=1e-3), "model.rnn."),
        "dataparallel": (torch.nn.DataParallel(net).state_dict(), "module.rnn."),
    }


@pytest.mark.parametrize("kind", ["flat", "model", "model_state_dict", "state_dict", "net", "module", "lightning",
                                  "dataparallel"])
def test_checkpoint_layouts_load_without_prefix(tmp_path, kind):
    torch = _torch()
    net, layouts = _checkpoints(torch)
    obj, prefix = layouts[kind]
    path = tmp_path / ("w.ckpt" if kind == "lightning" else "w.pt")
    torch.save(obj, path)
    model = load_weights(path)
    assert (model.cell, model.input_size, model.hidden_size) == ("lstm", 3, 4)
    for k, v in model.params.items():
        np.testing.assert_array_equal(v, net.rnn.state_dict()[k].numpy(), err_msg=k)
    assert model.init == f"loaded from {path.name}" + (f" ({prefix[:-1]})" if prefix else "")
    if prefix:  # the module's name, a unique ending of it, and the exact prefix all pick the same module
        for pick in ({"module": prefix[:-1]}, {"module": "rnn"}, {"prefix": prefix}):
            assert load_weights(path, **pick).params.keys() == model.params.keys()


def test_lightning_checkpoint_with_a_path_is_refused_naming_the_class_and_the_fix(tmp_path):
    """weights_only refuses the pathlib.Path in hyper_parameters; rnndiag names it and says what to save."""
    torch = _torch()
    net = _lstm_net(torch)
    path = tmp_path / "epoch=1.ckpt"
    torch.save(_lightning(net.state_dict(), data_dir=pathlib.Path("/tmp/x")), path)
    with pytest.raises(WeightsFileError) as info:
        load_weights(path)
    msg = _one_line(info, path)
    assert re.search(r"pathlib\.\w*Path", msg), msg
    assert "torch.save(ckpt['state_dict'], 'w.pt')" in msg
    assert "weights_only=False" not in msg

    # the fix works: the state_dict saved alone loads
    torch.save(torch.load(path, weights_only=False)["state_dict"], tmp_path / "w.pt")
    assert load_weights(tmp_path / "w.pt").init == "loaded from w.pt (model.rnn)"


def test_other_pickled_objects_name_the_key_that_holds_the_weights(tmp_path):
    torch = _torch()
    net = _lstm_net(torch)
    path = tmp_path / "ckpt.pt"
    torch.save({"model_state_dict": net.state_dict(), "args": argparse.Namespace(lr=0.1), "epoch": 2}, path)
    with pytest.raises(WeightsFileError) as info:
        load_weights(path)
    msg = _one_line(info, path)
    assert "argparse.Namespace" in msg and "torch.save(ckpt['model_state_dict'], 'w.pt')" in msg


def test_legacy_format_refusal_names_the_class(tmp_path):
    torch = _torch()
    path = tmp_path / "old.pt"
    torch.save({"state_dict": torch.nn.GRU(2, 3).state_dict(), "root": pathlib.Path("/x")}, path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(WeightsFileError) as info:
        load_weights(path)
    assert re.search(r"pathlib\.\w*Path", _one_line(info, path))


@pytest.mark.parametrize("whole", ["lstm", "net"])
def test_whole_pickled_model_is_refused_naming_torch_nn(tmp_path, whole):
    torch = _torch()
    path = tmp_path / "model.pt"
    torch.save(torch.nn.LSTM(2, 3) if whole == "lstm" else _pickled_net(torch), path)
    with pytest.raises(WeightsFileError) as info:
        load_weights(path)
    msg = _one_line(info, path)
    assert "torch.nn.modules.rnn.LSTM" in msg
    assert "torch.save(model.state_dict(), 'w.pt')" in msg


# -- choosing among several modules ------------------------------------------------------------------------------
def _two_modules(torch, *, bidirectional=True):
    class Seq2Seq(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Module()
            self.encoder.emb = torch.nn.Embedding(10, 3)
            self.encoder.rnn = torch.nn.LSTM(3, 8, num_layers=2, bidirectional=bidirectional)
            self.decoder = torch.nn.Module()
            self.decoder.rnn = torch.nn.GRU(3, 4)
            self.decoder.out = torch.nn.Linear(4, 10)

    torch.manual_seed(0)
    return Seq2Seq()


def test_two_recurrent_modules_are_listed_and_module_chooses(tmp_path):
    torch = _torch()
    net = _two_modules(torch)
    path = tmp_path / "seq2seq.ckpt"
    torch.save(_lightning(net.state_dict()), path)
    with pytest.raises(WeightsFileError, match="several recurrent modules") as info:
        load_weights(path)
    msg = _one_line(info, path)
    assert "model.encoder.rnn (lstm, 2 layers, input 3, hidden 8, bidirectional)" in msg
    assert "model.decoder.rnn (gru, 1 layer, input 3, hidden 4)" in msg
    assert "--module model.encoder.rnn" in msg

    decoder = load_weights(path, module="model.decoder.rnn")
    assert (decoder.cell, decoder.init) == ("gru", "loaded from seq2seq.ckpt (model.decoder.rnn)")
    _assert_params_equal(decoder, net.state_dict(), "decoder.rnn.")
    encoder = load_weights(path, module="encoder.rnn")  # a unique ending names it too: Lightning's head dropped
    assert encoder.bidirectional and encoder.num_layers == 2
    _assert_params_equal(encoder, net.state_dict(), "encoder.rnn.")
    assert load_weights(path, prefix="model.decoder.rnn.").cell == "gru"


@pytest.mark.parametrize(("pick", "fragment"), [
    ({"module": "rnn"}, "fits several recurrent modules (encoder.rnn, decoder.rnn)"),
    ({"module": "attention"}, "no recurrent module named 'attention'; its recurrent modules: encoder.rnn"),
    ({"prefix": "encoder"}, "no recurrent module under prefix 'encoder.'"),
    ({"module": "encoder.rnn", "prefix": "decoder.rnn"}, "pass one of them"),
])
def test_bad_module_choice(tmp_path, pick, fragment):
    torch = _torch()
    path = tmp_path / "seq2seq.pt"
    torch.save(_two_modules(torch).state_dict(), path)
    with pytest.raises(WeightsFileError, match=re.escape(fragment)) as info:
        load_weights(path, **pick)
    _one_line(info, path)


def test_find_recurrent_modules():
    torch = _torch()
    found = find_recurrent_modules({"state_dict": _two_modules(torch).state_dict(), "epoch": 1})
    assert found == [RecurrentModule("encoder.rnn", "lstm", 3, 8, 2, True, True, 0),
                     RecurrentModule("decoder.rnn", "gru", 3, 4, 1)]
    assert found[0].prefix == "encoder.rnn." and json.loads(json.dumps(found[1].to_dict()))["cell"] == "gru"
    assert find_recurrent_modules(torch.nn.LSTM(2, 6, proj_size=3).state_dict())[0].describe() == \
        "(top level) (lstm, 1 layer, input 2, hidden 6, proj_size 3)"
    assert find_recurrent_modules({"head.weight": np.zeros((2, 2))}) == []


def test_an_exact_name_wins_over_an_ending():
    gru, lstm = rnndiag.init_model("gru", 2, 3, seed=0).params, rnndiag.init_model("lstm", 2, 5, seed=0).params
    sd = {**{f"rnn.{k}": v for k, v in gru.items()}, **{f"encoder.rnn.{k}": v for k, v in lstm.items()}}
    assert model_from_state_dict(sd, module="rnn").cell == "gru"
    assert model_from_state_dict(sd, module="encoder.rnn").cell == "lstm"
    top = {**gru, **{f"decoder.rnn.{k}": v for k, v in lstm.items()}}
    with pytest.raises(WeightsFileError, match=re.escape("(top level) (gru, 1 layer, input 2, hidden 3)")):
        model_from_state_dict(top)
    assert model_from_state_dict(top, module="(top level)").init == "state_dict"
    assert model_from_state_dict(top, module="").cell == "gru"


def test_other_modules_next_to_a_top_level_rnn_are_ignored():
    model = rnndiag.init_model("lstm", 3, 4, seed=0)
    built = model_from_state_dict({**model.params, "fc.weight": np.zeros((2, 4)), "fc.bias": np.zeros(2)})
    assert built.params.keys() == model.params.keys() and built.init == "state_dict"


# -- what the keys cannot pin down ------------------------------------------------------------------------------
def _bidirectional_params():
    return dict(rnndiag.init_model("gru", 3, 4, num_layers=2, seed=0).params) | {
        f"{k}_reverse": v for k, v in rnndiag.init_model("gru", 3, 4, num_layers=2, seed=1).params.items()}


def _spoiled(how: str) -> dict:
    p = _bidirectional_params()
    if how == "reverse for one layer only":
        p = {k: v for k, v in p.items() if not k.endswith("l1_reverse")}
    elif how == "layer gap":
        p = {k.replace("_l1", "_l3"): v for k, v in p.items()}
    elif how == "one-way layer 1 input":  # a bidirectional layer 1 reads 2H = 8 inputs
        pass
    elif how == "inconsistent hidden size":
        p["weight_hh_l0_reverse"] = np.zeros((15, 5))
    elif how == "missing reverse bias":
        del p["bias_hh_l1_reverse"]
    elif how == "projection not smaller":
        p = dict(rnndiag.init_model("lstm", 3, 4, seed=0).params) | {"weight_hr_l0": np.zeros((4, 4))}
    elif how == "projection on a gru":
        p = dict(rnndiag.init_model("gru", 3, 4, seed=0).params) | {"weight_hr_l0": np.zeros((2, 4))}
    elif how == "projection in one layer":
        torch = _torch()
        p = {k: v.detach().numpy() for k, v in torch.nn.LSTM(3, 4, num_layers=2, proj_size=2).state_dict().items()}
        del p["weight_hr_l1"]
    else:
        raise AssertionError(how)
    return p


@pytest.mark.parametrize(("how", "fragment"), [
    ("reverse for one layer only", "has *_reverse keys for layer 0 of layers 0, 1: a bidirectional module has both "
                                   "directions in every layer"),
    ("layer gap", "has layers [0, 3]; layer indices must run 0..1 without gaps"),
    ("one-way layer 1 input", "key 'weight_ih_l1' has shape (12, 4); expected (12, 8) for a gru (2 layers, input 3, "
                              "hidden 4, bidirectional)"),
    ("inconsistent hidden size", "key 'weight_hh_l0_reverse' has shape (15, 5); expected (12, 4)"),
    ("missing reverse bias", "is missing bias_hh_l1_reverse for a gru"),
    ("projection not smaller", "weight_hr_l0 has shape (4, 4): proj_size 4 must be smaller than hidden size 4"),
    ("projection on a gru", "weight_hh_l0 has shape (12, 4); weight_hr_l0 (2, 4) makes an LSTM"),
    ("projection in one layer", "is missing weight_hr_l1 for an lstm"),
])
def test_architecture_the_keys_cannot_pin_down(tmp_path, how, fragment):
    p = _spoiled(how)
    if how == "one-way layer 1 input":
        p = {k: v for k, v in p.items()}
        p["weight_ih_l1"] = p["weight_ih_l1"][:, :4]
        p["weight_ih_l1_reverse"] = p["weight_ih_l1_reverse"][:, :4]
    path = tmp_path / "bad.npz"
    np.savez(path, **p)
    with pytest.raises(WeightsFileError, match=re.escape(fragment)) as info:
        load_weights(path)
    _one_line(info, path)


def test_keys_named_inside_a_module():
    """A module's problems name its full keys, so the user can find them in the file."""
    p = {f"encoder.rnn.{k}": v for k, v in _bidirectional_params().items() if not k.endswith("l1_reverse")}
    with pytest.raises(WeightsFileError, match=re.escape("has encoder.rnn.*_reverse keys for layer 0")):
        model_from_state_dict(p | {"encoder.emb.weight": np.zeros((5, 3))})


@pytest.mark.parametrize(("obj", "fragment"), [
    ({"epoch": 3, "optimizer": {"lr": 0.1}}, "holds no weights (keys 'epoch', 'optimizer')"),
    ({}, "holds no weights (keys none)"),
    ({"embedding.weight": np.zeros((5, 3)), "head.weight": np.zeros((2, 3))},
     "holds no nn.RNN/LSTM/GRU parameters (no key ends in weight_ih_l0, weight_hh_l0, ...); its keys start with "
     "embedding, head"),
])
def test_mappings_without_a_recurrent_module(obj, fragment):
    with pytest.raises(WeightsFileError, match=re.escape(fragment)) as info:
        model_from_state_dict(obj)
    _one_line(info)


# -- inputs -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_integer_input_looks_like_token_ids(tmp_path, dtype):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(24).reshape(4, 2, 3).astype(dtype))
    with pytest.raises(ValueError) as info:
        load_input(path)
    assert str(info.value) == (f"input file {str(path)!r} holds integers (dtype {np.dtype(dtype).name}): these look "
                               "like token ids: pass the embedded inputs (the recurrent module's input), or record a "
                               "capture")


def test_bool_and_float_inputs_still_load(tmp_path):
    np.save(tmp_path / "b.npy", np.ones((4, 2, 3), dtype=bool))
    np.save(tmp_path / "f.npy", np.ones((4, 2, 3), dtype=np.float32))
    assert load_input(tmp_path / "b.npy").dtype == load_input(tmp_path / "f.npy").dtype == np.float64


# -- the command line -------------------------------------------------------------------------------------------
def _analyze_json(args) -> dict:
    res = invoke(["analyze", *args, *RUN])
    assert res.exit_code == 0, (res.exit_code, res.stderr, res.exception)
    return json.loads(res.stdout)


@pytest.mark.parametrize("kind", ["flat", "model", "model_state_dict", "state_dict", "lightning", "dataparallel"])
def test_cli_analyzes_each_save_format_without_prefix(tmp_path, kind):
    torch = _torch()
    obj, _ = _checkpoints(torch)[1][kind]
    path = tmp_path / ("w.ckpt" if kind == "lightning" else "w.pt")
    torch.save(obj, path)
    metrics = _analyze_json(["--weights", path])
    assert (metrics["cell"], metrics["input_size"], metrics["hidden_size"]) == ("lstm", 3, 4)


def test_cli_whole_model_npz_without_prefix(tmp_path):
    model = rnndiag.init_model("gru", 2, 5, seed=0)
    np.savez(tmp_path / "w.npz", **{f"encoder.rnn.{k}": v for k, v in model.params.items()},
             **{"encoder.emb.weight": np.zeros((7, 2)), "head.weight": np.zeros((1, 5))})
    assert _analyze_json(["--weights", tmp_path / "w.npz"])["hidden_size"] == 5


def test_cli_two_modules_need_module(tmp_path):
    torch = _torch()
    path = tmp_path / "seq2seq.pt"
    torch.save({"model_state_dict": _two_modules(torch, bidirectional=False).state_dict()}, path)
    line = assert_one_line_error(invoke(["analyze", "--weights", path, *RUN]))
    assert "encoder.rnn (lstm" in line and "decoder.rnn (gru" in line and "--module" in line
    assert _analyze_json(["--weights", path, "--module", "decoder.rnn"])["cell"] == "gru"
    assert _analyze_json(["--weights", path, "--module", "encoder.rnn"])["hidden_size"] == 8


def _refused_files(torch, folder: pathlib.Path) -> dict[str, tuple[pathlib.Path, str]]:
    """name -> (a file analyze must refuse, a fragment of its one line)."""
    net = _lstm_net(torch)
    files = {"lightning-path": (folder / "a.ckpt", "torch.save(ckpt['state_dict'], 'w.pt')"),
             "whole-model": (folder / "m.pt", "torch.save(model.state_dict(), 'w.pt')"),
             "two-modules": (folder / "two.pt", "--module encoder.rnn"),
             "reverse-one-layer": (folder / "rev.npz", "both directions in every layer"),
             "no-recurrent-module": (folder / "lin.pt", "holds no nn.RNN/LSTM/GRU parameters")}
    torch.save(_lightning(net.state_dict(), root=pathlib.Path("/data")), files["lightning-path"][0])
    torch.save(_pickled_net(torch), files["whole-model"][0])
    torch.save(_two_modules(torch).state_dict(), files["two-modules"][0])
    np.savez(files["reverse-one-layer"][0], **_spoiled("reverse for one layer only"))
    torch.save(torch.nn.Linear(2, 3).state_dict(), files["no-recurrent-module"][0])
    return files


@pytest.mark.parametrize("case", ["lightning-path", "whole-model", "two-modules", "reverse-one-layer",
                                  "no-recurrent-module"])
def test_cli_refusals_are_one_line(tmp_path, case):
    torch = _torch()
    path, fragment = _refused_files(torch, tmp_path)[case]
    line = assert_one_line_error(invoke(["analyze", "--weights", path, *RUN]))
    assert fragment in line and path.name in line, line


@pytest.mark.parametrize(("args", "fragment"), [
    (["--module", "rnn"], "--module applies to --weights or --capture only"),
    (["--weights", "w.npz", "--module", "rnn", "--prefix", "rnn"], "pass one of them"),
])
def test_cli_module_option_checks(tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    rnndiag.save_weights(rnndiag.init_model("gru", 2, 3, seed=0), tmp_path / "w.npz")
    assert fragment in assert_one_line_error(invoke(["analyze", *args, *RUN]))


def test_cli_integer_input(tmp_path):
    np.save(tmp_path / "tokens.npy", np.zeros((6, 2, 1), dtype=np.int64))
    line = assert_one_line_error(invoke(["analyze", "--input", tmp_path / "tokens.npy", "--format", "none",
                                         "--quiet"]))
    assert "holds integers (dtype int64): these look like token ids: pass the embedded inputs" in line


def test_module_option_has_help_with_an_example():
    res = invoke(["analyze", "--help"])
    assert res.exit_code == 0
    assert "--module" in res.stdout and "encoder.rnn" in res.stdout
