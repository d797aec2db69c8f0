"""Reading a run folder written by :func:`rnndiag.pytorch.watch` (numpy only): its header, its per-iteration log
and its captures -- what is complete, while the run may still be writing -- and analysing the captures, each
analysis cached beside its capture.

A run is read as it stands: a last log line without its newline is a line being written (left out); a capture is
complete once renamed into place (a temporary ``.it*.npz.*.tmp`` file is one being written, reported and left
out); a capture that cannot be read is reported and left out, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._version import __version__
from .capture import CaptureError, analyze_capture, load_capture
from .files import write_atomic

RUN_FORMAT = 1
RUN_FILE, ITERATIONS_FILE, CAPTURES_DIR = "run.json", "iterations.jsonl", "captures"
CACHE_SUFFIX = ".analysis.json"
RECORD_HINT = "record a run with rnndiag.pytorch.watch(model, log_dir)"


class RunError(ValueError):
    """A run folder cannot be used; the message names it and says what to do."""


def _what(run_dir: Path) -> str:
    return f"run folder {str(run_dir)!r}"


def read_run_header(run_dir) -> dict:
    """``run.json``, checked: a folder that is not a run, or a run of another format, is one :class:`RunError`."""
    run_dir = Path(run_dir)
    what = _what(run_dir)
    if not run_dir.exists():
        raise RunError(f"{what} does not exist; check the path ({RECORD_HINT})")
    if not run_dir.is_dir():
        raise RunError(f"{what} is not a folder; a capture file goes to rnndiag analyze --capture")
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise RunError(f"{what} is not an rnndiag run (it has no {RUN_FILE}); {RECORD_HINT}")
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
        version = header["format"]
    except (OSError, ValueError, KeyError, TypeError):
        raise RunError(f"{what}: {RUN_FILE} is damaged; {RECORD_HINT} again") from None
    if not isinstance(version, int) or version != RUN_FORMAT:
        if isinstance(version, int) and version > RUN_FORMAT:
            raise RunError(f"{what} is a run of format {version}, newer than this rnndiag reads ({RUN_FORMAT}; "
                           f"written by rnndiag {header.get('rnndiag_version', '?')}): upgrade rnndiag "
                           "(pip install -U rnndiag)")
        raise RunError(f"{what} is a run of format {version!r}, which this rnndiag (format {RUN_FORMAT}) does not "
                       f"read; {RECORD_HINT} again")
    return header


@dataclass(frozen=True)
class IterationLog:
    """The complete lines of ``iterations.jsonl`` and what was left out."""

    lines: list[dict]
    partial_last: bool  # a last line still being written
    damaged: int  # lines that are not JSON objects with an iteration


def read_iterations(run_dir) -> IterationLog:
    path = Path(run_dir) / ITERATIONS_FILE
    if not path.exists():
        return IterationLog([], False, 0)
    text = path.read_text(encoding="utf-8", errors="replace")
    parts = text.split("\n")
    partial = parts[-1] != ""
    lines, damaged = [], 0
    for raw in parts[:-1]:
        try:
            line = json.loads(raw)
            if not isinstance(line, dict) or not isinstance(line.get("iteration"), int):
                raise ValueError
        except ValueError:
            damaged += 1
            continue
        lines.append(line)
    return IterationLog(lines, partial, damaged)


@dataclass(frozen=True)
class CaptureFiles:
    complete: list[Path]
    in_flight: list[Path]  # temporary files of captures being written (or left by a crash)


def list_captures(run_dir) -> CaptureFiles:
    folder = Path(run_dir) / CAPTURES_DIR
    if not folder.is_dir():
        return CaptureFiles([], [])
    complete = sorted(p for p in folder.glob("it*.npz") if p.is_file())
    in_flight = sorted(p for p in folder.glob(".it*.tmp") if p.is_file())
    return CaptureFiles(complete, in_flight)


@dataclass(frozen=True)
class CaptureAnalysis:
    """One capture's diagnosis of one module: the metrics dict (``Diagnosis.to_dict()``), from the cache or new."""

    iteration: int
    module: str
    path: Path
    metrics: dict = field(repr=False)
    cached: bool


