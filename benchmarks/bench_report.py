"""Where the time of `rnndiag analyze` goes: start-up (imports), model + inputs, analysis, figures, writing.

    python benchmarks/bench_report.py            # the built-in demo, 5 runs
    python benchmarks/bench_report.py --long     # also T = 100,000 (H = 2): figures must stay fast

Target (issue 4): the demo, report included, in under 5 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DONE = re.compile(r"done in ([\d.]+) s \(analysis ([\d.]+) s, figures ([\d.]+) s, writing ([\d.]+) s\)")


def run(args: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "rnndiag", "analyze", "--out", str(Path(tmp) / "r"), *args],
                              capture_output=True, text=True, cwd=tmp, check=True)
        wall = time.perf_counter() - t0
    m = DONE.search(proc.stdout.replace("\n", " "))
    if not m:
        raise RuntimeError(f"no timing line in the output:\n{proc.stdout}")
    total, analysis, figures, writing = map(float, m.groups())
    return {"wall": wall, "start-up": wall - total, "model+inputs": total - analysis - figures - writing,
            "analysis": analysis, "figures": figures, "writing": writing}


def report(name: str, args: list[str], reps: int) -> None:
    rows = [run(args) for _ in range(reps)]
    print(f"\n{name}: median of {reps} runs (seconds)")
    for key in rows[0]:
        print(f"  {key:13s} {statistics.median(r[key] for r in rows):7.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--long", action="store_true")
    args = ap.parse_args()
    report("rnndiag analyze (the demo)", [], args.reps)
    if args.long:
        report("T = 100,000, H = 2, B = 1 (noise)", ["--cell", "rnn_tanh", "--hidden-size", "2", "--task", "noise",
                                                     "--seq-len", "100000", "--batch-size", "1"], 1)


if __name__ == "__main__":
    main()
