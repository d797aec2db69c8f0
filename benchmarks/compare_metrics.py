"""Prove that a refactor changed no numbers: run one battery of commands on two versions of rnndiag and compare.

The base revision is exported with ``git archive`` into a temporary folder; the other side is a copy of the working
tree taken at the start (so edits made during the run do not leak in), or with ``--head REV`` a second exported
revision. Every case runs once per tree, in a subprocess with that tree's ``rnndiag`` first on ``sys.path`` (checked
through ``rnndiag.__file__``, as the package is installed editable), single-threaded BLAS and a fresh working folder.
JSON outputs are compared leaf by leaf, floats bit for bit; the examples by their stdout (timings, dates and paths
masked) and the JSON files they write (wall-clock keys dropped).

    python benchmarks/compare_metrics.py                       # HEAD against the working tree
    python benchmarks/compare_metrics.py --base main~3 --cases 'analyze-input*' --keep /tmp/cmp
    python benchmarks/compare_metrics.py --base HEAD --head HEAD   # self-check: everything must be identical

Exit status 0 when every case not marked expected-to-differ is identical, 1 when one differs or a run failed.
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SIDES = ("base", "head")
MAX_SHOWN = 5  # differing leaves printed per case
STDERR_TAIL = 15  # lines of stderr shown for a failed run

# Runs in the subprocess before anything else: put the tree first on sys.path and prove that it is the one imported.
BOOTSTRAP = """\
import os, sys
root = os.path.realpath(os.environ["COMPARE_ROOT"])
sys.path.insert(0, root)
import rnndiag
origin = os.path.realpath(rnndiag.__file__)
if not origin.startswith(root + os.sep):
    sys.exit(f"compare_metrics: rnndiag was imported from {origin}, not from {root}")
"""
RUN_CLI = BOOTSTRAP + """\
from rnndiag.cli import main
sys.argv = ["rnndiag", *sys.argv[1:]]
main(prog_name="rnndiag")
"""
RUN_EXAMPLE = BOOTSTRAP + """\
import runpy
script = os.path.join(root, "examples", sys.argv[1] + ".py")
sys.path.insert(0, os.path.dirname(script))  # as `python examples/<name>.py` does
sys.argv = [script, *sys.argv[2:]]
runpy.run_path(script, run_name="__main__")
"""

# Setup snippets, run (after BOOTSTRAP) in the case's working folder before the case itself.
INPUT_FILE = "x.npy"
WEIGHTS_FILE = "w.npz"
WRITE_INPUT = f"""\
import numpy as np
np.save({INPUT_FILE!r}, np.random.default_rng(2024).standard_normal((25, 3, 3)))  # (T, B, I), float64
"""


def write_weights(cell: str, num_layers: int = 1) -> str:
    """Setup code: the tree's own ``save_weights(init_model(...))`` for a model that takes the input file."""
    return (f"rnndiag.save_weights(rnndiag.init_model({cell!r}, 3, 12, num_layers={num_layers}, seed=5), "
            f"{WEIGHTS_FILE!r})\n")


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]  # rnndiag's arguments; for an example: its name, then its arguments
    expected_to_differ: str | None = None  # why the refactor may change its numbers; None: must be identical
    example: bool = False
    setup: str = ""  # Python run first in the working folder (the tree's rnndiag imported as ``rnndiag``)
    labels: tuple[tuple[str, str], ...] = ()  # (leaf path, why): text leaves the change may alter, numbers not


JSON_OUT = ("--format", "none", "--json", "-", "--quiet")
TASK_SEEDING = "the task batch seeding changes"
# What the change under test (issue 12) may alter besides the task-seeded numbers: labels, never a number.
PROBE_LABEL = ("/loss", "one name for the probe loss, the library's ('probe (last)')")
DTYPE_COMMAND = ("/command", "the reproducing command keeps --dtype")
SMALL = ("--seq-len", "30", "--batch-size", "4", "--hidden-size", "16")
FROM_INPUT = ("--input", INPUT_FILE, "--input-size", "3", "--hidden-size", "12")


def analyze(name: str, *args: str, differs: str | None = None, setup: str = "") -> Case:
    labels = () if differs else (PROBE_LABEL, *((DTYPE_COMMAND,) if "--dtype" in args else ()))
    return Case(f"analyze-{name}", ("analyze", *args, *JSON_OUT), differs, setup=setup, labels=labels)


