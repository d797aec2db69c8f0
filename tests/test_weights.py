"""Loading and saving weights: round trips, PyTorch files, prefixes, and one clear error per bad input."""

from __future__ import annotations

import os
import pickle
import re
import stat
import sys

import numpy as np
import pytest
from _helpers import CELLS

import rnndiag
from rnndiag import init_model, load_weights, save_weights


def _torch():
    return pytest.importorskip("torch", reason="torch is not installed: .pt files cannot be tested")


def _assert_same_model(loaded, model):
    assert (loaded.cell, loaded.input_size, loaded.hidden_size, loaded.num_layers, loaded.bias) == (
        model.cell, model.input_size, model.hidden_size, model.num_layers, model.bias)
    assert loaded.params.keys() == model.params.keys()
    for k, v in model.params.items():
        assert loaded.params[k].dtype == v.dtype, k
        np.testing.assert_array_equal(loaded.params[k], v, err_msg=k)


def _assert_clear_error(info, path):
    """The message names the file and is a single line."""
    msg = str(info.value)
    assert str(path) in msg, msg
    assert "\n" not in msg and "\r" not in msg, msg


LAYOUTS = [(1, True), (2, False), (3, True)]  # (num_layers, bias)


# -- round trips -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("num_layers", "bias"), LAYOUTS)
@pytest.mark.parametrize("cell", CELLS)
def test_npz_round_trip(tmp_path, cell, num_layers, bias):
    """npz keeps everything, including rnn_relu (via the stored cell key) and the dtype."""
    model = init_model(cell, 3, 4, num_layers=num_layers, bias=bias, seed=0)
    path = save_weights(model, tmp_path / "w.npz")
    assert path == tmp_path / "w.npz"
    loaded = load_weights(path)
    _assert_same_model(loaded, model)
    x = np.random.default_rng(0).standard_normal((5, 2, 3))
    np.testing.assert_array_equal(rnndiag.forward(loaded, x).h, rnndiag.forward(model, x).h)


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
@pytest.mark.parametrize(("num_layers", "bias"), LAYOUTS)
@pytest.mark.parametrize("cell", CELLS)
def test_torch_file_round_trip(tmp_path, cell, num_layers, bias, suffix):
    """A .pt/.pth file is a plain state_dict, so it cannot tell relu from tanh: ``cell=`` says which."""
    _torch()
    model = init_model(cell, 3, 4, num_layers=num_layers, bias=bias, seed=1)
    path = save_weights(model, tmp_path / f"w{suffix}")
    _assert_same_model(load_weights(path, cell=cell), model)


def test_stored_cell_key_is_what_keeps_relu(tmp_path):
    model = init_model("rnn_relu", 2, 3, seed=0)
    save_weights(model, tmp_path / "w.npz")
    with np.load(tmp_path / "w.npz") as data:
        assert str(data["rnndiag_cell"]) == "rnn_relu"
        plain = {k: data[k] for k in data.files if k != "rnndiag_cell"}
    np.savez(tmp_path / "plain.npz", **plain)
    assert load_weights(tmp_path / "plain.npz").cell == "rnn_tanh"  # documented default without the key
    assert load_weights(tmp_path / "plain.npz", cell="relu").cell == "rnn_relu"


def test_dtype_kept_unless_given(tmp_path):
    m32 = init_model("lstm", 3, 4, seed=0, dtype=np.float32)
    save_weights(m32, tmp_path / "w32.npz")
    assert load_weights(tmp_path / "w32.npz").dtype == np.float32
    m64 = load_weights(tmp_path / "w32.npz", dtype=np.float64)
    assert m64.dtype == np.float64 and all(v.dtype == np.float64 for v in m64.params.values())
    np.testing.assert_array_equal(m64.params["weight_hh_l0"], m32.params["weight_hh_l0"].astype(np.float64))

    save_weights(init_model("gru", 3, 4, seed=0), tmp_path / "w64.npz")
    assert load_weights(tmp_path / "w64.npz").dtype == np.float64
    assert load_weights(tmp_path / "w64.npz", dtype="float32").dtype == np.float32
    with pytest.raises(TypeError, match="dtype"):
        load_weights(tmp_path / "w64.npz", dtype=np.float16)


