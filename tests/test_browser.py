"""Open a generated report in headless Chromium: every figure decodes, no console error, no network request; the
figures sit in a responsive grid (two side by side on a wide screen, one per row on a phone, no sideways scroll),
each with a caption saying how to read it.

Uses the system's Debian chromium (``/usr/bin/chromium``) through Playwright's sync API -- never a downloaded
browser -- and, as a fallback that needs no Playwright, ``chromium --headless --screenshot``.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from _cli_helpers import SMALL, assert_clean_exit, invoke, png_info

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
HAS_CHROMIUM = os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not HAS_CHROMIUM, reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def report_files(tmp_path_factory) -> dict[str, Path]:
    """report.html of a plain RNN and of a 2-layer LSTM (one more figure: gate saturation)."""
    base = tmp_path_factory.mktemp("browser")
    out = {}
    for name, extra in (("rnn_tanh", []), ("lstm", ["--cell", "lstm", "--num-layers", "2", "--forget-bias", "1"])):
        res = invoke(["analyze", *SMALL, *extra, "--out", base / name, "--format", "html", "--quiet"])
        assert_clean_exit(res, name)
        out[name] = base / name / "report.html"
    return out


@pytest.fixture(scope="module")
def comparison_file(tmp_path_factory) -> Path:
    """report.html of a tiny `rnndiag init` (two schemes, no training: two figures)."""
    out = tmp_path_factory.mktemp("browser") / "init"
    res = invoke(["init", "--cell", "rnn_tanh", *SMALL, "--schemes", "pytorch,orthogonal", "--out", out,
                  "--format", "html", "--quiet"])
    assert_clean_exit(res, "init")
    return out / "report.html"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def _load(browser, report: Path, shot: Path) -> dict:
    """Open ``report`` by its file:// URL; collect console errors, page errors and every request; screenshot."""
    page_url = report.resolve().as_uri()
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    seen = {"url": page_url, "console_errors": [], "page_errors": [], "requests": [], "failed": []}
    page.on("console", lambda msg: seen["console_errors"].append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: seen["page_errors"].append(str(exc)))
    page.on("request", lambda req: seen["requests"].append(req.url))
    page.on("requestfailed", lambda req: seen["failed"].append(req.url))
    try:
        page.goto(page_url, wait_until="load")
        page.wait_for_load_state("networkidle")
        seen["images"] = page.evaluate(
            "() => Array.from(document.images).map(i => ({src: i.src.slice(0, 30), complete: i.complete,"
            " w: i.naturalWidth, h: i.naturalHeight}))")
        seen["title"] = page.title()
        page.screenshot(path=str(shot), full_page=True)
    finally:
        context.close()
    seen["outside"] = [u for u in seen["requests"] if u != page_url and not u.startswith("data:")]
    return seen


@pytest.mark.parametrize("name", ["rnn_tanh", "lstm"])
def test_report_renders_offline_in_chromium(browser, report_files, name, tmp_path):
    shot = tmp_path / f"{name}.png"
    seen = _load(browser, report_files[name], shot)
    expected = 7 if name == "lstm" else 6
    assert len(seen["images"]) == expected, seen["images"]
    for img in seen["images"]:
        assert img["src"].startswith("data:image/png;base64,"), img
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, img
    assert seen["console_errors"] == [], seen["console_errors"]
    assert seen["page_errors"] == [], seen["page_errors"]
    assert seen["failed"] == [], seen["failed"]
    assert seen["outside"] == [], f"the report made requests: {seen['outside']}"
    assert seen["url"] in seen["requests"]
    assert seen["title"].startswith("rnndiag report:")
    w, h = png_info(shot.read_bytes())
    assert w > 0 and h > 900, (w, h)  # full page: taller than the viewport


def test_the_browser_checks_can_fail(browser, report_files, tmp_path):
    """Control: a report with an external image and a console error is caught by the same collectors."""
    bad = tmp_path / "bad.html"
    text = report_files["rnn_tanh"].read_text("utf-8")
    bad.write_text(text.replace("</body>", '<img src="http://127.0.0.1:9/x.png" alt="x">'
                                           '<script>console.error("control")</script></body>'), "utf-8")
    seen = _load(browser, bad, tmp_path / "bad.png")
    assert "http://127.0.0.1:9/x.png" in seen["outside"]
    assert "control" in seen["console_errors"]
    assert any(img["w"] == 0 for img in seen["images"])