@dataclass(frozen=True)
class RunAnalysis:
    """Everything ``rnndiag report`` shows: the header, the iteration log, each capture's analyses, and what was
    left out (with why)."""

    run_dir: Path
    header: dict
    log: IterationLog
    analyses: list[CaptureAnalysis]
    skipped: list[str]  # one line per capture left out

    @property
    def modules(self) -> list[str]:
        return [m["name"] for m in self.header.get("modules", [])]


def _cache_path(capture: Path, module: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in module)
    return capture.with_name(f"{capture.name}.{safe}{CACHE_SUFFIX}")


CACHE_DEFAULTS = {"seed": 0, "dtype": "float64"}  # what analyze_capture uses when not told (with horizon_factor)


def _cache_key(capture: Path, settings: dict) -> str:
    """The cache's key: the capture file (size, time), rnndiag's version and the settings in effect (defaults
    filled in, so that report, analyze_run and watch(analyze=True) share one cache)."""
    from .analysis import HORIZON_FACTOR

    settings = {**CACHE_DEFAULTS, "horizon_factor": HORIZON_FACTOR, **settings}
    settings["dtype"] = str(np.dtype(settings["dtype"]))
    st = capture.stat()
    raw = json.dumps([__version__, st.st_size, st.st_mtime_ns, settings], sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


def analyze_capture_cached(path: Path, module: str | None = None, **settings) -> list[CaptureAnalysis]:
    """The diagnoses of a capture file's modules that receive a gradient (or only ``module``), each read from its
    cache beside the capture when the capture, rnndiag's version and the settings are the same, else computed and
    cached (atomically; an unwritable folder only costs the cache)."""
    cap = load_capture(path)
    out = []
    for m in cap.modules:
        if (module is not None and m.name != module and m.name.split("#")[0] != module) or not m.receives_gradient:
            continue
        cache = _cache_path(path, m.name)
        key = _cache_key(path, settings)
        metrics = _read_cache(cache, key)
        cached = metrics is not None
        if metrics is None:
            metrics = analyze_capture(cap, m.name, **settings).to_dict()
            try:
                write_atomic(cache, json.dumps({"key": key, "metrics": metrics}).encode())
            except OSError:
                pass
        out.append(CaptureAnalysis(cap.iteration if cap.iteration is not None else -1, m.name, path, metrics, cached))
    return out


def _read_cache(cache: Path, key: str) -> dict | None:
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("metrics"), dict):
        return None
    return data["metrics"]


def analyze_run(run_dir, module: str | None = None, progress=None, **settings) -> RunAnalysis:
    """Read a run folder as it stands and analyse every complete capture (cached). ``module`` restricts it to one
    recurrent module (by name, or a unique ending); ``progress`` is called with one line per capture."""
    run_dir = Path(run_dir)
    header = read_run_header(run_dir)
    names = [m["name"] for m in header.get("modules", [])]
    if module is not None:
        module = _choose(run_dir, names, module)
    log = read_iterations(run_dir)
    files = list_captures(run_dir)
    skipped = [f"{p.name}: being written, or left half-written by a crash (not read)" for p in files.in_flight]
    analyses: list[CaptureAnalysis] = []
    for path in files.complete:
        if progress:
            progress(path.name)
        try:
            analyses.extend(analyze_capture_cached(path, module, **settings))
        except (CaptureError, ValueError) as exc:
            skipped.append(f"{path.name}: {exc}")
    analyses.sort(key=lambda a: (a.module, a.iteration))
    return RunAnalysis(run_dir, header, log, analyses, skipped)


def _choose(run_dir: Path, names: list[str], module: str) -> str:
    if module in names:
        return module
    ending = [n for n in names if n.endswith("." + module)]
    if len(ending) == 1:
        return ending[0]
    raise RunError(f"--module {module!r} names none of the recurrent modules of {_what(run_dir)}: "
                   f"{', '.join(names) or 'none'}; pass one of these")


def finite(v) -> float | None:
    return None if v is None or not isinstance(v, (int, float)) or not math.isfinite(v) else float(v)


def _log10(values) -> list:
    out = []
    for v in values:
        v = finite(v)
        out.append(math.log10(v) if v is not None and v > 0 else None)
    return out


