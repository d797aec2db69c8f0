"""The report folder: a self-contained, escaped HTML file, valid PNG figures named after what they show, every
number, a long sequence drawn quickly, and atomic writing (a failure leaves no report and no temporary folder)."""

from __future__ import annotations

import base64
import errno
import html
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import markupsafe
import pytest
from _cli_helpers import (
    FIGURES,
    GATED_FIGURE,
    SMALL,
    assert_clean_exit,
    assert_contract_keys,
    assert_one_line_error,
    diff_snapshots,
    hidden_temp_entries,
    interruptible,
    invoke,
    png_info,
    snapshot,
    strict_json,
)

import rnndiag.files as output_mod
import rnndiag.render.figures as figures_mod
from rnndiag import init_model, save_weights

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
URL_ATTRS = {"src", "href", "srcset", "action", "formaction", "poster", "data", "background", "cite", "longdesc",
             "manifest", "xlink:href", "ping", "codebase", "archive", "profile", "usemap"}
FORBIDDEN_TAGS = {"script", "link", "iframe", "frame", "object", "embed", "base", "audio", "video", "source",
                  "track", "applet", "form", "input"}


# -- parsing ---------------------------------------------------------------------------------------------------------
class _Tags(HTMLParser):
    """Every start tag with its attributes, the <style> text, and which figure each <img> sits in."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.style = ""
        self._in_style = False
        self._figure: str | None = None
        self.images: list[tuple[str | None, dict]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "style":
            self._in_style = True
        if tag == "figure":
            self._figure = a.get("id")
        if tag == "img":
            self.images.append((self._figure, a))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False
        if tag == "figure":
            self._figure = None

    def handle_data(self, data):
        if self._in_style:
            self.style += data


def _parse(text: str) -> _Tags:
    p = _Tags()
    p.feed(text)
    p.close()
    return p


def _number_rows(text: str) -> dict[str, str]:
    """The "Every number" table as {key: value}."""
    start = text.index('<h2 id="numbers">')
    section = text[start:text.index("</table>", start)]
    rows = re.findall(r'<tr><td><code>(.*?)</code></td><td class="num">(.*?)</td></tr>', section, flags=re.S)
    assert rows, "the Every number table is empty"
    return {html.unescape(k): html.unescape(v) for k, v in rows}


def _lookup(metrics: dict, key: str):
    """``layers[0].spectral_radius`` -> metrics["layers"][0]["spectral_radius"]."""
    obj = metrics
    for part in key.split("."):
        m = re.fullmatch(r"(\w+)((?:\[\d+\])*)", part)
        obj = obj[m.group(1)]
        for idx in re.findall(r"\[(\d+)\]", m.group(2)):
            obj = obj[int(idx)]
    return obj


def _fmt(v) -> str:
    if v is None:
        return "null"
    return f"{v:.6g}" if isinstance(v, float) else str(v)


# -- reports, built once per module ------------------------------------------------------------------------------------
def _analyze(out: Path, *args) -> Path:
    res = invoke(["analyze", *args, "--out", out, "--quiet"])
    assert_clean_exit(res, " ".join(map(str, args)))
    return out


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """Report folders: fresh tanh / relu / lstm / gru / an exploding one, and two from weights files whose names are
    HTML."""
    base = tmp_path_factory.mktemp("reports")
    made = {
        "rnn_tanh": _analyze(base / "rnn_tanh", *SMALL),
        "rnn_relu": _analyze(base / "rnn_relu", *SMALL, "--cell", "rnn_relu", "--init", "identity"),
        "lstm": _analyze(base / "lstm", *SMALL, "--cell", "lstm", "--forget-bias", "1", "--num-layers", "2"),
        "gru": _analyze(base / "gru", *SMALL, "--cell", "gru", "--task", "copy"),
        # the state overflows: the figures must cope with non-finite tails
        "exploding": _analyze(base / "exploding", "--cell", "rnn_relu", "--init", "identity", "--gain", "100",
                              "--seq-len", "300", "--batch-size", "4", "--hidden-size", "8"),
    }
    # "<script>alert(1)</script>.npz" contains a "/", so on Linux it is the file "script>.npz" inside the folder
    # "<script>alert(1)<"; the path given to --weights then ends in exactly that string.
    weights = init_model("rnn_tanh", 2, 8, seed=0)
    script_dir = base / "<script>alert(1)<"
    script_dir.mkdir()
    script_path = save_weights(weights, script_dir / "script>.npz")
    assert str(script_path).endswith(SCRIPT + ".npz")
    made["script"] = _analyze(base / "script", "--weights", script_path, "--seq-len", "20", "--batch-size", "4")
    img_path = save_weights(weights, base / f"{IMG}.npz")  # no "/" here: a legal single file name
    made["img"] = _analyze(base / "img", "--weights", img_path, "--seq-len", "20", "--batch-size", "4")
    return made


def _html(folder: Path) -> str:
    return (folder / "report.html").read_text("utf-8")


ALL = ("rnn_tanh", "rnn_relu", "lstm", "gru", "exploding", "script", "img")


# ==================================================================================================================
# escaping and self-containment
# ==================================================================================================================
def test_script_file_name_is_shown_as_text(reports):
    text = _html(reports["script"])
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<script>alert(1)" not in text
    assert "<script" not in text.lower()  # the report has no script at all
    # the name is really in the report (model label, configuration, command line), not silently dropped
    assert text.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 2
    assert all(tag != "script" for tag, _ in _parse(text).tags)
    # metrics.json is data, not HTML: it keeps the name as it is
    assert SCRIPT in (reports["script"] / "metrics.json").read_text("utf-8")


def test_attribute_injection_file_name_is_shown_as_text(reports):
    text = _html(reports["img"])
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "<img src=x" not in text
    tags = _parse(text)
    assert all("onerror" not in attrs for _, attrs in tags.tags)
    assert all(attrs.get("src", "").startswith("data:image/png;base64,") for _, attrs in tags.images)


@pytest.mark.parametrize("name", ALL)
def test_html_has_no_external_reference(reports, name):
    text = _html(reports[name])
    low = text.lower()
    assert "http://" not in low and "https://" not in low
    tags = _parse(text)
    assert {t for t, _ in tags.tags} & FORBIDDEN_TAGS == set()
    for tag, attrs in tags.tags:
        for attr, value in attrs.items():
            if attr in URL_ATTRS or attr.startswith("on"):
                assert attr in URL_ATTRS, f"<{tag}> has an event handler {attr}"
                assert value is not None and (value.startswith("data:") or value.startswith("#")), \
                    f"<{tag} {attr}={value[:80]!r}> points outside the file"
        if tag == "meta":
            assert "http-equiv" not in attrs, attrs
        assert "url(" not in (attrs.get("style") or "").lower()
    css = tags.style.lower()
    assert css.strip(), "no inline CSS"
    assert "url(" not in css and "@import" not in css and "@font-face" not in css
    assert [p.name for p in reports[name].glob("*.html")] == ["report.html"]


@pytest.mark.parametrize("name", ALL)
def test_every_figure_is_an_embedded_valid_png(reports, name):
    folder = reports[name]
    tags = _parse(_html(folder))
    assert tags.images, "no figures in the report"
    seen = set()
    for figure_id, attrs in tags.images:
        src = attrs["src"]
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix), src[:60]
        data = base64.b64decode(src[len(prefix):], validate=True)
        width, height = png_info(data)
        assert width > 0 and height > 0
        assert attrs.get("alt"), "a figure without alt text"
        assert figure_id and figure_id.startswith("fig-"), figure_id
        fig = figure_id[len("fig-"):]
        seen.add(fig)
        assert (folder / f"{fig}.png").read_bytes() == data, f"{fig}.png differs from the embedded figure"
    assert seen == {p.stem for p in folder.glob("*.png")}


@pytest.mark.parametrize(("name", "gated"), [("rnn_tanh", False), ("rnn_relu", False), ("exploding", False),
                                             ("lstm", True), ("gru", True)])
def test_png_files_are_named_after_what_they_show(reports, name, gated):
    folder = reports[name]
    expected = {f"{f}.png" for f in FIGURES} | ({f"{GATED_FIGURE}.png"} if gated else set())
    assert {p.name for p in folder.glob("*.png")} == expected
    for p in folder.glob("*.png"):
        w, h = png_info(p.read_bytes())
        assert w >= 100 and h >= 100, (p.name, w, h)
    assert {p.name for p in folder.iterdir()} == expected | {"report.html", "metrics.json"}


def test_eigenvalue_figure_has_one_panel_per_layer(reports):
    """Two stacked layers draw two panels side by side: the figure is wider than a one-layer one."""
    w1, _ = png_info((reports["rnn_tanh"] / "eigenvalues_w_hh.png").read_bytes())
    w2, _ = png_info((reports["lstm"] / "eigenvalues_w_hh.png").read_bytes())
    assert w2 > 1.5 * w1


# ==================================================================================================================
# content
# ==================================================================================================================
@pytest.mark.parametrize("name", ["rnn_tanh", "lstm", "exploding"])
def test_every_number_table_holds_the_verdict_numbers(reports, name):
    folder = reports[name]
    metrics = strict_json((folder / "metrics.json").read_text("utf-8"))
    rows = _number_rows(_html(folder))
    keys = ["hidden_size", "seq_len", "batch_size", "seed", "gradient_flow.horizon_steps",
            "gradient_flow.decay_per_step", "gradient_flow.horizon_factor", "thresholds.growth_factor",
            "thresholds.lyapunov_chaos", "rules[0].value", "rules[0].threshold"]
    for i in range(metrics["num_layers"]):
        keys += [f"layers[{i}].{k}" for k in ("spectral_radius", "sigma_max", "horizon_steps", "decay_per_step",
                                                "lyapunov_top")]
    for key in keys:
        assert key in rows, f"{key} missing from the Every number table"
        assert rows[key] == _fmt(_lookup(metrics, key)), (key, rows[key], _lookup(metrics, key))
    # long per-step lists are summarised, not dumped
    assert rows["gradient_flow.grad_norm"].startswith(f"{metrics['seq_len']} values") or metrics["seq_len"] <= 12 \
        or metrics["nonfinite"] is not None


@pytest.mark.parametrize("name", ALL)
def test_html_verdict_and_summary_match_metrics(reports, name):
    folder = reports[name]
    metrics = strict_json((folder / "metrics.json").read_text("utf-8"))
    assert_contract_keys(metrics)
    text = _html(folder)
    verdict = metrics["verdict"]
    assert f'<span class="verdict {verdict}">{verdict}</span>' in text
    assert f"<title>rnndiag report: {metrics['cell']} ({verdict})</title>" in text
    for advice in metrics["advice"]:
        assert str(markupsafe.escape(advice)) in text
    for layer in metrics["layers"]:
        assert f"{layer['spectral_radius']:.4g}" in text
    assert str(markupsafe.escape(metrics["command"])) in text  # "Reproduce with:"


def test_exploding_report_records_the_overflow(reports):
    m = strict_json((reports["exploding"] / "metrics.json").read_text("utf-8"))
    assert m["verdict"] == "exploding"
    assert m["nonfinite"] is not None
    # per-step lists keep the contract's length T, null from the overflow on
    flow, step = m["gradient_flow"], m["nonfinite"]["step"]
    assert len(flow["grad_norm"]) == m["seq_len"]
    assert m["analysed_steps"] == step
    assert all(v is None for v in flow["log10_jacobian_product_norm"][step:])
    assert all(v is not None for v in flow["log10_jacobian_product_norm"][:step])
    assert any("finite steps" in n for n in m["notes"])


@pytest.mark.slow
def test_long_sequence_draws_quickly(tmp_path, monkeypatch):
    """T = 100000 (H = 2, B = 1, task noise): curves are thinned for drawing, the JSON keeps every step."""
    spent = {"figures": 0.0, "png": 0.0}

    def timed(key, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t0
        return wrapper

    monkeypatch.setattr(figures_mod, "all_figures", timed("figures", figures_mod.all_figures))
    monkeypatch.setattr(figures_mod, "png_bytes", timed("png", figures_mod.png_bytes))
    out = tmp_path / "long"
    res = invoke(["analyze", "--cell", "rnn_tanh", "--hidden-size", "2", "--batch-size", "1", "--task", "noise",
                  "--seq-len", "100000", "--out", out, "--quiet"])
    assert_clean_exit(res, "T = 100000")
    assert spent["figures"] > 0 and spent["png"] > 0, "the figure code was not reached"
    assert spent["figures"] + spent["png"] < 10.0, spent
    m = strict_json((out / "metrics.json").read_text("utf-8"))
    assert m["seq_len"] == 100000
    assert len(m["gradient_flow"]["grad_norm"]) == 100000
    assert len(m["gradient_flow"]["log10_jacobian_product_norm"]) == 100000
    for f in FIGURES:
        w, h = png_info((out / f"{f}.png").read_bytes())
        assert w > 0 and h > 0
    rows = _number_rows(_html(out))
    assert rows["gradient_flow.grad_norm"].startswith("100000 values")


# ==================================================================================================================
# atomic writing
# ==================================================================================================================
def _assert_no_report(tmp_path, out, before):
    """No report, no temporary folder, nothing else changed (the folder's own mtime may move: a temporary folder
    was created and removed in it)."""
    assert not out.exists(), f"a report folder was left at {out}: {sorted(p.name for p in out.iterdir())}"
    assert hidden_temp_entries(out.parent) == [], "a hidden temporary folder was left behind"
    after = snapshot(tmp_path)
    before, after = dict(before), dict(after)
    before.pop("."), after.pop(".")
    assert after == before, diff_snapshots(before, after)


def test_failed_rename_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def boom(src, dst, *a, **k):
        calls.append((src, dst))
        raise OSError(errno.EXDEV, "simulated rename failure")

    monkeypatch.setattr(output_mod.os, "rename", boom)
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    line = assert_one_line_error(invoke(["analyze", *SMALL, "--out", out]))
    assert calls, "os.rename was never reached"
    assert "cannot write the report" in line and "simulated rename failure" in line
    _assert_no_report(tmp_path, out, before)


@pytest.mark.parametrize("fail_at", [1, 3, 8])
def test_failed_file_write_midway_leaves_nothing(tmp_path, monkeypatch, fail_at):
    """The disk fills up while the 1st / 3rd / last file of the report is written."""
    real = pathlib.Path.write_bytes
    calls = []

    def flaky(self, data):
        calls.append(self.name)
        if len(calls) == fail_at:
            real(self, data[: len(data) // 2])  # half a file, then the failure
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", flaky)
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    line = assert_one_line_error(invoke(["analyze", *SMALL, "--out", out]))
    assert len(calls) == fail_at, calls
    assert "No space left on device" in line
    _assert_no_report(tmp_path, out, before)


def test_interrupt_while_writing_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C in the middle of writing: exit 130, no traceback, no report, no temporary folder."""
    real = pathlib.Path.write_bytes
    calls = []

    def interrupted(self, data):
        calls.append(self.name)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", interrupted)
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    res = invoke(["analyze", *SMALL, "--out", out])
    assert res.exit_code == 130, (res.exit_code, res.stderr, res.exception)
    assert "Traceback" not in res.stderr
    assert "rnndiag:" in res.stderr
    assert len(calls) == 4
    _assert_no_report(tmp_path, out, before)