def test_chromium_headless_screenshot(report_files, tmp_path):
    """No Playwright: the Chromium binary itself renders the report to a PNG."""
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    cmd = [CHROMIUM, "--headless", *CHROMIUM_ARGS, f"--user-data-dir={profile}", "--hide-scrollbars",
           "--window-size=1100,2400", f"--screenshot={shot}", report_files["rnn_tanh"].resolve().as_uri()]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert shot.is_file() and shot.stat().st_size > 0, res.stderr[-2000:]
    w, h = png_info(shot.read_bytes())
    assert (w, h) == (1100, 2400)


# -- the figure grid at two widths -----------------------------------------------------------------------------------
WIDE = {"viewport": {"width": 1200, "height": 900}}
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 3}
LAYOUT_JS = """() => ({
  innerWidth: window.innerWidth,
  scrollWidth: document.documentElement.scrollWidth,
  figures: Array.from(document.querySelectorAll('figure')).map(f => {
    const r = f.getBoundingClientRect();
    const img = f.querySelector('img');
    const cap = f.querySelector('figcaption');
    return {id: f.id, top: Math.round(r.top + window.scrollY), bottom: Math.round(r.bottom + window.scrollY),
            left: r.left, right: r.right, width: r.width,
            img: img ? {complete: img.complete, w: img.getBoundingClientRect().width, nw: img.naturalWidth,
                        right: img.getBoundingClientRect().right} : null,
            note: (f.querySelector('.figure-error') || {}).textContent || null,
            caption: cap ? cap.textContent.trim() : ''};
  })})"""


def _layout(browser, report: Path, device: dict, *, css: str | None = None, html: str | None = None) -> dict:
    """The figures' boxes and the page's scroll width, with ``report`` opened on ``device``; ``css`` or ``html``
    (controls) are added to the page first."""
    context = browser.new_context(**device)
    page = context.new_page()
    try:
        page.goto(report.resolve().as_uri(), wait_until="load")
        if css:
            page.add_style_tag(content=css)
        if html:
            page.evaluate("h => document.body.insertAdjacentHTML('beforeend', h)", html)
        return page.evaluate(LAYOUT_JS)
    finally:
        context.close()


def _rows(figures: list[dict]) -> list[list[dict]]:
    """Figures grouped by the row they sit in (the same top, within a pixel)."""
    rows: list[list[dict]] = []
    for f in sorted(figures, key=lambda f: (f["top"], f["left"])):
        if rows and abs(rows[-1][0]["top"] - f["top"]) <= 1:
            rows[-1].append(f)
        else:
            rows.append([f])
    return rows


def assert_two_columns(layout: dict) -> None:
    figs = layout["figures"]
    assert len(figs) >= 2, figs
    rows = _rows(figs)
    pairs = [r for r in rows if len(r) == 2]
    assert pairs, f"no two figures side by side: {[[f['id'] for f in r] for r in rows]}"
    for row in pairs:
        a, b = row
        assert b["left"] >= a["right"] - 1, (a, b)  # side by side, not overlapping
    assert all(len(r) <= 2 for r in rows), [[f["id"] for f in r] for r in rows]
    assert layout["scrollWidth"] <= layout["innerWidth"] + 1, layout


def assert_one_column(layout: dict) -> None:
    width = layout["innerWidth"]
    assert width == 390, f"the page is laid out {width} px wide on a 390 px phone (something is too wide)"
    assert layout["scrollWidth"] <= width + 1, f"horizontal scroll on a phone: {layout['scrollWidth']} > {width}"
    for row in _rows(layout["figures"]):
        assert len(row) == 1, f"figures share a row on a phone: {[f['id'] for f in row]}"
    for f in layout["figures"]:
        assert f["left"] >= -1 and f["right"] <= width + 1, f
        if f["img"]:
            assert f["img"]["complete"] and 0 < f["img"]["w"] <= f["width"] + 1, f
            assert f["img"]["right"] <= width + 1, f
    tops = [f["top"] for f in layout["figures"]]
    for f, g in zip(layout["figures"], layout["figures"][1:]):
        assert g["top"] >= f["bottom"] - 1, (f["id"], g["id"])  # stacked, not overlapping
    assert len(set(tops)) == len(tops)


def assert_captions(layout: dict) -> None:
    for f in layout["figures"]:
        title = f["id"].removeprefix("fig-").replace("_", " ")
        assert f["caption"].startswith(title), f
        assert len(f["caption"]) > len(title) + 40, f"no caption saying how to read {f['id']}: {f['caption']!r}"


