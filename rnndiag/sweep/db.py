"""One SQLite file per sweep: its grid, every point (parameters, status, timings, error, metrics) and a lock row.

Statuses: ``pending`` -> ``running`` -> ``done`` or ``failed``. Re-opening a database resumes it: ``done`` points
stay done, ``failed`` ones stay failed unless retried, and ``running`` ones (left by a client that was killed)
become ``pending`` again. One client at a time: the lock row holds the pid and host of the client using it.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path

from .._version import __version__
from .grid import point_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS points (
    id TEXT PRIMARY KEY, position INTEGER NOT NULL, params TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, started REAL, finished REAL, seconds REAL, worker TEXT, error TEXT,
    metrics TEXT);
CREATE TABLE IF NOT EXISTS lock (id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER, host TEXT, since REAL);
"""
DB_FORMAT = 1


class SweepDBError(ValueError):
    """A sweep database that cannot be used as asked; the message says why and what to do."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SweepDB:
    """A sweep's database (use as a context manager: the lock is taken on entry and released on exit)."""

    def __init__(self, path):
        self.path = Path(path)
        self.what = f"sweep database {str(self.path)!r}"
        if self.path.exists() and not self.path.is_file():
            raise SweepDBError(f"{self.what} is not a file; choose a file name (e.g. sweep.sqlite)")
        if not self.path.parent.is_dir():
            raise SweepDBError(f"{self.what}: folder {str(self.path.parent)!r} does not exist; create it first")
        try:
            self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise SweepDBError(f"{self.what} is not an rnndiag sweep database ({exc}); choose another file") from None
        self.locked = False

    # -- the lock ----------------------------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the lock row, or refuse: another live client (pid, host) uses this database."""
        host, pid = socket.gethostname(), os.getpid()
        with self._tx():
            row = self.conn.execute("SELECT pid, host, since FROM lock WHERE id = 1").fetchone()
            if row is not None:
                other_pid, other_host, since = row
                stale = other_host == host and not _pid_alive(other_pid)
                if not stale and (other_pid, other_host) != (pid, host):
                    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since))
                    raise SweepDBError(
                        f"{self.what} is in use by another sweep client (pid {other_pid} on {other_host}, since "
                        f"{when}); wait for it to finish, or remove the lock if that client is gone for good "
                        f"(sqlite3 {self.path} 'DELETE FROM lock')")
            self.conn.execute("INSERT OR REPLACE INTO lock (id, pid, host, since) VALUES (1, ?, ?, ?)",
                              (pid, host, time.time()))
        self.locked = True

    def unlock(self) -> None:
        if self.locked:
            self.conn.execute("DELETE FROM lock WHERE id = 1 AND pid = ? AND host = ?",
                              (os.getpid(), socket.gethostname()))
            self.locked = False

    def close(self) -> None:
        self.unlock()
        self.conn.close()

    def __enter__(self) -> SweepDB:
        self.lock()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tx(self):
        conn = self.conn

        class _Tx:
            def __enter__(self):
                conn.execute("BEGIN IMMEDIATE")

            def __exit__(self, kind, *rest):
                conn.execute("COMMIT" if kind is None else "ROLLBACK")
                return False

        return _Tx()

    # -- the grid ----------------------------------------------------------------------------------------------
    def meta(self, key: str):
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def prepare(self, grid: Mapping[str, tuple], points: list[dict], *, function: str, extend: bool = False,
                retry_failed: bool = False) -> dict[str, int]:
        """Record the grid (or check it against the one recorded) and its points; running points left by a killed
        client become pending, failed ones too with ``retry_failed``. Returns the counts by status."""
        grid_json = {k: list(v) for k, v in grid.items()}
        with self._tx():
            old = self.meta("grid")
            if old is None:
                self.set_meta("format", DB_FORMAT)
                self.set_meta("grid", grid_json)
                self.set_meta("function", function)
                self.set_meta("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                self.set_meta("rnndiag_version", __version__)
            else:
                self._check_same(old, grid_json, function, extend)
                if extend:
                    self.set_meta("grid", _merged(old, grid_json))
            have = {r[0] for r in self.conn.execute("SELECT id FROM points")}
            start = self.conn.execute("SELECT COALESCE(MAX(position), -1) FROM points").fetchone()[0] + 1
            new = [(pid, start + i, json.dumps(p, sort_keys=True)) for i, (pid, p) in
                   enumerate((point_id(p), p) for p in points) if pid not in have]
            self.conn.executemany("INSERT INTO points (id, position, params, status) VALUES (?, ?, ?, 'pending')",
                                  new)
            self.conn.execute("UPDATE points SET status = 'pending', worker = NULL WHERE status = 'running'")
            if retry_failed:
                self.conn.execute("UPDATE points SET status = 'pending', error = NULL WHERE status = 'failed'")
        return self.counts()

    def _check_same(self, old: dict, new: dict, function: str, extend: bool) -> None:
        fmt = self.meta("format")
        if fmt != DB_FORMAT:
            raise SweepDBError(f"{self.what} has format {fmt!r}; this rnndiag reads {DB_FORMAT}: start a new database")
        old_fn = self.meta("function")
        if old_fn != function:
            raise SweepDBError(f"{self.what} holds a sweep of {old_fn}, not {function}; choose another --db")
        if old == new:
            return
        if not extend:
            changed = sorted(set(old) ^ set(new)) or [k for k in new if old.get(k) != new[k]]
            raise SweepDBError(f"the grid differs from the one in {self.what} (axis {', '.join(changed)}); pass "
                               "--extend to add the new points to it, or choose another --db")
        if set(old) != set(new):
            raise SweepDBError(f"--extend adds values to the axes of {self.what} ({', '.join(old)}); it cannot add "
                               f"or remove axes (asked: {', '.join(new)}); choose another --db")

    # -- the points --------------------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out = {"pending": 0, "running": 0, "done": 0, "failed": 0}
        for status, n in self.conn.execute("SELECT status, COUNT(*) FROM points GROUP BY status"):
            out[status] = n
        return out

    def pending(self, ids=None) -> list[tuple[str, dict]]:
        rows = self.conn.execute("SELECT id, params FROM points WHERE status = 'pending' ORDER BY position")
        return [(pid, json.loads(p)) for pid, p in rows if ids is None or pid in ids]

    def mark_running(self, pid: str, worker: str | None = None) -> None:
        self.conn.execute("UPDATE points SET status = 'running', started = ?, worker = ?, attempts = attempts + 1 "
                          "WHERE id = ?", (time.time(), worker, pid))

    def mark_done(self, pid: str, metrics: dict, seconds: float, worker: str | None = None) -> None:
        self.conn.execute("UPDATE points SET status = 'done', finished = ?, seconds = ?, metrics = ?, error = NULL, "
                          "worker = COALESCE(?, worker) WHERE id = ?",
                          (time.time(), seconds, json.dumps(metrics, allow_nan=False), worker, pid))

    def mark_failed(self, pid: str, error: str, seconds: float | None = None, worker: str | None = None) -> None:
        self.conn.execute("UPDATE points SET status = 'failed', finished = ?, seconds = ?, error = ?, "
                          "worker = COALESCE(?, worker) WHERE id = ?", (time.time(), seconds, error, worker, pid))

    def rows(self, status: str | None = None) -> list[dict]:
        """Every point as a dict: id, params, status, attempts, seconds, worker, error, metrics."""
        query = "SELECT id, params, status, attempts, seconds, worker, error, metrics FROM points"
        args: tuple = ()
        if status is not None:
            query += " WHERE status = ?"
            args = (status,)
        out = []
        for pid, params, st, attempts, seconds, worker, error, metrics in self.conn.execute(
                query + " ORDER BY position", args):
            out.append({"id": pid, "params": json.loads(params), "status": st, "attempts": attempts,
                        "seconds": seconds, "worker": worker, "error": error,
                        "metrics": json.loads(metrics) if metrics else None})
        return out


def _merged(old: dict, new: dict) -> dict:
    out = {}
    for k, values in old.items():
        seen = list(values)
        seen += [v for v in new.get(k, []) if v not in seen]
        out[k] = seen
    return out
