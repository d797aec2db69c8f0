"""The renderers of ``rnndiag report RUN_DIR`` (rnndiag/render/run_report.py) on run metrics: every figure draws for
a normal run, a single capture, all-null numbers, captures of different lengths, huge values and an empty run; the
HTML page is self-contained, escaped, says what it looked at first and warns of non-finite gradients; the terminal
summary fits the console. Synthetic metrics (the shape of :func:`rnndiag.run.run_metrics`), and one real run
recorded with torch when it is installed."""

from __future__ import annotations

import copy
import io
import re
import warnings

import numpy as np
import pytest
from rich.cells import cell_len
from rich.console import Console

from rnndiag.render.figures import draw_figures
from rnndiag.render.run_report import (
    heatmap_figure,
    memory_figure,
    name_part,
    render_run_html,
    run_figures,
    run_summary,
    verdict_timeline_figure,
)

PNG = b"\x89PNG\r\n\x1a\n"
LOOKED_AT = ("a watched PyTorch training run: at each capture, the user's input and loss on the weights of that "
             "iteration (trained after iteration 0), replayed exactly")
VERDICTS = ("vanishing", "healthy", "exploding")
CONFIG = {"command": "rnndiag report runs/x", "title": "run runs/x"}


def _series(module, layer, direction, captures, gated, rng):
    its = [it for it, _ in captures]
    lens = [t for _, t in captures]
    rows = [list(np.round(-0.1 * np.arange(t)[::-1] + rng.normal(0, 0.05, t), 4)) for t in lens]
    return {"module": module, "layer": layer, "direction": direction,
            "name": f"layer {layer}" + (" reverse" if direction == "reverse" else ""),
            "memory_gate": "f" if gated else None, "iterations": its,
            "verdict": [VERDICTS[i % 3] for i in range(len(its))], "rule": ["horizon"] * len(its),
            "horizon_steps": [min(t, 5 + i) for i, t in enumerate(lens)],
            "horizon_censored": [5 + i >= t for i, t in enumerate(lens)],
            "decay_per_step": [-0.1 + 0.01 * i for i in range(len(its))],
            "lyapunov_top": [-0.3 + 0.05 * i for i in range(len(its))],
            "memory_gate_mean": [0.5 + 0.02 * i if gated else None for i in range(len(its))],
            "memory_timescale_steps": [1.4 + i if gated else None for i in range(len(its))],
            "seq_len": lens, "log10_grad_norm": rows}


def make_metrics(modules=(("rnn", "lstm", 2, False),), captures=((0, 20), (1, 20), (2, 20), (4, 20), (10, 20)),
                 iterations=12, nonfinite=(), skipped_captures=(), seed=0) -> dict:
    """Run metrics as run_metrics writes them: ``modules`` of (name, cell, layers, bidirectional), each captured at
    ``captures`` (iteration, sequence length)."""
    rng = np.random.default_rng(seed)
    captures = list(captures)
    series, caps, latest = [], [], {}
    for name, cell, layers, bidir in modules:
        for layer in range(layers):
            for direction in ("forward", "reverse") if bidir else ("forward",):
                series.append(_series(name, layer, direction, captures, cell != "rnn_tanh", rng))
        for k, (it, t) in enumerate(captures):
            caps.append({"iteration": it, "module": name, "file": f"it{it:08d}.npz", "verdict": VERDICTS[k % 3],
                         "verdict_detail": f"horizon 5 of {t} steps", "confidence": "low" if k == 0 else "high",
                         "stage": "init" if it == 0 else "trained", "global_grad_norm": 0.1 * (k + 1),
                         "advice": [f"advice for {name} at {it}"], "cached": True})
        if captures:
            latest[name] = {k: caps[-1][k] for k in ("iteration", "verdict", "verdict_detail", "confidence")}
    its = list(range(iterations))
    total = [float(0.5 + 0.1 * np.sin(i)) for i in its]
    bad = {e["iteration"] for e in nonfinite}
    total = [None if i in bad else v for i, v in zip(its, total)]
    return {
        "rnndiag_version": "0.1.0", "kind": "run report", "looked_at": LOOKED_AT, "run_dir": "runs/x",
        "run": {"format": 1, "kind": "rnndiag run", "created": "2026-01-01T00:00:00+0000", "rnndiag_version": "0.1.0",
                "torch_version": "2.13.0+cpu",
                "modules": [{"name": n, "cell": c, "input_size": 4, "hidden_size": 8, "num_layers": nl,
                             "bidirectional": b, "proj_size": 0, "batch_first": True} for n, c, nl, b in modules],
                "schedule": {"every": 10, "log_spaced": True}, "grad_scaler": False, "optimizer": "Adam"},
        "iterations": {"count": len(its), "last": its[-1] if its else None, "partial_last_line": False,
                       "damaged_lines": 0, "iteration": its, "grad_norm_total": total,
                       "grad_norm_at_step": [None if v is None else min(v, 0.55) for v in total],
                       "loss_scale": None, "skipped": [1] if iterations > 1 else [],
                       "clipped": [i for i, v in zip(its, total) if v is not None and v > 0.55],
                       "captured": [it for it, _ in captures]},
        "nonfinite": list(nonfinite), "captures": caps, "latest": latest, "series": series,
        "left_out": list(skipped_captures),
    }