@pytest.mark.parametrize("name", ["rnn_tanh", "lstm", "init"])
def test_figures_form_a_responsive_grid(browser, report_files, comparison_file, name):
    report = comparison_file if name == "init" else report_files[name]
    wide = _layout(browser, report, WIDE)
    assert len(wide["figures"]) == {"rnn_tanh": 6, "lstm": 7, "init": 2}[name]
    assert_two_columns(wide)
    assert_captions(wide)
    phone = _layout(browser, report, PHONE)
    assert [f["id"] for f in phone["figures"]] == [f["id"] for f in wide["figures"]]
    assert_one_column(phone)
    assert_captions(phone)


def test_the_layout_checks_can_fail(browser, report_files):
    """Controls: figures stacked as plain blocks are caught on the wide screen, a too-wide element on the phone."""
    report = report_files["rnn_tanh"]
    with pytest.raises(AssertionError, match="side by side"):
        assert_two_columns(_layout(browser, report, WIDE, css=".figures { display: block !important; }"))
    with pytest.raises(AssertionError, match="390"):
        assert_one_column(_layout(browser, report, PHONE, html='<div style="width: 900px; height: 10px"></div>'))
    with pytest.raises(AssertionError, match="share a row"):
        assert_one_column(_layout(browser, report, PHONE, css=".figures { grid-template-columns: 1fr 1fr; }"))


def test_a_figure_that_could_not_be_drawn_is_a_note_in_the_grid(browser, report_files, tmp_path):
    """``figure_errors``: the figure's cell says why (escaped) and where the numbers are; the others are drawn."""
    from rnndiag.render.html import render_comparison

    embedded = dict(re.findall(r'<figure id="fig-(\w+)"[^>]*>\s*<img src="data:image/png;base64,([^"]+)"',
                               report_files["rnn_tanh"].read_text("utf-8")))
    pngs = {name: base64.b64decode(embedded[name]) for name in ("grad_norm_per_step", "singular_values")}
    reason = "ValueError: <b>axis limits</b> cannot be NaN"
    text = render_comparison("train", "<i>t</i>", "headline", [], ["a"], [["1"]], [("k", "v")], "rnndiag train",
                             {"k": 1}, pngs, figure_errors={"lyapunov_spectrum": reason})
    assert "&lt;b&gt;axis limits&lt;/b&gt;" in text and "<b>axis" not in text
    page = tmp_path / "report.html"
    page.write_text(text, "utf-8")
    wide = _layout(browser, page, WIDE)
    ids = [f["id"] for f in wide["figures"]]
    assert ids == ["fig-grad_norm_per_step", "fig-singular_values", "fig-lyapunov_spectrum"], ids
    missing = wide["figures"][2]
    assert missing["img"] is None
    assert missing["note"] == (f"figure lyapunov_spectrum could not be drawn: {reason}; the numbers are in "
                               "metrics.json")
    assert_two_columns(wide)
    assert_captions(wide)
    assert_one_column(_layout(browser, page, PHONE))


@pytest.fixture(scope="module")
def bidirectional_report(tmp_path_factory) -> Path:
    """report.html of a 2-layer bidirectional LSTM with proj_size, on a batch-first padded batch of its own."""
    import numpy as np

    from rnndiag.model import param_shapes

    base = tmp_path_factory.mktemp("browser-bi")
    rng = np.random.default_rng(0)
    shapes = param_shapes("lstm", 3, 8, 2, True, bidirectional=True, proj_size=4)
    np.savez(base / "bi.npz", **{k: rng.uniform(-0.35, 0.35, s) for k, s in shapes.items()})
    np.save(base / "x.npy", rng.standard_normal((4, 30, 3)))  # (B, T, I)
    np.save(base / "lengths.npy", np.array([30, 12, 25, 5]))
    res = invoke(["analyze", "--weights", base / "bi.npz", "--input", base / "x.npy", "--batch-first", "--lengths",
                  base / "lengths.npy", "--out", base / "out", "--format", "html", "--quiet"])
    assert_clean_exit(res, "bidirectional")
    return base / "out" / "report.html"


def test_bidirectional_projected_padded_report_renders(browser, bidirectional_report, tmp_path):
    seen = _load(browser, bidirectional_report, tmp_path / "bi.png")
    assert len(seen["images"]) == 7, seen["images"]
    for img in seen["images"]:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, img
    assert seen["console_errors"] == [] and seen["page_errors"] == [] and seen["outside"] == []
    text = bidirectional_report.read_text()
    for expected in ("layer 0 reverse", "layer 1 reverse", "W_hr W_hg", "proj_size", "sequences of 5 to 30 steps",
                     "read as (B, T, I) with --batch-first"):
        assert expected in text, expected