def build_cases() -> list[Case]:
    cases = [
        analyze("demo", differs=TASK_SEEDING),
        analyze("rnn_tanh-orthogonal-noise", "--cell", "rnn_tanh", "--init", "orthogonal", "--gain", "1.5",
                "--task", "noise", *SMALL, differs=TASK_SEEDING),
    ]
    for cell in ("lstm", "gru", "rnn_relu"):
        for task in ("adding", "copy", "sine", "text"):
            for loss in ((), ("--loss", "all")):
                suffix = "-loss-all" if loss else ""
                cases.append(analyze(f"{cell}-{task}{suffix}", "--cell", cell, "--task", task, *SMALL, *loss,
                                     differs=TASK_SEEDING))
    for cell in ("rnn_tanh", "lstm", "gru", "rnn_relu"):
        cases.append(analyze(f"input-{cell}", "--cell", cell, *FROM_INPUT, setup=WRITE_INPUT))
    cases += [
        analyze("input-rnn_tanh-loss-all", "--cell", "rnn_tanh", *FROM_INPUT, "--loss", "all", setup=WRITE_INPUT),
        analyze("input-lstm-2-layers", "--cell", "lstm", "--num-layers", "2", *FROM_INPUT, setup=WRITE_INPUT),
        analyze("input-gru-2-layers", "--cell", "gru", "--num-layers", "2", *FROM_INPUT, setup=WRITE_INPUT),
        analyze("weights-gru", "--weights", WEIGHTS_FILE, "--input", INPUT_FILE,
                setup=WRITE_INPUT + write_weights("gru")),
        analyze("weights-lstm-2-layers", "--weights", WEIGHTS_FILE, "--input", INPUT_FILE,
                setup=WRITE_INPUT + write_weights("lstm", num_layers=2)),
        analyze("weights-rnn_relu", "--weights", WEIGHTS_FILE, "--cell", "rnn_relu", "--input", INPUT_FILE,
                setup=WRITE_INPUT + write_weights("rnn_relu")),
        analyze("weights-gru-noise-fallback", "--weights", WEIGHTS_FILE, "--seq-len", "25", "--batch-size", "3",
                setup=write_weights("gru"), differs=TASK_SEEDING),
        analyze("input-lstm-float32", "--cell", "lstm", "--dtype", "float32", *FROM_INPUT, setup=WRITE_INPUT),
        analyze("input-exploding-rnn_tanh-gain3", "--cell", "rnn_tanh", "--init", "orthogonal", "--gain", "3",
                *FROM_INPUT, setup=WRITE_INPUT),
        analyze("input-exploding-rnn_relu-gain50", "--cell", "rnn_relu", "--init", "orthogonal", "--gain", "50",
                *FROM_INPUT, setup=WRITE_INPUT),
        analyze("input-overflow-rnn_relu-gain50-float32", "--cell", "rnn_relu", "--init", "orthogonal", "--gain",
                "50", "--dtype", "float32", *FROM_INPUT, setup=WRITE_INPUT),
        Case("init-rnn_tanh", ("init", "--cell", "rnn_tanh", "--seq-len", "30", "--batch-size", "8", "--hidden-size",
                               "16", *JSON_OUT)),
        Case("init-lstm-train", ("init", "--cell", "lstm", "--seq-len", "30", "--batch-size", "8", "--hidden-size",
                                 "16", "--schemes", "pytorch,keras", "--train-steps", "20", *JSON_OUT)),
        Case("clip-rnn_tanh", ("clip", "--cell", "rnn_tanh", "--steps", "30", "--seq-len", "20", "--hidden-size", "16",
                               *JSON_OUT)),
        Case("train-gru", ("train", "--cell", "gru", "--steps", "40", "--seq-len", "20", "--hidden-size", "16",
                           "--diag-points", "4", *JSON_OUT)),
        Case("train-lstm-copy", ("train", "--cell", "lstm", "--task", "copy", "--steps", "40", "--seq-len", "20",
                                 "--hidden-size", "16", "--diag-points", "4", *JSON_OUT)),
        # tutorial_rnn takes no options (it ignores --quick); the others write their reports under --reports.
        Case("example-tutorial_rnn", ("tutorial_rnn", "--quick"), example=True),
    ]
    for name in ("adding_problem", "exploding", "seed_tutorial_clipping"):
        differs = "its verdicts at initialization come from 'rnndiag analyze --task sine'" if name == "exploding" \
            else None
        cases.append(Case(f"example-{name}", (name, "--quick", "--reports", "reports"), differs, example=True))
    return cases


