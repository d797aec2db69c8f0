"""Shared helpers for the command-line, report and browser tests.

* :func:`invoke` runs ``rnndiag`` in-process through click's ``CliRunner`` with stderr kept apart from stdout;
  :func:`run_cli` runs it as a real subprocess (``sys.executable -m rnndiag``).
* :func:`snapshot` records a folder tree (names, sizes, mtimes) so a test can prove that nothing was written.
* :func:`png_info` checks a PNG byte string without matplotlib or PIL: signature, every chunk's CRC, IHDR size.
"""

from __future__ import annotations

import inspect
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from click.testing import CliRunner

from rnndiag.cli import main

# A small, fast fresh model; most tests add this to their command line.
SMALL = ["--seq-len", "20", "--batch-size", "4", "--hidden-size", "8"]

# The figure files a report holds (gate_saturation only for gated cells), named after what they show.
FIGURES = ("grad_norm_per_step", "jacobian_product_norm", "step_jacobian_norm", "eigenvalues_w_hh",
           "singular_values", "lyapunov_spectrum")
GATED_FIGURE = "gate_saturation"

# The metrics.json keys the contract names.
TOP_KEYS = ("rnndiag_version", "cell", "input_size", "hidden_size", "num_layers", "seq_len", "batch_size", "seed",
            "verdict", "advice", "layers", "gradient_flow")
LAYER_KEYS = ("spectral_radius", "sigma_max", "lyapunov_exponents")
FLOW_KEYS = ("grad_norm", "log10_jacobian_product_norm", "decay_per_step", "horizon_steps")
VERDICTS = ("vanishing", "exploding", "healthy")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- running the CLI -------------------------------------------------------------------------------------------------
def make_runner() -> CliRunner:
    """A CliRunner whose ``result.stderr`` is separate from ``result.stdout`` on every click >= 8.1.

    click < 8.2 mixes stderr into the output unless ``mix_stderr=False``; click 8.2 removed that argument and always
    keeps them apart.
    """
    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner(mix_stderr=False)
    return CliRunner()


def invoke(args, **kwargs):
    """``rnndiag ARGS`` in-process. Exceptions are caught (and then show as ``result.exception``)."""
    return make_runner().invoke(main, [str(a) for a in args], prog_name="rnndiag", catch_exceptions=True, **kwargs)