def all_null(m: dict) -> dict:
    """Every number of the series, captures and iterations null (JSON's NaN and infinity)."""
    m = copy.deepcopy(m)
    for s in m["series"]:
        for key in ("horizon_steps", "horizon_censored", "decay_per_step", "lyapunov_top", "memory_gate_mean",
                    "memory_timescale_steps", "seq_len"):
            s[key] = [None] * len(s[key])
        s["log10_grad_norm"] = [[None] * len(r) for r in s["log10_grad_norm"]]
    for c in m["captures"]:
        c["global_grad_norm"] = None
    it = m["iterations"]
    it["grad_norm_total"] = [None] * it["count"]
    it["grad_norm_at_step"] = [None] * it["count"]
    return m


def huge(m: dict) -> dict:
    """Values at the edge of the float range, where matplotlib's transforms overflow."""
    m = copy.deepcopy(m)
    for s in m["series"]:
        s["log10_grad_norm"] = [[307.9 if i % 2 else -307.9 for i in range(len(r))] for r in s["log10_grad_norm"]]
        s["lyapunov_top"] = [1e300, -1e300, 1e305, 1.7e308, 0.0][: len(s["lyapunov_top"])]
        s["decay_per_step"] = [-1.7e308] * len(s["decay_per_step"])
        s["memory_timescale_steps"] = [1e-320, 1e308, 1.0, 1e300, 5.0][: len(s["iterations"])]
        s["horizon_steps"] = [10**300] * len(s["horizon_steps"])
    m["iterations"]["grad_norm_total"] = [1e308, 1e-320, 1.7e308, 5e-324, 1.0, 1e300] * 2
    m["iterations"]["grad_norm_at_step"] = [1.0] * 12
    m["iterations"]["clipped"] = list(range(12))
    for c in m["captures"]:
        c["global_grad_norm"] = 1.7e308
    return m


NONFINITE = {"iteration": 7, "parameters": ["rnn.weight_hh_l0", "rnn.bias_hh_l0"],
             "first_parameter": "rnn.weight_hh_l0", "module": "rnn", "kind": "gradient", "layer": 0,
             "direction": "forward", "step": 13}