# -- running -----------------------------------------------------------------------------------------------------
@dataclass
class Run:
    root: Path  # the tree
    workdir: Path  # the case's working folder
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    error: str | None = None  # why the run counts as failed


def export_tree(rev: str, dest: Path) -> str:
    """``git archive REV | tar -x`` into ``dest``; returns the commit id. Changes no repository state."""
    sha = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    dest.mkdir(parents=True)
    archive = subprocess.Popen(["git", "--no-optional-locks", "-C", str(REPO), "archive", sha],
                               stdout=subprocess.PIPE)
    tar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout)
    archive.stdout.close()
    if archive.wait() != 0 or tar.returncode != 0:
        sys.exit(f"compare_metrics: exporting {rev} ({sha}) failed")
    return sha


def snapshot_working_tree(dest: Path) -> None:
    """Copy the working tree's files (tracked and untracked, not ignored) into ``dest``."""
    for rel in git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0"):
        src = REPO / rel
        if rel and src.is_file():  # a file deleted but not yet staged is listed too
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def git(*args: str) -> str:
    """A read-only git command (no optional locks: the index is not refreshed behind anyone's back)."""
    proc = subprocess.run(["git", "--no-optional-locks", "-C", str(REPO), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"compare_metrics: git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def child_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONPYCACHEPREFIX")}
    env.update(COMPARE_ROOT=str(root), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONHASHSEED="0", MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")  # no __pycache__ in the trees
    return env


def run_case(case: Case, root: Path, workdir: Path, env: dict[str, str]) -> Run:
    """Run the setup, then the case, in the new folder ``workdir``; stdout and stderr are also saved next to it."""
    workdir.mkdir(parents=True)
    t0 = time.perf_counter()
    steps = [("setup", BOOTSTRAP + case.setup, ())] if case.setup else []
    steps.append(("case", RUN_EXAMPLE if case.example else RUN_CLI, case.argv))
    for step, code, argv in steps:
        proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=workdir, env=env, capture_output=True,
                              text=True)
        (workdir.parent / f"{case.name}.{step}.stdout").write_text(proc.stdout)
        (workdir.parent / f"{case.name}.{step}.stderr").write_text(proc.stderr)
        if proc.returncode != 0:
            break
    error = f"{step} exited with {proc.returncode}" if proc.returncode != 0 else None
    return Run(root, workdir, proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - t0, error)


# -- normalising ---------------------------------------------------------------------------------------------------
WALL_CLOCK_KEY = re.compile(r"(^|_)(wall_time|elapsed|duration|timings?)(_|$)|_seconds$")
TIMESTAMP = re.compile(r"\d{8}-\d{6}(-\d+)?")  # report folder names: name-YYYYmmdd-HHMMSS[-n]
DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?")
DURATION = re.compile(r"\b\d+(\.\d+)? ?(s|ms|sec|seconds)\b")
TIMING_HEADER = re.compile(r"\bwall\b|\btime\b|\bseconds\b|\(s\)")


def mask_text(text: str, run: Run) -> str:
    """The text without what changes from run to run: folders, timestamps, timings."""
    for path, label in ((run.workdir, "<CASE>"), (run.root, "<ROOT>"), (Path(tempfile.gettempdir()), "<TMP>")):
        for variant in {str(path), os.path.realpath(path)}:
            text = text.replace(variant, label)
    text = TIMESTAMP.sub("<STAMP>", text)
    text = DATETIME.sub("<DATE>", text)
    return DURATION.sub(r"<T> \2", text)


def mask_table_columns(lines: list[str]) -> list[str]:
    """Blank the cells of rich-table columns whose header is a timing (e.g. ``wall s``)."""
    out, spans = [], []
    for line in lines:
        if "┃" in line:  # a header row: find the timing columns by their character span
            bars = [i for i, ch in enumerate(line) if ch == "┃"]
            spans = [(a + 1, b) for a, b in itertools.pairwise(bars) if TIMING_HEADER.search(line[a + 1:b])]
        elif spans and "│" in line:
            for a, b in spans:
                line = line[:a] + " <T>".ljust(b - a) + line[b:]
        elif line.lstrip().startswith("└"):
            spans = []
        out.append(line)
    return out