def run_cli(args, cwd, *, env_extra: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m rnndiag ARGS`` in a real subprocess, in folder ``cwd``."""
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ beside a torch.py stub
    if env_extra:
        env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "rnndiag", *[str(a) for a in args]], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def result_stderr(result) -> str:
    """stderr of a CliRunner result or of a CompletedProcess."""
    return result.stderr or ""


def assert_clean_exit(result, what: str = "") -> None:
    """Exit code 0 and no traceback, with the output in the failure message."""
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    err = result_stderr(result)
    out = result.stdout or ""
    exc = getattr(result, "exception", None)
    assert code == 0, f"{what}: exit code {code}\nstdout:\n{out[-2000:]}\nstderr:\n{err[-2000:]}\nexception: {exc!r}"
    assert "Traceback" not in err


def assert_one_line_error(result, code: int = 2) -> str:
    """Exit code ``code``, exactly one line on stderr (``rnndiag: error: ...``), nothing on stdout, no traceback."""
    rc = result.exit_code if hasattr(result, "exit_code") else result.returncode
    err = result_stderr(result)
    out = result.stdout or ""
    exc = getattr(result, "exception", None)
    detail = f"\nexit code {rc}\nstdout:\n{out[-1500:]}\nstderr:\n{err[-3000:]}\nexception: {exc!r}"
    assert exc is None or isinstance(exc, SystemExit), f"an exception escaped the CLI{detail}"
    assert rc == code, f"expected exit code {code}{detail}"
    assert "Traceback" not in err, f"traceback on stderr{detail}"
    assert "Traceback" not in out, f"traceback on stdout{detail}"
    lines = err.splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}{detail}"
    assert err.endswith("\n")
    assert lines[0].startswith("rnndiag: error: "), f"the error line does not start with 'rnndiag: error: '{detail}"
    assert len(lines[0]) > len("rnndiag: error: ") + 10, f"the error says nothing useful{detail}"
    assert out == "", f"an error run printed on stdout{detail}"
    return lines[0]


# -- files -----------------------------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (hidden ones too): relative path -> (kind, size, mtime_ns of a file, mode)."""
    root = Path(root)
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            kind = "dir" if p.is_dir() and not p.is_symlink() else "file"
            # a folder's mtime is left out: the check that files can be created there (a probe file made and removed
            # before any work) changes it, while its entries, compared one by one, show whether anything was written
            snap[str(p.relative_to(root))] = (kind, st.st_size if kind == "file" else 0,
                                              st.st_mtime_ns if kind == "file" else 0, st.st_mode)
    st = root.lstat()
    snap["."] = ("dir", 0, 0, st.st_mode)
    return snap


def diff_snapshots(before: dict, after: dict) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"added {added}, removed {removed}, changed {changed}"


def hidden_temp_entries(folder: Path) -> list[str]:
    """Leftover hidden temporary files or folders (``.name.XXXX.tmp``) in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def strict_json(text: str):
    """``json.loads`` that refuses NaN, Infinity and -Infinity (what ``allow_nan=False`` promises)."""
    def _refuse(token):
        raise ValueError(f"non-standard JSON constant {token!r}")

    return json.loads(text, parse_constant=_refuse)


def assert_contract_keys(m: dict) -> None:
    """The metrics.json keys and types the contract promises."""
    missing = [k for k in TOP_KEYS if k not in m]
    assert not missing, f"metrics lack {missing}"
    assert m["verdict"] in VERDICTS, m["verdict"]
    assert isinstance(m["advice"], list) and all(isinstance(a, str) for a in m["advice"])
    for k in ("input_size", "hidden_size", "num_layers", "seq_len", "batch_size"):
        assert isinstance(m[k], int) and not isinstance(m[k], bool) and m[k] >= 1, (k, m[k])
    assert isinstance(m["layers"], list) and len(m["layers"]) == m["num_layers"]
    for layer in m["layers"]:
        for k in LAYER_KEYS:
            assert k in layer, f"layer lacks {k}"
        assert isinstance(layer["spectral_radius"], float) and layer["spectral_radius"] >= 0
        assert isinstance(layer["sigma_max"], float) and layer["sigma_max"] >= layer["spectral_radius"] - 1e-9
        assert isinstance(layer["lyapunov_exponents"], list)
    flow = m["gradient_flow"]
    for k in FLOW_KEYS:
        assert k in flow, f"gradient_flow lacks {k}"
    for k in ("grad_norm", "log10_jacobian_product_norm"):
        assert isinstance(flow[k], list) and flow[k], k
        assert all(v is None or isinstance(v, (int, float)) for v in flow[k]), k
    assert len(flow["grad_norm"]) == len(flow["log10_jacobian_product_norm"])
    assert isinstance(flow["horizon_steps"], int)
    assert flow["decay_per_step"] is None or isinstance(flow["decay_per_step"], float)


# -- PNG -------------------------------------------------------------------------------------------------------------
def png_info(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, after checking the signature, IHDR first, every chunk's CRC, and IEND last."""
    assert data[:8] == PNG_SIGNATURE, f"not a PNG signature: {data[:8]!r}"
    pos = 8
    chunks = []
    while pos < len(data):
        assert pos + 8 <= len(data), "truncated chunk header"
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        assert len(body) == length, f"truncated {ctype!r} chunk"
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(ctype + body) & 0xFFFFFFFF == crc, f"bad CRC in {ctype!r} chunk"
        chunks.append((ctype, body))
        pos += 12 + length
        if ctype == b"IEND":
            break
    assert chunks and chunks[0][0] == b"IHDR" and len(chunks[0][1]) == 13, "the first chunk is not a 13-byte IHDR"
    assert chunks[-1][0] == b"IEND", "no IEND chunk"
    assert any(c == b"IDAT" for c, _ in chunks), "no image data"
    width, height, depth, color = struct.unpack(">IIBB", chunks[0][1][:10])
    assert depth in (1, 2, 4, 8, 16) and color in (0, 2, 3, 4, 6), (depth, color)
    return width, height


def freeze_report_clock(monkeypatch, when) -> None:
    """Make every report folder named after the time ``when`` (a datetime): two runs "in the same second"."""
    import datetime as dt

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return when

    monkeypatch.setattr("rnndiag.files._dt.datetime", Frozen)


def interruptible() -> None:
    """``preexec_fn`` for a child that a test interrupts with SIGINT: a non-interactive shell that started the test
    run in the background (``cmd &``) sets SIGINT to ignored, and children inherit that; restore the default so
    Python in the child raises KeyboardInterrupt as it does under a terminal."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