def test_integer_weights_load_as_float64(tmp_path):
    model = init_model("rnn_tanh", 2, 3, seed=0)
    np.savez(tmp_path / "w.npz", **{k: np.round(v * 10).astype(np.int32) for k, v in model.params.items()})
    assert load_weights(tmp_path / "w.npz").dtype == np.float64


def test_real_torch_lstm_state_dict_gives_torch_outputs(tmp_path):
    torch = _torch()
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 5, num_layers=2).double()
    torch.save(lstm.state_dict(), tmp_path / "lstm.pt")
    model = load_weights(tmp_path / "lstm.pt")
    assert (model.cell, model.input_size, model.hidden_size, model.num_layers) == ("lstm", 3, 5, 2)
    assert model.dtype == np.float64
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    with torch.no_grad():
        out, (_, c_n) = lstm(torch.from_numpy(x))
    tr = rnndiag.forward(model, x)
    np.testing.assert_allclose(tr.h, out.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(tr.c_n, c_n.numpy(), rtol=0, atol=1e-12)

    # a float32 module stays float32
    torch.save(torch.nn.GRU(3, 4).state_dict(), tmp_path / "gru32.pt")
    assert load_weights(tmp_path / "gru32.pt").dtype == np.float32
    # a training checkpoint {"state_dict": ..., "epoch": ...} is unwrapped
    torch.save({"state_dict": lstm.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    _assert_same_model(load_weights(tmp_path / "ckpt.pt"), model)


def test_prefix_stripping(tmp_path):
    model = init_model("gru", 3, 4, num_layers=2, seed=0)
    nested = {f"encoder.rnn.{k}": v for k, v in model.params.items()}
    np.savez(tmp_path / "nested.npz", **nested)
    _assert_same_model(load_weights(tmp_path / "nested.npz"), model)  # unique prefix: found on its own
    _assert_same_model(load_weights(tmp_path / "nested.npz", prefix="encoder.rnn"), model)
    _assert_same_model(load_weights(tmp_path / "nested.npz", prefix="encoder.rnn."), model)

    # other modules' keys next to the only RNN are ignored; an explicit prefix picks the same RNN
    path = tmp_path / "whole.npz"
    np.savez(path, **nested, **{"decoder.weight": np.zeros((2, 4)), "decoder.bias": np.zeros(2)})
    _assert_same_model(load_weights(path), model)
    assert load_weights(path).init == "loaded from whole.npz (encoder.rnn)"
    _assert_same_model(load_weights(path, prefix="encoder.rnn"), model)
    with pytest.raises(ValueError, match="prefix") as info:
        load_weights(path, prefix="decoder.rnn")
    _assert_clear_error(info, path)

    # two recurrent modules: must choose
    two = {**nested, **{f"decoder.rnn.{k}": v for k, v in model.params.items()}}
    np.savez(tmp_path / "two.npz", **two)
    with pytest.raises(ValueError, match="several recurrent modules"):
        load_weights(tmp_path / "two.npz")
    _assert_same_model(load_weights(tmp_path / "two.npz", prefix="decoder.rnn"), model)


def test_torch_prefix_from_a_whole_module(tmp_path):
    torch = _torch()

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.RNN(2, 3, nonlinearity="relu")
            self.head = torch.nn.Linear(3, 1)

    path = tmp_path / "net.pt"
    torch.save(Net().state_dict(), path)
    model = load_weights(path, cell="rnn_relu", prefix="rnn")
    assert (model.cell, model.input_size, model.hidden_size) == ("rnn_relu", 2, 3)


# -- in memory: model_from_state_dict ---------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_model_from_state_dict_of_arrays(cell):
    """A mapping of arrays builds the same model as the file it would be saved to; load_weights reads and calls it."""
    model = init_model(cell, 3, 4, num_layers=2, seed=2)
    built = rnndiag.model_from_state_dict(model.state_dict(), cell=cell if cell == "rnn_relu" else None)
    _assert_same_model(built, model)
    assert built.init == "state_dict"
    nested = {f"net.rnn.{k}": v for k, v in model.params.items()} | {"net.head.weight": np.zeros((1, 4))}
    _assert_same_model(rnndiag.model_from_state_dict(nested, cell, prefix="net.rnn"), model)
    assert rnndiag.model_from_state_dict(model.state_dict(), cell, dtype=np.float32).dtype == np.float32


def test_model_from_a_torch_modules_state_dict():
    """``module.state_dict()`` as it is: tensors, a whole model's keys, float16/bfloat16 widened to float32."""
    torch = _torch()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.GRU(3, 5, num_layers=2), torch.nn.Linear(5, 1))
    model = rnndiag.model_from_state_dict(net.state_dict(), prefix="0")
    assert (model.cell, model.input_size, model.hidden_size, model.num_layers, model.dtype) == (
        "gru", 3, 5, 2, np.float32)
    for k, v in net[0].state_dict().items():
        np.testing.assert_array_equal(model.params[k], v.numpy(), err_msg=k)
    for half in (torch.float16, torch.bfloat16):
        lstm = torch.nn.LSTM(2, 3).to(half)
        m = rnndiag.model_from_state_dict(lstm.state_dict())
        assert m.dtype == np.float32
        np.testing.assert_array_equal(m.params["weight_hh_l0"], lstm.weight_hh_l0.detach().float().numpy())
    assert rnndiag.model_from_state_dict(torch.nn.LSTM(2, 3).double().state_dict()).dtype == np.float64


@pytest.mark.parametrize(("state_dict", "exc", "fragment"), [
    ([("weight_ih_l0", np.zeros((4, 2)))], TypeError, "state_dict must be a mapping"),
    ({"weight_ih_l0": [[0.0]], "weight_hh_l0": np.zeros((4, 4))}, ValueError,
     "state_dict: entry 'weight_ih_l0' is a list, not an array or tensor"),
    ({"weight_hh_l0": np.zeros((4, 4))}, ValueError, "state_dict: is missing weight_ih_l0"),
    ({"weight_ih_l0": np.zeros((4, 2)), "weight_hh_l0": np.full((4, 4), np.nan)}, ValueError,
     "state_dict: key 'weight_hh_l0' contains NaN or Inf"),
])
def test_model_from_state_dict_bad_input(state_dict, exc, fragment):
    with pytest.raises(exc, match=re.escape(fragment)) as info:
        rnndiag.model_from_state_dict(state_dict)
    assert "\n" not in str(info.value)


# -- bad files -------------------------------------------------------------------------------------
@pytest.fixture
def good():
    """A 2-layer LSTM's params (H=4, I=3), to be spoiled."""
    return dict(init_model("lstm", 3, 4, num_layers=2, seed=0).params)


def _save_npz(tmp_path, arrays, name="bad.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_missing_file(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError) as info:
        load_weights(path)
    _assert_clear_error(info, path)


def test_directory(tmp_path):
    path = tmp_path / "weights.npz"
    path.mkdir()
    with pytest.raises(ValueError, match="folder") as info:
        load_weights(path)
    _assert_clear_error(info, path)


@pytest.mark.parametrize("name", ["w.txt", "w.npy", "w"])
def test_unknown_extension(tmp_path, name, good):
    path = tmp_path / name
    with open(path, "wb") as fh:
        np.savez(fh, **good)  # valid content, unsupported name
    with pytest.raises(ValueError, match="extension") as info:
        load_weights(path)
    _assert_clear_error(info, path)


def test_truncated_npz(tmp_path, good):
    path = _save_npz(tmp_path, good)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated") as info:
        load_weights(path)
    _assert_clear_error(info, path)


@pytest.mark.parametrize("content", [b"", np.random.default_rng(0).bytes(1000)], ids=["empty", "random"])
def test_garbage_npz(tmp_path, content):
    path = tmp_path / "garbage.npz"
    path.write_bytes(content)
    with pytest.raises(rnndiag.weights.WeightsFileError) as info:
        load_weights(path)
    _assert_clear_error(info, path)


def test_random_bytes_are_not_called_a_pickled_object_array(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(rnndiag.weights.WeightsFileError) as info:
        load_weights(path)
    assert "pickled object array" not in str(info.value)


def test_single_array_npy_named_npz(tmp_path):
    path = tmp_path / "single.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.zeros((4, 4)))
    with pytest.raises(rnndiag.weights.WeightsFileError, match="single array") as info:
        load_weights(path)
    _assert_clear_error(info, path)


def test_pickled_object_array(tmp_path, good):
    good["weight_hh_l0"] = np.array([object(), 1.0], dtype=object)
    path = tmp_path / "obj.npz"
    np.savez(path, **good)  # np.savez pickles object arrays
    with pytest.raises(ValueError, match="pickled object array") as info:
        load_weights(path)
    _assert_clear_error(info, path)


def _spoil(good, how):
    p = dict(good)
    H = 4
    if how == "missing key":
        del p["weight_hh_l1"]
    elif how == "missing one bias":
        del p["bias_hh_l1"]
    elif how == "unknown key":
        p["weight_hh_l0_raw"] = np.zeros((4 * H, H))  # AWD-LSTM's WeightDrop keeps the undropped weight so
    elif how == "extra bias in a bias-free layer":
        p = {k: v for k, v in p.items() if not k.startswith("bias") or k.endswith("_l1")}
    elif how == "wrong shape":
        p["bias_ih_l0"] = np.zeros(4 * H + 1)
    elif how == "wrong ndim":
        p["weight_ih_l0"] = np.zeros(4 * H * 3)
    elif how == "hidden not dividing rows":
        p["weight_hh_l0"] = np.zeros((4 * H, H + 1))
    elif how == "five gates":
        p["weight_hh_l0"] = np.zeros((5 * H, H))
    elif how == "inconsistent sizes between layers":
        other = init_model("lstm", 3, 5, num_layers=2, seed=0).params
        p.update({k: other[k] for k in ("weight_ih_l1", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1")})
    elif how == "NaN":
        p["weight_hh_l1"] = p["weight_hh_l1"].copy()
        p["weight_hh_l1"][3, 2] = np.nan
    elif how == "Inf":
        p["bias_ih_l0"] = p["bias_ih_l0"].copy()
        p["bias_ih_l0"][0] = -np.inf
    elif how == "string dtype":
        p["weight_ih_l1"] = np.full((4 * H, H), "0.1")
    elif how == "bool dtype":
        p["weight_ih_l1"] = np.ones((4 * H, H), dtype=bool)
    elif how == "layer gap":
        p = {k.replace("_l1", "_l2"): v for k, v in p.items()}
    elif how == "bidirectional":
        p.update({f"{k}_reverse": v for k, v in good.items()})
    elif how == "projection":
        p["weight_hr_l0"] = np.zeros((2, H))
    elif how == "bad stored cell key":
        p["rnndiag_cell"] = np.array(["lstm", "gru"])
    elif how == "stored cell contradicts the shapes":
        p["rnndiag_cell"] = np.array("gru")
    else:
        raise AssertionError(how)
    return p


@pytest.mark.parametrize(("how", "match"), [
    ("missing key", "missing weight_hh_l1"),
    ("missing one bias", "missing bias_hh_l1"),
    ("unknown key", "weight_hh_l0_raw"),
    ("extra bias in a bias-free layer", "bias_ih_l1"),
    ("wrong shape", "bias_ih_l0"),
    ("wrong ndim", "weight_ih_l0"),
    ("hidden not dividing rows", "weight_hh_l0"),
    ("five gates", "weight_hh_l0"),
    ("inconsistent sizes between layers", "_l1"),
    ("NaN", "weight_hh_l1.*NaN"),
    ("Inf", "bias_ih_l0.*NaN or Inf"),
    ("string dtype", "weight_ih_l1.*dtype"),
    ("bool dtype", "weight_ih_l1.*dtype"),
    ("layer gap", "gaps"),
    ("bidirectional", r"weight_ih_l1' has shape \(16, 4\); expected \(16, 8\) for an lstm \(.*bidirectional"),
    ("projection", r"weight_hr_l0 \(2, 4\) makes an LSTM with hidden size 4 and proj_size 2"),
    ("bad stored cell key", "rnndiag_cell"),
    ("stored cell contradicts the shapes", "not a gru"),
])
def test_bad_npz_contents(tmp_path, good, how, match):
    path = _save_npz(tmp_path, _spoil(good, how))
    with pytest.raises(ValueError, match=match) as info:
        load_weights(path)
    _assert_clear_error(info, path)


def test_zero_input_size(tmp_path, good):
    good["weight_ih_l0"] = np.zeros((16, 0))
    path = _save_npz(tmp_path, good)
    with pytest.raises(ValueError) as info:
        load_weights(path)
    _assert_clear_error(info, path)


def test_cell_argument_contradicting_the_shapes(tmp_path, good):
    path = _save_npz(tmp_path, good)
    with pytest.raises(ValueError, match="not a gru") as info:
        load_weights(path, cell="gru")
    _assert_clear_error(info, path)


@pytest.mark.parametrize("what", ["list", "tensor", "non-tensor entry", "module", "truncated"])
def test_bad_torch_files(tmp_path, what):
    torch = _torch()
    path = tmp_path / "bad.pt"
    lstm = torch.nn.LSTM(2, 3)
    if what == "list":
        torch.save([torch.zeros(3)], path)
    elif what == "tensor":
        torch.save(torch.zeros(12, 3), path)
    elif what == "non-tensor entry":
        torch.save({**lstm.state_dict(), "epoch": 3}, path)
    elif what == "module":
        torch.save(lstm, path)  # a pickled module: refused by weights_only loading
    else:
        torch.save(lstm.state_dict(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as info:
        load_weights(path)
    _assert_clear_error(info, path)


def test_no_pickle_is_executed(tmp_path):
    """A .pt file whose pickle would run code is refused without running it."""
    _torch()
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump(Evil(), fh, protocol=2)
    with pytest.raises(ValueError) as info:
        load_weights(path)
    _assert_clear_error(info, path)
    assert not marker.exists()


# -- saving ----------------------------------------------------------------------------------------
def test_save_refuses_to_overwrite(tmp_path):
    a, b = init_model("gru", 2, 3, seed=0), init_model("gru", 2, 3, seed=1)
    path = save_weights(a, tmp_path / "w.npz")
    with pytest.raises(FileExistsError, match="overwrite=True") as info:
        save_weights(b, path)
    _assert_clear_error(info, path)
    _assert_same_model(load_weights(path), a)  # untouched
    save_weights(b, path, overwrite=True)
    _assert_same_model(load_weights(path), b)


def test_save_is_atomic(tmp_path, monkeypatch):
    a = init_model("lstm", 2, 3, seed=0)
    path = save_weights(a, tmp_path / "w.npz")
    save_weights(a, path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["w.npz"]  # no temporary files left behind on success

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        save_weights(init_model("lstm", 2, 3, seed=1), path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["w.npz"]  # nor on failure
    monkeypatch.undo()
    _assert_same_model(load_weights(path), a)  # and the old file is intact


@pytest.mark.parametrize(("name", "exc"), [("w.json", ValueError), ("missing_dir/w.npz", FileNotFoundError)])
def test_save_bad_paths(tmp_path, name, exc):
    with pytest.raises(exc, match=r"w\.json|missing_dir"):
        save_weights(init_model("gru", 2, 3, seed=0), tmp_path / name)


def test_save_needs_a_model(tmp_path):
    with pytest.raises(TypeError, match="RNNModel"):
        save_weights({"weight_ih_l0": np.zeros((3, 2))}, tmp_path / "w.npz")
    assert not os.listdir(tmp_path)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_saved_file_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_weights(init_model("gru", 2, 3, seed=0), tmp_path / "w.npz")
        np.savez(tmp_path / "plain.npz", a=np.zeros(1))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / "plain.npz").stat().st_mode) == 0o644