def clean(obj: Any, run: Run, drop: frozenset[str]) -> Any:
    """A JSON value without wall-clock keys (and ``drop``), its strings masked."""
    if isinstance(obj, dict):
        return {k: clean(v, run, drop) for k, v in obj.items() if k not in drop and not WALL_CLOCK_KEY.search(k)}
    if isinstance(obj, list):
        return [clean(v, run, drop) for v in obj]
    return mask_text(obj, run) if isinstance(obj, str) else obj


def versions(obj: Any) -> set[str]:
    if isinstance(obj, dict):
        found = {obj["rnndiag_version"]} if isinstance(obj.get("rnndiag_version"), str) else set()
        return found.union(*(versions(v) for v in obj.values()))
    if isinstance(obj, list):
        return set().union(*(versions(v) for v in obj))
    return set()


def raw_document(case: Case, run: Run) -> Any:
    """What is compared, before cleaning: the JSON on stdout, or an example's stdout lines and JSON files."""
    if not case.example:
        return json.loads(run.stdout)
    lines = mask_table_columns(run.stdout.splitlines())
    files = {mask_text(str(p.relative_to(run.workdir)), run): json.loads(p.read_text())
             for p in sorted(run.workdir.rglob("*.json"))}  # report folder names carry a timestamp
    return {"stdout": lines, "files": files}


# -- comparing -----------------------------------------------------------------------------------------------------
MISSING = object()


def same_leaf(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):  # bit-identical: -0.0 != 0.0, and a NaN equals the same NaN
        return struct.pack("<d", a) == struct.pack("<d", b)
    return a == b  # None == None, strings, ints, bools


