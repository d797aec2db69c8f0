"""Sweeps: run a function over a grid of parameters on a Dask cluster (or in-process), results in SQLite.

``rnndiag.sweep.run(grid, point_fn, db_path, client=None)`` is the library call (see :mod:`.engine`);
``rnndiag sweep`` runs rnndiag's own analysis (and training) at each point (:mod:`.points`). Dask is optional
(``pip install 'rnndiag[dask]'``): without it a sweep runs in-process.
"""

from .db import SweepDB, SweepDBError
from .engine import Progress, SweepError, SweepResult, call_point, dask_available, run
from .grid import GridError, make_grid, parse_axis, point_id, points, read_grid_file

__all__ = ["GridError", "Progress", "SweepDB", "SweepDBError", "SweepError", "SweepResult", "call_point",
           "dask_available", "make_grid", "parse_axis", "point_id", "points", "read_grid_file", "run"]
