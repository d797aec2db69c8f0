"""Open a generated report in headless Chromium: every figure decodes, no console error, no network request.

Uses the system's Debian chromium (``/usr/bin/chromium``) through Playwright's sync API -- never a downloaded
browser -- and, as a fallback that needs no Playwright, ``chromium --headless --screenshot``.
"""

from __future__ import annotations

import os
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