def differences(a: Any, b: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(path, base value, head value) for every leaf that differs."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            yield from differences(a.get(key, MISSING), b.get(key, MISSING), f"{path}/{key}")
    elif isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from differences(x, y, f"{path}[{i}]")
        if len(a) != len(b):
            yield f"{path} (length)", len(a), len(b)
    elif a is MISSING or b is MISSING or not same_leaf(a, b):
        yield path or "/", a, b


def show(value: Any) -> str:
    text = "<missing>" if value is MISSING else repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


@dataclass
class Outcome:
    case: Case
    status: str  # identical, differs, failed
    detail: list[str]
    seconds: tuple[float, float]


def compare(case: Case, runs: dict[str, Run]) -> Outcome:
    seconds = (runs["base"].seconds, runs["head"].seconds)
    raw, failed = {}, []
    for side, run in runs.items():
        if run.error is None:
            try:
                raw[side] = raw_document(case, run)
            except (ValueError, OSError) as exc:
                run.error = f"unreadable output ({type(exc).__name__}: {exc})"
        if run.error is not None:
            tail = "\n".join(f"      {line}" for line in run.stderr.rstrip().splitlines()[-STDERR_TAIL:])
            failed.append(f"{side}: {run.error}; stderr tail:\n{tail or '      (empty)'}")
    if failed:
        return Outcome(case, "failed", failed, seconds)
    notes, drop = [], frozenset()
    base_versions, head_versions = versions(raw["base"]), versions(raw["head"])
    if base_versions != head_versions:
        drop = frozenset({"rnndiag_version"})
        notes.append(f"rnndiag_version differs ({', '.join(sorted(base_versions)) or 'none'} vs "
                     f"{', '.join(sorted(head_versions)) or 'none'}), ignored")
    diffs = list(differences(*(clean(raw[side], runs[side], drop) for side in SIDES)))
    allowed = dict(case.labels)
    relabelled = sorted({path for path, _, _ in diffs if path in allowed})
    diffs = [d for d in diffs if d[0] not in allowed]
    notes += [f"{path} differs as expected: {allowed[path]}" for path in relabelled]
    if not diffs:
        return Outcome(case, "identical", notes, seconds)
    notes.append(f"{len(diffs)} differing leaves")
    notes += [f"{path}: base {show(a)} | head {show(b)}" for path, a, b in diffs[:MAX_SHOWN]]
    return Outcome(case, "differs", notes, seconds)


def verdict(outcome: Outcome) -> tuple[str, bool]:
    """The result column and whether it makes the comparison fail."""
    reason = outcome.case.expected_to_differ
    if outcome.status == "failed":
        return "FAILED to run", True
    if outcome.status == "differs":
        return (f"differs (expected: {reason})", False) if reason else ("DIFFERS", True)
    return (f"identical (was expected to differ: {reason})", False) if reason else ("identical", False)


# -- main ----------------------------------------------------------------------------------------------------------
def select(cases: list[Case], patterns: str | None) -> list[Case]:
    if not patterns:
        return cases
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    return [c for c in cases if any(p in c.name or fnmatch.fnmatchcase(c.name, p) for p in pats)]


def describe_working_tree() -> str:
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return (f"working tree {REPO} (on {git('rev-parse', '--short', 'HEAD')}{', with changes' if dirty else ''}), "
            "copied at start")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="HEAD", help="git revision to compare against [default: HEAD]")
    p.add_argument("--head", default=None, help="compare against this revision instead of the working tree")
    p.add_argument("--cases", default=None, help="only cases whose name contains or glob-matches one of these "
                   "comma-separated patterns")
    p.add_argument("--keep", type=Path, default=None, help="keep the raw outputs in this (new or empty) folder")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="cases run at once [default: CPU count]")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args(argv)
    cases = select(build_cases(), args.cases)
    if args.list or not cases:
        width = max((len(c.name) for c in cases), default=0)
        for c in cases:
            print(f"{c.name:<{width}}  {'expected to differ: ' + c.expected_to_differ if c.expected_to_differ else ''}"
                  .rstrip())
        if not cases:
            p.error(f"no case matches --cases {args.cases!r}")
        return 0
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        p.error(f"--keep folder {args.keep} is not empty")

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rnndiag-compare-") as tmp:
        tmp = Path(tmp)
        roots, labels = {}, {}
        roots["base"] = tmp / "base-tree"
        labels["base"] = f"{args.base} = {export_tree(args.base, roots['base'])}"
        roots["head"] = tmp / "head-tree"
        if args.head is None:
            labels["head"] = describe_working_tree()
            snapshot_working_tree(roots["head"])
        else:
            labels["head"] = f"{args.head} = {export_tree(args.head, roots['head'])}"
        for side in SIDES:
            print(f"{side}: {labels[side]}")
        work = args.keep.resolve() if args.keep is not None else tmp / "runs"
        envs = {side: child_env(roots[side]) for side in SIDES}
        print(f"{len(cases)} cases x 2 trees, {args.jobs} at a time\n", flush=True)

        def job(case: Case, side: str) -> Run:
            return run_case(case, roots[side], work / side / case.name, envs[side])

        with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
            futures = [{side: pool.submit(job, case, side) for side in SIDES} for case in cases]
            outcomes = []
            for case, pending in zip(cases, futures):
                outcome = compare(case, {side: f.result() for side, f in pending.items()})
                outcomes.append(outcome)
                print(f"{case.name}: {verdict(outcome)[0]}", flush=True)
                for line in outcome.detail:
                    print(f"    {line}")
    elapsed = time.perf_counter() - t_start
    return summarize(outcomes, elapsed, args.keep)


def summarize(outcomes: list[Outcome], elapsed: float, keep: Path | None) -> int:
    rows = [(o.case.name, *verdict(o), f"{o.seconds[0]:.1f}", f"{o.seconds[1]:.1f}") for o in outcomes]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'case':<{width}}  {'base s':>6}  {'head s':>6}  result")
    print(f"{'-' * width}  ------  ------  ------")
    for name, result, _, base_s, head_s in rows:
        print(f"{name:<{width}}  {base_s:>6}  {head_s:>6}  {result}")
    bad = [r for r in rows if r[2]]
    counts = {s: sum(o.status == s for o in outcomes) for s in ("identical", "differs", "failed")}
    expected = sum(o.status == "differs" and o.case.expected_to_differ is not None for o in outcomes)
    print(f"\n{len(rows)} cases: {counts['identical']} identical, {counts['differs']} differ ({expected} as expected), "
          f"{counts['failed']} failed to run; {elapsed:.0f} s")
    if keep is not None:
        print(f"raw outputs: {keep}")
    print("FAIL: " + ", ".join(r[0] for r in bad) if bad else "OK: no unexpected difference")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
