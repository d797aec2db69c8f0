"""Collection rules for the whole suite: the doctests in rnndiag/ run with the tests (``--doctest-modules``).

A module that needs an optional extra (torch, dask) at import time goes in ``NEEDS_EXTRA``: its doctests are not
collected when the extra is absent, so the suite still runs on a core install. (Modules that import an extra only
inside functions need no entry; ``tests/test_architecture.py`` checks which modules import one at module level.)
"""

from __future__ import annotations

import importlib.util

# "rnndiag/<module>.py" -> the module it imports at load time, e.g. "torch"
NEEDS_EXTRA: dict[str, str] = {"rnndiag/pytorch/__init__.py": "torch", "rnndiag/pytorch/recorder.py": "torch",
                               "rnndiag/pytorch/watch.py": "torch"}

collect_ignore = ["rnndiag/__main__.py"]  # importing it runs the command line
collect_ignore += [path for path, module in NEEDS_EXTRA.items() if importlib.util.find_spec(module) is None]