def test_failure_while_forcing_into_a_folder_leaves_whole_files_only(tmp_path, monkeypatch):
    """With --force each file is replaced atomically: a failure leaves no temporary file and no partial file; the
    user's own files are untouched."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine\n")
    (out / "metrics.json").write_text('{"old": 1}')
    real = os.replace
    calls = []

    def flaky(src, dst, *a, **k):
        calls.append(Path(dst).name)
        if len(calls) == 2:
            raise OSError(errno.EIO, "simulated I/O error")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(output_mod.os, "replace", flaky)
    line = assert_one_line_error(invoke(["analyze", *SMALL, "--out", out, "--force", "--format", "png,json"]))
    assert "simulated I/O error" in line
    assert len(calls) == 2
    assert hidden_temp_entries(out) == []
    assert (out / "keep.txt").read_text() == "mine\n"
    for p in out.glob("*.png"):
        png_info(p.read_bytes())  # every PNG present is whole
    assert strict_json((out / "metrics.json").read_text()) is not None


@pytest.mark.slow
def test_ctrl_c_in_a_subprocess_leaves_nothing(tmp_path):
    """SIGINT to a real run during its (long) analysis: exit 130, no traceback, nothing written."""
    cmd = [sys.executable, "-m", "rnndiag", "analyze", "--hidden-size", "2", "--batch-size", "1", "--task", "noise",
           "--seq-len", "100000", "--out", "out"]
    before = snapshot(tmp_path)
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)
    try:
        time.sleep(4.0)  # imports take < 1 s; the analysis of T = 100000 takes far longer
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (proc.returncode, stderr[-2000:])
    assert "Traceback" not in stderr
    assert "rnndiag:" in stderr
    _assert_no_report(tmp_path, tmp_path / "out", before)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("force", [False, True])
def test_report_gets_ordinary_permissions(tmp_path, umask_022, force):
    """The temporary names come from mkdtemp/mkstemp (mode 0700/0600); the finished report must not keep them."""
    out = tmp_path / "out"
    if force:
        out.mkdir()
        (out / "keep.txt").write_text("x")
    args = ["analyze", *SMALL, "--out", out, "--format", "json,html", "-q"] + (["--force"] if force else [])
    assert_clean_exit(invoke(args))
    assert out.stat().st_mode & 0o777 == 0o755
    for name in ("metrics.json", "report.html"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name