def _layer_series(analyses: list[CaptureAnalysis]) -> list[dict]:
    """Per (module, layer, direction): its numbers at each capture, in iteration order."""
    series: dict[tuple, dict] = {}
    for a in analyses:
        for ld in a.metrics["layers"]:
            key = (a.module, ld["layer"], ld["direction"])
            s = series.setdefault(key, {
                "module": a.module, "layer": ld["layer"], "direction": ld["direction"], "name": ld["name"],
                "memory_gate": ld["gates"].get("memory_gate"), "iterations": [], "verdict": [], "rule": [],
                "horizon_steps": [], "horizon_censored": [], "decay_per_step": [], "lyapunov_top": [],
                "memory_gate_mean": [], "memory_timescale_steps": [], "seq_len": [], "log10_grad_norm": []})
            flow, gates = ld["gradient_flow"], ld["gates"]
            s["iterations"].append(a.iteration)
            s["verdict"].append(ld["verdict"])
            s["rule"].append(ld["rule"]["rule"])
            s["horizon_steps"].append(ld["horizon_steps"])
            s["horizon_censored"].append(flow.get("horizon_censored"))
            s["decay_per_step"].append(ld["decay_per_step"])
            s["lyapunov_top"].append(ld["lyapunov_top"])
            s["memory_gate_mean"].append(gates.get("memory_gate_mean"))
            s["memory_timescale_steps"].append(gates.get("memory_timescale_steps"))
            s["seq_len"].append(a.metrics["seq_len"])
            s["log10_grad_norm"].append(_log10(flow["grad_norm"]))
    return list(series.values())


def _iteration_series(log: IterationLog) -> dict:
    lines = log.lines
    at_step = [finite(line.get("grad_norm_at_step")) for line in lines]
    total = [finite(line.get("grad_norm_total")) for line in lines]
    clipped = [line["iteration"] for line, pre, post in zip(lines, total, at_step)
               if pre is not None and post is not None and post < pre * (1 - 1e-6)]
    return {"count": len(lines), "last": lines[-1]["iteration"] if lines else None,
            "partial_last_line": log.partial_last, "damaged_lines": log.damaged,
            "iteration": [line["iteration"] for line in lines], "grad_norm_total": total,
            "grad_norm_at_step": at_step if any(v is not None for v in at_step) else None,
            "loss_scale": [finite(line.get("loss_scale")) for line in lines]
            if any(line.get("loss_scale") is not None for line in lines) else None,
            "skipped": [line["iteration"] for line in lines if line.get("skipped")],
            "clipped": clipped, "captured": [line["iteration"] for line in lines if line.get("capture")]}


def run_metrics(ra: RunAnalysis) -> dict:
    """The JSON of ``rnndiag report``: what it looked at, the run, the per-iteration series, each capture's
    verdict and the per-layer series over the captures (the heatmap's rows: log10 of the batch median of
    ``||dL/dh_t||`` per step)."""
    from .jsonsafe import jsonable

    nonfinite = [{"iteration": line["iteration"], **line["nonfinite"]} for line in ra.log.lines
                 if line.get("nonfinite")]
    captures = [{"iteration": a.iteration, "module": a.module, "file": a.path.name, "verdict": a.metrics["verdict"],
                 "verdict_detail": a.metrics["verdict_detail"], "confidence": a.metrics["confidence"],
                 "stage": a.metrics["stage"], "global_grad_norm": a.metrics["global_grad_norm"],
                 "advice": a.metrics["advice"], "cached": a.cached} for a in ra.analyses]
    latest = {}
    for c in captures:
        if c["module"] not in latest or c["iteration"] >= latest[c["module"]]["iteration"]:
            latest[c["module"]] = {k: c[k] for k in ("iteration", "verdict", "verdict_detail", "confidence",
                                                      "advice")}
    return jsonable({
        "rnndiag_version": __version__,
        "kind": "run report",
        "looked_at": ("a watched PyTorch training run: at each capture, the user's input and loss on the weights of "
                      "that iteration (trained after iteration 0), replayed exactly"),
        "run_dir": str(ra.run_dir),
        "run": ra.header,
        "iterations": _iteration_series(ra.log),
        "nonfinite": nonfinite,
        "captures": captures,
        "latest": latest,
        "series": _layer_series(ra.analyses),
        "left_out": ra.skipped,
    })