CASES = {
    "normal": make_metrics(),
    "single capture": make_metrics(captures=[(0, 20)], iterations=1),
    "ragged lengths": make_metrics(modules=(("enc", "gru", 2, True), ("dec", "rnn_tanh", 1, False)),
                                   captures=[(0, 10), (1, 31), (3, 4), (9, 57), (30, 1)]),
    "all null": all_null(make_metrics()),
    "huge values": huge(make_metrics()),
    "non-finite": make_metrics(nonfinite=[NONFINITE]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_figure_draws(case):
    m = CASES[case]
    builders = run_figures(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a figure must not warn either (draw_figures would hide it)
        pngs, failed = draw_figures(builders)
    assert failed == {}
    gated = {s["module"] for s in m["series"] if s["memory_gate"]}
    expected = {"global_grad_norm", "verdict_timeline"}
    for s in m["series"]:
        part = name_part(s["module"])
        expected |= {f"grad_flow_heatmap_{part}_{s['layer']}" + ("_reverse" if s["direction"] == "reverse" else ""),
                     f"horizon_{part}", f"decay_lyapunov_{part}"}
        if s["module"] in gated:
            expected.add(f"memory_gate_{part}")
    assert set(pngs) == expected == set(builders)
    assert all(png.startswith(PNG) for png in pngs.values())


def test_each_builder_draws_on_its_own():
    """A builder is a zero-argument callable returning a Figure (or None)."""
    for name, build in run_figures(CASES["ragged lengths"]).items():
        fig = build()
        assert fig is not None, name
        assert fig.get_axes(), name


def test_an_empty_run_draws_nothing_and_fails_nothing():
    m = make_metrics(captures=[], iterations=0)
    pngs, failed = draw_figures(run_figures(m))
    assert pngs == {} and failed == {}
    render_run_html(m, pngs, failed, CONFIG)  # and the page and summary still render
    console = Console(record=True, width=80, file=io.StringIO())
    run_summary(console, m, None)
    assert "no analysed capture yet" in console.export_text()


def test_series_with_lists_of_other_lengths_and_missing_keys_draw():
    """An old or damaged metrics dict: lists shorter than the iterations, keys missing, rows not lists."""
    m = make_metrics()
    s = m["series"][0]
    s["horizon_steps"] = s["horizon_steps"][:2]
    del s["horizon_censored"]
    s["log10_grad_norm"][1] = None
    m["iterations"]["grad_norm_at_step"] = [0.1]
    pngs, failed = draw_figures(run_figures(m))
    assert failed == {} and "grad_flow_heatmap_rnn_0" in pngs


def test_heatmap_rows_are_aligned_at_the_last_step():
    m = CASES["ragged lengths"]
    s = m["series"][0]
    fig = heatmap_figure(s)
    ax = fig.get_axes()[0]
    data = ax.get_images()[0].get_array()
    assert data.shape == (5, 57)
    for row, values in zip(data, s["log10_grad_norm"]):  # padded on the left, the last step in the last column
        n = len(values)
        assert np.ma.getmaskarray(row)[: 57 - n].all() or np.isnan(np.ma.filled(row[: 57 - n], np.nan)).all()
        np.testing.assert_allclose(np.ma.filled(row[57 - n:], np.nan), values)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "3", "9", "30"]
    assert "aligned at the end" in ax.get_xlabel() and "reverse" not in ax.get_xlabel()
    reverse = next(x for x in m["series"] if x["direction"] == "reverse")
    assert "reverse direction" in heatmap_figure(reverse).get_axes()[0].get_xlabel()


def test_memory_figure_is_none_without_a_gated_series():
    m = make_metrics(modules=(("dec", "rnn_tanh", 2, False),))
    assert memory_figure(m["series"], "dec") is None
    assert not any(name.startswith("memory_gate") for name in run_figures(m))


def test_verdict_timeline_is_none_without_captures():
    assert verdict_timeline_figure(make_metrics(captures=[])) is None


def test_figure_names_are_file_names_and_unique():
    m = make_metrics(modules=(("<b>x</b>", "lstm", 1, False), ("a.b", "gru", 1, False), ("a_b", "gru", 1, False)))
    names = list(run_figures(m))
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", n) for n in names), names
    assert "grad_flow_heatmap_b_x_b_0" in names
    assert {"horizon_a_b", "horizon_a_b_2"} <= set(names)


# ---------------------------------------------------------------------------------------------------------------
# HTML


def _page(m: dict, draw: bool = False, failed: dict | None = None) -> str:
    pngs, not_drawn = draw_figures(run_figures(m)) if draw else ({}, {})
    return render_run_html(m, pngs, {**not_drawn, **(failed or {})}, CONFIG)


def test_html_escapes_what_the_user_named():
    evil = "<b>x</b>"
    m = make_metrics(modules=((evil, "lstm", 1, False),), nonfinite=[{**NONFINITE, "module": evil,
                                                                        "first_parameter": f"{evil}.weight_hh_l0"}],
                     skipped_captures=["it00000005.npz: bad <script>alert(1)</script>"])
    page = render_run_html(m, {}, {}, {"command": f"rnndiag report '{evil}'", "title": f"run {evil}"})
    assert evil not in page and "<script>alert" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_html_says_what_it_looked_at_first_and_warns():
    m = make_metrics(nonfinite=[NONFINITE], skipped_captures=["it00000005.npz: damaged"])
    page = _page(m)
    body = page[page.index("<body>"):]
    h1_end = body.index("</h1>")
    first_p = re.search(r"<p[^>]*>", body[h1_end:])
    assert first_p and 'id="looked-at"' in first_p.group(0)
    assert "the user&#39;s input and loss" in body[h1_end: h1_end + 400]
    warnings_ = re.findall(r'<p class="warning">(.*?)</p>', page, re.S)
    assert any("iteration 7" in w and "rnn.weight_hh_l0" in w and "time step 13" in w for w in warnings_)
    assert any("left out" in w for w in warnings_)
    assert body.index('class="warning"') < body.index('id="latest"')  # before everything else
    for section in ("latest", "captures", "nonfinite", "figures", "run", "numbers"):
        assert f'id="{section}"' in page
    assert "<td><code>rnn.weight_hh_l0</code></td><td>rnn</td>" in page


def test_html_without_problems_has_no_warning():
    page = _page(make_metrics())
    assert 'class="warning"' not in page
    assert "None: every logged gradient was finite." in page


def test_html_is_self_contained():
    page = _page(CASES["ragged lengths"], draw=True)
    low = page.lower()
    assert "http://" not in low and "https://" not in low and "<script" not in low
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert 'id="fig-grad_flow_heatmap_enc_1_reverse"' in page
    assert "gradient flow over training: enc layer 1 reverse" in page  # the run report's own titles and captions
    assert "Every number" in page and "series[0].log10_grad_norm" in page


def test_html_shows_a_figure_that_failed_in_its_place():
    page = _page(make_metrics(), failed={"horizon_rnn": "ValueError: <bad>"})
    assert "figure horizon_rnn could not be drawn: ValueError: &lt;bad&gt;" in page


# ---------------------------------------------------------------------------------------------------------------
# Terminal


def _summary(m: dict, width: int, path: str | None = "reports/run/report.html") -> str:
    console = Console(record=True, width=width, file=io.StringIO(), color_system=None)
    run_summary(console, m, path)
    return console.export_text()


@pytest.mark.parametrize("width", [80, 200])
@pytest.mark.parametrize("case", list(CASES))
def test_terminal_summary_fits(case, width):
    text = _summary(CASES[case], width)
    lines = text.splitlines()
    assert lines[0].startswith("looked at:")
    assert all(cell_len(line) <= width for line in lines), max(lines, key=cell_len)
    assert "…" not in text
    assert lines[-1] == "report: reports/run/report.html"
    for module in CASES[case]["latest"]:
        assert any(line.startswith(f"latest {module} (iteration ") for line in lines)


def test_terminal_summary_content():
    m = make_metrics(modules=(("[bold]enc[/bold]", "gru", 2, True),), nonfinite=[NONFINITE],
                     skipped_captures=["it00000005.npz: damaged"])
    text = _summary(m, 200, None)
    lines = text.splitlines()
    assert lines[0] == f"looked at: {LOOKED_AT}"
    assert lines[1].startswith("warning: non-finite gradient at iteration 7: the gradient of rnn.weight_hh_l0")
    assert "time step 13" in " ".join(" ".join(lines[1:3]).split())  # the warning wraps at the console's width
    assert "[bold]enc[/bold]" in text  # a user string is text, never markup
    assert "left out: it00000005.npz: damaged" in text
    assert "report:" not in text
    header = next(line for line in lines if "iteration" in line and "verdict" in line)
    for column in ("iteration", "module", "verdict", "horizon / T", "top Lyapunov", "global grad norm"):
        assert column in header
    assert re.search(r"│ +5 / 20 \(L\dr?\) │", text)  # the shortest layer's horizon, named


def test_terminal_summary_lists_at_most_40_captures():
    m = make_metrics(captures=[(i, 20) for i in range(100)], iterations=100)
    text = _summary(m, 120)
    rows = [line for line in text.splitlines() if re.match(r"│\s+\d+ │", line)]
    assert len(rows) == 40
    assert rows[0].split("│")[1].strip() == "0" and rows[-1].split("│")[1].strip() == "99"  # the first and the last
    assert "40 of 100 captures shown" in text


# ---------------------------------------------------------------------------------------------------------------
# A real run


@pytest.mark.torch
@pytest.mark.slow
def test_a_real_run_renders(tmp_path):
    torch = pytest.importorskip("torch")
    import rnndiag.pytorch
    from rnndiag.run import analyze_run, run_metrics

    torch.manual_seed(0)
    nn = torch.nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.GRU(3, 6, num_layers=1, bidirectional=True, dtype=torch.float64)
            self.head = nn.Linear(12, 1, dtype=torch.float64)

        def forward(self, x):
            return self.head(self.enc(x)[0][-1])

    model = Model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with rnndiag.pytorch.watch(model, tmp_path / "run", every=3, optimizer=opt):
        for i in range(7):
            x = torch.randn(6 + 2 * i, 2, 3, dtype=torch.float64)  # another length at every iteration
            loss = model(x).square().mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            opt.step()
    m = run_metrics(analyze_run(tmp_path / "run"))
    assert [len(r) for r in m["series"][0]["log10_grad_norm"]] == [6, 12, 18]
    pngs, failed = draw_figures(run_figures(m))
    assert failed == {}
    assert {"grad_flow_heatmap_enc_0", "grad_flow_heatmap_enc_0_reverse", "horizon_enc", "decay_lyapunov_enc",
            "memory_gate_enc", "global_grad_norm", "verdict_timeline"} == set(pngs)
    page = render_run_html(m, pngs, failed, CONFIG)
    assert page.count("data:image/png;base64,") == len(pngs)
    for width in (80, 200):
        text = _summary(m, width)
        assert text.startswith("looked at:")
        assert all(cell_len(line) <= width for line in text.splitlines())
