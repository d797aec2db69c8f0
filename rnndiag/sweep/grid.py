"""Grids of parameter values: axes from the command line (``gain=0.5:3:11``, ``lr=1e-4:1e-2:5:log``,
``cell=lstm,gru``, ``seed=0..3``) or a TOML file, their product as points, and each point's stable id.

A grid is an ordered mapping axis -> tuple of values; its points are the Cartesian product in that order (the
last axis fastest). Any axis names work for the library (:func:`rnndiag.sweep.run`); ``rnndiag sweep`` checks its
own (:data:`rnndiag.sweep.points.AXES`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping
from pathlib import Path

DEFAULT_MAX_POINTS = 10_000


class GridError(ValueError):
    """A grid that cannot be used; the message names the axis or file and the fix."""


def _number(text: str, axis: str):
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        raise GridError(f"axis {axis}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise GridError(f"axis {axis}: {text!r} is not a finite number")
    return value


def _scalar(text: str):
    """A list item: an int, a float, true/false, or the string itself."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            value = cast(text)
        except ValueError:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            break
        return value
    return text.strip()


def linspace(start: float, stop: float, num: int, log: bool = False) -> tuple[float, ...]:
    """``num`` values from ``start`` to ``stop`` inclusive, evenly (or, with ``log``, geometrically) spaced, rounded
    to 12 significant digits so that the same range always gives the same values."""
    if num == 1:
        return (float(start),)
    if log:
        a, b = math.log(start), math.log(stop)
        vals = [math.exp(a + (b - a) * i / (num - 1)) for i in range(num)]
        vals[0], vals[-1] = float(start), float(stop)
    else:
        vals = [start + (stop - start) * i / (num - 1) for i in range(num)]
    return tuple(float(f"{v:.12g}") for v in vals)


def parse_axis(spec: str) -> tuple[str, tuple]:
    """``name=values``: ``a:b:n`` (n values from a to b), ``a:b:n:log``, ``a..b`` (the integers), or a comma
    list. One :class:`GridError` per bad spec."""
    if "=" not in spec:
        raise GridError(f"--grid {spec!r}: write NAME=VALUES, e.g. gain=0.5:3:11, lr=1e-4:1e-2:5:log, cell=lstm,gru "
                        "or seed=0..3")
    name, _, text = spec.partition("=")
    name, text = name.strip().replace("-", "_"), text.strip()
    if not name.isidentifier():
        raise GridError(f"--grid {spec!r}: {name!r} is not an axis name")
    if not text:
        raise GridError(f"--grid {spec!r}: axis {name} has no values")
    if ":" in text:
        parts = text.split(":")
        log = parts[-1].lower() == "log"
        if log:
            parts = parts[:-1]
        if len(parts) != 3:
            raise GridError(f"--grid {spec!r}: a range is START:STOP:COUNT (or START:STOP:COUNT:log)")
        start, stop = _number(parts[0], name), _number(parts[1], name)
        num = _number(parts[2], name)
        if not isinstance(num, int) or num < 1:
            raise GridError(f"--grid {spec!r}: COUNT must be a positive integer; got {parts[2]!r}")
        if log and (start <= 0 or stop <= 0):
            raise GridError(f"--grid {spec!r}: a log range needs positive ends")
        return name, linspace(start, stop, num, log)
    if ".." in text and "," not in text:
        a, _, b = text.partition("..")
        lo, hi = _number(a, name), _number(b, name)
        if not isinstance(lo, int) or not isinstance(hi, int) or hi < lo:
            raise GridError(f"--grid {spec!r}: A..B takes integers with A <= B")
        return name, tuple(range(lo, hi + 1))
    values = tuple(_scalar(v) for v in text.split(",") if v.strip())
    if not values:
        raise GridError(f"--grid {spec!r}: axis {name} has no values")
    return name, values


def _toml_axis(name: str, value, source: str) -> tuple:
    if isinstance(value, list):
        if not value:
            raise GridError(f"{source}: axis {name} is an empty list")
        return tuple(value)
    if isinstance(value, Mapping):
        try:
            start, stop, num = value["start"], value["stop"], value["num"]
        except KeyError as exc:
            raise GridError(f"{source}: axis {name} needs start, stop and num (and optionally log = true); missing "
                            f"{exc.args[0]}") from None
        return parse_axis(f"{name}={start}:{stop}:{num}{':log' if value.get('log') else ''}")[1]
    if isinstance(value, str) and (":" in value or ".." in value or "," in value):
        return parse_axis(f"{name}={value}")[1]
    return (value,)


def read_grid_file(path) -> dict[str, tuple]:
    """Axes from a TOML file: ``[grid]`` with ``gain = {start = 0.5, stop = 3, num = 11}``, lists, range strings
    (``"0.5:3:11"``) or single values."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    source = f"grid file {str(path)!r}"
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GridError(f"{source} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GridError(f"{source} cannot be read ({exc}); pass a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise GridError(f"{source} is not valid TOML ({exc})") from None
    table = data.get("grid", data)
    if not isinstance(table, Mapping) or not table:
        raise GridError(f"{source} has no axes; write a [grid] table, e.g. gain = {{start = 0.5, stop = 3, num = 11}}")
    return {str(k).replace("-", "_"): _toml_axis(str(k), v, source) for k, v in table.items()}


def make_grid(specs=(), grid_file=None, fixed: Mapping | None = None) -> dict[str, tuple]:
    """The grid of ``--grid`` specs (and a grid file, whose axes come first); an axis given twice is an error.
    ``fixed`` adds single-valued axes for options set on their own."""
    grid: dict[str, tuple] = {}
    if grid_file is not None:
        grid.update(read_grid_file(grid_file))
    for spec in specs:
        name, values = parse_axis(spec)
        if name in grid:
            raise GridError(f"axis {name} is given twice; give it once")
        grid[name] = values
    for name, value in (fixed or {}).items():
        if name in grid:
            raise GridError(f"--{name.replace('_', '-')} and --grid {name}=... both set {name}; pass one")
        grid[name] = (value,)
    for name, values in grid.items():
        if len(set(map(_canonical, values))) != len(values):
            raise GridError(f"axis {name} repeats a value; list each value once")
    return grid


def grid_size(grid: Mapping[str, tuple]) -> int:
    return math.prod(len(v) for v in grid.values()) if grid else 0


def points(grid: Mapping[str, tuple]) -> list[dict]:
    """Every point of the grid, in order (the last axis fastest)."""
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def _canonical(value):
    return json.dumps(value, sort_keys=True)


def point_id(params: Mapping) -> str:
    """A stable id for a point: a hash of its parameters' canonical JSON (the same values, the same id)."""
    return hashlib.sha256(json.dumps(dict(params), sort_keys=True).encode()).hexdigest()[:16]


def check_size(grid: Mapping[str, tuple], max_points: int = DEFAULT_MAX_POINTS) -> int:
    n = grid_size(grid)
    if n == 0:
        raise GridError("the grid is empty: give at least one axis with --grid NAME=VALUES (or a grid file)")
    if n > max_points:
        sizes = " x ".join(f"{len(v)} {k}" for k, v in grid.items())
        raise GridError(f"the grid has {n:,} points ({sizes}), more than --max-points {max_points:,}; pass "
                        f"--max-points {n} to run it, or use fewer values")
    return n
