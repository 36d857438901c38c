"""One write transaction on a SQLite connection shared by threads: the one way the
registry, the secrets, a node's registry copy and its event queue write."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def transaction(db: sqlite3.Connection, lock: threading.Lock) -> Iterator[sqlite3.Cursor]:
    """``BEGIN IMMEDIATE`` (the write lock from the start, so two writers never
    deadlock upgrading) under ``lock``; committed on success, rolled back on any
    exception. ``db`` must be in autocommit mode (``isolation_level=None``)."""
    with lock:
        cur = db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        else:
            cur.execute("COMMIT")
