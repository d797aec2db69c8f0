"""Point functions for the sweep engine's tests (importable by Dask workers: the tests put this folder on their
PYTHONPATH)."""

from __future__ import annotations

import math
import os


def product(p: dict) -> dict:
    return {"y": p["a"] * p["b"], "s": math.sin(p["a"])}


def fails_on_two(p: dict) -> dict:
    if p["a"] == 2:
        raise ValueError("a = 2 is not allowed here")
    return {"y": p["a"]}


def dies_on_two(p: dict) -> dict:
    """Kills its worker process at a = 2 (as an out-of-memory kill would)."""
    if p["a"] == 2:
        os._exit(1)
    return {"y": p["a"]}
