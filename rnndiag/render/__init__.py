"""Renderers: read a Diagnosis, never recompute it. Terminal (rich), figures (matplotlib Figure, Agg), HTML
(Jinja2, one self-contained file), JSON; and the one way they all show a number, :func:`fmt_num`."""

from __future__ import annotations

import math
import numbers


def fmt_num(value, spec: str = ".3g") -> str:
    """A number as every table, summary and report shows it: ``format(value, spec)``, and ``n/a`` where there is
    no finite value (None, NaN or an infinity -- metrics.json writes those as null).

    >>> fmt_num(0.123456), fmt_num(-1.5, "+.4f"), fmt_num(None), fmt_num(float("-inf"))
    ('0.123', '-1.5000', 'n/a', 'n/a')
    """
    if value is None or (isinstance(value, numbers.Real) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)