def test_a_report_says_first_what_it_looked_at(browser, tmp_path):
    """Loaded weights on synthetic input: the page's first lines say so, with the warning visible above the
    verdict; an HTML-looking file name (<b>w.npz) stays text."""
    import numpy as np

    import rnndiag

    weights = rnndiag.save_weights(rnndiag.init_model("gru", 2, 8, seed=0), tmp_path / "<b>w.npz")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((20, 3, 2)))
    res = invoke(["analyze", "--weights", weights, "--out", tmp_path / "out", "--format", "html", "--quiet",
                  "--seq-len", "20", "--batch-size", "3"])
    assert_clean_exit(res, "looked at")
    report = tmp_path / "out" / "report.html"
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    try:
        page = context.new_page()
        page.goto(report.resolve().as_uri(), wait_until="load")
        seen = page.evaluate(
            "() => { const box = e => e ? e.getBoundingClientRect().top : null;"
            " const look = document.getElementById('looked-at'), warn = document.querySelector('.warning'),"
            " verdict = document.getElementById('verdict');"
            " return {look: look && look.innerText, warn: warn && warn.innerText, bold: document.querySelectorAll("
            "'p b').length, yLook: box(look), yWarn: box(warn), yVerdict: box(verdict),"
            " visible: !!(warn && warn.offsetHeight > 0)}; }")
    finally:
        context.close()
    assert seen["look"].startswith("Looked at: weights of unknown stage"), seen
    assert "synthetic input (task adding" in seen["look"] and "a built-in task's loss" in seen["look"]
    assert seen["warn"].startswith("Warning: loaded weights diagnosed on synthetic input") and seen["visible"]
    assert seen["yLook"] < seen["yWarn"] < seen["yVerdict"], seen
    assert seen["bold"] == 0  # the file name <b>w.npz is escaped, not markup


@pytest.fixture(scope="module")
def run_report(tmp_path_factory) -> Path:
    """report.html of `rnndiag report` on a small run recorded with rnndiag.pytorch.watch (a 2-layer LSTM whose
    module name holds markup characters, and a GRU)."""
    torch = pytest.importorskip("torch", reason="a watched run needs torch")
    import rnndiag.pytorch

    base = tmp_path_factory.mktemp("browser-run")
    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"lstm": torch.nn.LSTM(3, 8, 2), "gru": torch.nn.GRU(8, 5)})

    def forward(x):
        return model["gru"](model["lstm"](x)[0])[0]

    model.forward = forward
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with rnndiag.pytorch.watch(model, base / "run", every=4, optimizer=opt):
        for _ in range(9):
            loss = model(torch.randn(12, 4, 3)).square().mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            opt.step()
    res = invoke(["report", base / "run", "--out", base / "out", "--format", "html", "--quiet"])
    assert_clean_exit(res, "run report")
    return base / "out" / "report.html"


def test_run_report_renders_offline_in_chromium(browser, run_report, tmp_path):
    seen = _load(browser, run_report, tmp_path / "run.png")
    assert seen["images"] and all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in seen["images"]), seen
    assert seen["console_errors"] == [] and seen["page_errors"] == [] and seen["outside"] == []
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    try:
        page = context.new_page()
        page.goto(run_report.resolve().as_uri(), wait_until="load")
        text = page.evaluate("() => document.body.innerText")
    finally:
        context.close()
    first = [line for line in text.splitlines() if line.strip()][:4]
    assert any(line.startswith("Looked at") or "looked at" in line.lower() for line in first), first
    for expected in ("lstm", "gru", "verdict"):
        assert expected in text, expected


# -- the forecast's report -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def forecast_report(tmp_path_factory) -> Path:
    """report.html of `rnndiag forecast` with a probe (two figures: the evidence and the probe's loss)."""
    out = tmp_path_factory.mktemp("browser") / "forecast"
    res = invoke(["forecast", "--cell", "gru", "--init", "tutorial", "--hidden-size", "8", "--seq-len", "20",
                  "--steps", "400", "--target-loss", "0.02", "--out", out, "--format", "html", "--quiet"])
    assert_clean_exit(res, "forecast")
    return out / "report.html"


def test_forecast_report_renders_offline_in_chromium(browser, forecast_report, tmp_path):
    seen = _load(browser, forecast_report, tmp_path / "forecast.png")
    assert len(seen["images"]) == 2, seen["images"]
    for img in seen["images"]:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, img
    assert seen["console_errors"] == [] and seen["page_errors"] == [] and seen["outside"] == []
    assert seen["title"].startswith("rnndiag forecast:")
    wide = _layout(browser, forecast_report, WIDE)
    assert [f["id"] for f in wide["figures"]] == ["fig-forecast_evidence", "fig-probe_loss"]
    assert_two_columns(wide)
    assert_captions(wide)
    assert_one_column(_layout(browser, forecast_report, PHONE))
