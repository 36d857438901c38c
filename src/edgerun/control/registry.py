"""The function registry: a storage interface and its SQLite implementation.

Every mutation bumps one global, monotonic *revision* and stamps it on the
function it touched, so the change feed is a single query ("functions whose
revision is above N"), deletions included as tombstones. The SQL stays in the
common subset of SQLite and PostgreSQL so a second backend is a new class,
not a rewrite.

Reads of many records load their versions and aliases a chunk of names at a
time (``WHERE function IN (...)``), never a query per record, and the feed reads
on a connection of its own, so a node catching up with 100k functions neither
holds the writers' lock nor makes a deploy wait for its page.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import msgspec

from edgerun.dbtx import transaction
from edgerun.errors import bad_request, not_found
from edgerun.models import (
    LATEST,
    FunctionConfig,
    FunctionRecord,
    Version,
    validate_function_name,
    validate_name,
    version_id,
)


class Registry(Protocol):
    def revision(self) -> int: ...
    def head(self) -> int: ...
    def deploy(
        self, name: str, config: FunctionConfig, sha256: str, size: int
    ) -> tuple[FunctionRecord, bool]: ...
    def get(self, name: str) -> FunctionRecord | None: ...
    def list_functions(self, *, after: str = "", limit: int = 100) -> list[FunctionRecord]: ...
    def delete(self, name: str) -> FunctionRecord: ...
    def set_alias(self, name: str, alias: str, sha256: str) -> FunctionRecord: ...
    def touch(self, name: str) -> bool: ...
    def delete_alias(self, name: str, alias: str) -> FunctionRecord: ...
    def changes(
        self, since: int, limit: int = 1000, *, live_only: bool = False, configs_only: bool = False
    ) -> tuple[int, list[FunctionRecord]]: ...
    def collect(self, retain: int) -> tuple[list[tuple[str, str]], set[str]]: ...
    def unreferenced(self, bundles: set[str]) -> set[str]: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS functions (
    name TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    revision BIGINT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS functions_revision ON functions (revision);
CREATE TABLE IF NOT EXISTS versions (
    function TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    bundle_sha256 TEXT,
    handler TEXT NOT NULL,
    size BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (function, sha256)
);
CREATE TABLE IF NOT EXISTS aliases (
    function TEXT NOT NULL,
    alias TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (function, alias)
);
"""


def retention(record: FunctionRecord, retain: int) -> dict[str, list[str]]:
    """Why each version of ``record`` is kept: the aliases pointing at it and
    ``newest N``; an empty list means it is collectable."""
    why: dict[str, list[str]] = {vid: [] for vid in record.versions}
    for alias, vid in sorted(record.aliases.items()):
        if vid in why:
            why[vid].append(f"alias {alias}")
    newest = sorted(record.versions.values(), key=lambda v: v.created_at, reverse=True)
    for v in newest[: max(retain, 0)]:
        why[v.sha256].append(f"newest {retain}")
    return why


_encode_config = msgspec.json.Encoder().encode
_decode_config = msgspec.json.Decoder(FunctionConfig).decode
_FUNCTION_COLUMNS = "name, config, created_at, updated_at, revision, deleted"
IN_CHUNK = 500
"""Names per ``IN (...)``: under SQLite's oldest limit of 999 parameters."""


class SqliteRegistry:
    """Registry in one SQLite file (WAL), safe to share between threads."""

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(_SCHEMA)
        self._migrate()
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES ('revision', 0) ON CONFLICT (key) DO NOTHING"
        )
        self._reader, self._reader_lock = self._db, self._lock
        if str(path) not in ("", ":memory:"):  # those have no file another connection shares
            self._reader = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._reader.execute("PRAGMA query_only=ON")
            self._reader_lock = threading.Lock()
        self._collected = (-1, 0)
        """``retain`` and revision of the last :meth:`collect`."""

    def _migrate(self) -> None:
        """Registries made before versions had ids of their own: a version's id
        was its bundle's hash, so each keeps that id and records it as its bundle."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(versions)")}
        if "bundle_sha256" not in columns:
            self._db.execute("ALTER TABLE versions ADD COLUMN bundle_sha256 TEXT")
        self._db.execute("UPDATE versions SET bundle_sha256 = sha256 WHERE bundle_sha256 IS NULL")
        self._db.execute("CREATE INDEX IF NOT EXISTS versions_bundle ON versions (bundle_sha256)")

    def close(self) -> None:
        if self._reader is not self._db:
            with self._reader_lock:
                self._reader.close()
        with self._lock:
            self._db.close()

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Cursor]:
        """One write transaction; what other stores on this database build on."""
        return self._tx()

    def bump(self, cur: sqlite3.Cursor) -> int:
        """The next revision, inside :meth:`transaction`."""
        return self._bump(cur)

    def read(self) -> contextlib.AbstractContextManager[sqlite3.Cursor]:
        """A cursor for reads, holding the connection's lock."""
        return self._read()

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Cursor]:
        """A read transaction on the reader connection: one consistent view (WAL)
        that neither waits for nor holds up the writers' lock, for the feed's pages."""
        with self._reader_lock:
            cur = self._reader.cursor()
            cur.execute("BEGIN")
            try:
                yield cur
            finally:
                cur.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            yield self._db.cursor()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        with transaction(self._db, self._lock) as cur:
            yield cur

    @staticmethod
    def _bump(cur: sqlite3.Cursor) -> int:
        row = cur.execute(
            "UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value"
        ).fetchone()
        return int(row[0])

    def revision(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()
        return int(row[0])

    def head(self) -> int:
        """:meth:`revision` read on the reader connection: for the feed's thread,
        which must not wait for (or hold up) the writers."""
        with self.snapshot() as cur:
            return int(cur.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])

    def deploy(
        self, name: str, config: FunctionConfig, sha256: str, size: int
    ) -> tuple[FunctionRecord, bool]:
        """Point ``latest`` at the version of bundle ``sha256`` with ``config.handler``,
        creating it if it is new; an existing version is never changed."""
        validate_function_name(name)
        now = time.time()
        with self._tx() as cur:
            rev = self._bump(cur)
            row = cur.execute("SELECT deleted FROM functions WHERE name = ?", (name,)).fetchone()
            created = row is None or bool(row[0])
            if row is None:
                cur.execute(
                    "INSERT INTO functions"
                    " (name, config, created_at, updated_at, revision, deleted)"
                    " VALUES (?, ?, ?, ?, ?, 0)",
                    (name, _encode_config(config).decode(), now, now, rev),
                )
            else:
                cur.execute(
                    "UPDATE functions SET config = ?, updated_at = ?, revision = ?, deleted = 0"
                    + (", created_at = ?" if created else "")
                    + " WHERE name = ?",
                    (_encode_config(config).decode(), now, rev, *((now,) if created else ()), name),
                )
            # Versions never change: the same bundle and handler is the same
            # version; another handler is another version.
            row = cur.execute(
                "SELECT sha256 FROM versions"
                " WHERE function = ? AND bundle_sha256 = ? AND handler = ?",
                (name, sha256, config.handler),
            ).fetchone()
            if row is not None:
                vid = str(row[0])
            else:
                vid = version_id(sha256, config.handler)
                cur.execute(
                    "INSERT INTO versions"
                    " (function, sha256, bundle_sha256, handler, size, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (name, vid, sha256, config.handler, size, now),
                )
            self._upsert_alias(cur, name, LATEST, vid)
            record = self._load(cur, name)
        assert record is not None
        return record, created

    @staticmethod
    def _upsert_alias(cur: sqlite3.Cursor, name: str, alias: str, sha256: str) -> None:
        cur.execute(
            "INSERT INTO aliases (function, alias, sha256) VALUES (?, ?, ?)"
            " ON CONFLICT (function, alias) DO UPDATE SET sha256 = excluded.sha256",
            (name, alias, sha256),
        )

    def _load(self, cur: sqlite3.Cursor, name: str) -> FunctionRecord | None:
        row = cur.execute(
            f"SELECT {_FUNCTION_COLUMNS} FROM functions WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else self._records(cur, [row])[0]

    @staticmethod
    def _records(
        cur: sqlite3.Cursor, rows: list[tuple[object, ...]], configs_only: bool = False
    ) -> list[FunctionRecord]:
        """The records of ``rows`` (functions' columns), in their order, with
        versions (oldest first) and aliases (by name) read a chunk of names at a time
        (none with ``configs_only``)."""
        versions: dict[str, dict[str, Version]] = {}
        aliases: dict[str, dict[str, str]] = {}
        names = [] if configs_only else [str(row[0]) for row in rows]
        for start in range(0, len(names), IN_CHUNK):
            chunk = names[start : start + IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            for name, vid, bundle, handler, size, created in cur.execute(
                "SELECT function, sha256, bundle_sha256, handler, size, created_at FROM versions"
                f" WHERE function IN ({marks}) ORDER BY function, created_at, sha256",
                chunk,
            ):
                versions.setdefault(name, {})[vid] = Version(
                    sha256=vid, bundle_sha256=bundle, handler=handler, size=size, created_at=created
                )
            for name, alias, vid in cur.execute(
                f"SELECT function, alias, sha256 FROM aliases WHERE function IN ({marks})"
                " ORDER BY function, alias",
                chunk,
            ):
                aliases.setdefault(name, {})[alias] = vid
        return [
            FunctionRecord(
                name=str(name),
                config=_decode_config(str(config)),
                versions=versions.get(str(name), {}),
                aliases=aliases.get(str(name), {}),
                created_at=float(created_at),  # type: ignore[arg-type]
                updated_at=float(updated_at),  # type: ignore[arg-type]
                revision=int(revision),  # type: ignore[call-overload]
                deleted=bool(deleted),
            )
            for name, config, created_at, updated_at, revision, deleted in rows
        ]

    def get(self, name: str) -> FunctionRecord | None:
        with self._lock:
            record = self._load(self._db.cursor(), name)
        return None if record is None or record.deleted else record

    def _require(self, cur: sqlite3.Cursor, name: str) -> FunctionRecord:
        record = self._load(cur, name)
        if record is None or record.deleted:
            raise not_found(f"function {name!r} does not exist")
        return record

    def list_functions(self, *, after: str = "", limit: int = 100) -> list[FunctionRecord]:
        with self._lock:
            cur = self._db.cursor()
            rows = cur.execute(
                f"SELECT {_FUNCTION_COLUMNS} FROM functions"
                " WHERE deleted = 0 AND name > ? ORDER BY name LIMIT ?",
                (after, limit),
            ).fetchall()
            return self._records(cur, rows)

    def delete(self, name: str) -> FunctionRecord:
        with self._tx() as cur:
            self._require(cur, name)
            rev = self._bump(cur)
            cur.execute("DELETE FROM aliases WHERE function = ?", (name,))
            cur.execute("DELETE FROM versions WHERE function = ?", (name,))
            cur.execute(
                "UPDATE functions SET deleted = 1, revision = ?, updated_at = ? WHERE name = ?",
                (rev, time.time(), name),
            )
            record = self._load(cur, name)
        assert record is not None
        return record

    def touch(self, name: str) -> bool:
        """Give a live function a new revision (its secrets changed), so every node
        learns it through the change feed; False when there is no such function."""
        with self._tx() as cur:
            row = cur.execute(
                "SELECT 1 FROM functions WHERE name = ? AND deleted = 0", (name,)
            ).fetchone()
            if row is None:
                return False
            rev = self._bump(cur)
            cur.execute(
                "UPDATE functions SET revision = ?, updated_at = ? WHERE name = ?",
                (rev, time.time(), name),
            )
        return True

    def set_alias(self, name: str, alias: str, sha256: str) -> FunctionRecord:
        validate_name(alias, "alias")
        if alias == LATEST:
            raise bad_request("alias 'latest' always points at the newest deploy; it cannot be set")
        with self._tx() as cur:
            record = self._require(cur, name)
            if sha256 not in record.versions:
                raise not_found(f"function {name!r} has no version {sha256!r}")
            rev = self._bump(cur)
            self._upsert_alias(cur, name, alias, sha256)
            cur.execute(
                "UPDATE functions SET revision = ?, updated_at = ? WHERE name = ?",
                (rev, time.time(), name),
            )
            updated = self._load(cur, name)
        assert updated is not None
        return updated

    def delete_alias(self, name: str, alias: str) -> FunctionRecord:
        if alias == LATEST:
            raise bad_request("alias 'latest' cannot be deleted")
        with self._tx() as cur:
            record = self._require(cur, name)
            if alias not in record.aliases:
                raise not_found(f"function {name!r} has no alias {alias!r}")
            rev = self._bump(cur)
            cur.execute("DELETE FROM aliases WHERE function = ? AND alias = ?", (name, alias))
            cur.execute(
                "UPDATE functions SET revision = ?, updated_at = ? WHERE name = ?",
                (rev, time.time(), name),
            )
            updated = self._load(cur, name)
        assert updated is not None
        return updated

    def collect(self, retain: int) -> tuple[list[tuple[str, str]], set[str]]:
        """Remove every version that is neither among its function's newest
        ``retain`` nor pointed at by an alias (see :func:`retention`).

        Each function that lost versions gets a new revision, so nodes learn
        it through the change feed. Returns the removed ``(function, version)``
        pairs and the bundles no version refers to any more.

        Only functions changed since the last pass with the same ``retain`` are
        looked at (every change to versions or aliases gives a new revision, and
        a pass leaves nothing collectable behind), so a pass over 100k quiet
        functions does not scan them all every minute."""
        removed: list[tuple[str, str]] = []
        candidates: set[str] = set()
        keep = max(retain, 0)
        seen_retain, seen_revision = self._collected
        since = seen_revision if seen_retain == retain else 0
        with self._tx() as cur:
            if since:
                found = cur.execute(
                    "SELECT function FROM versions WHERE function IN"
                    " (SELECT name FROM functions WHERE revision > ?)"
                    " GROUP BY function HAVING COUNT(*) > ?",
                    (since, keep),
                )
            else:
                found = cur.execute(
                    "SELECT function FROM versions GROUP BY function HAVING COUNT(*) > ?", (keep,)
                )
            names = [str(row[0]) for row in found.fetchall()]
            records: list[FunctionRecord] = []
            for start in range(0, len(names), IN_CHUNK):
                chunk = names[start : start + IN_CHUNK]
                rows = cur.execute(
                    f"SELECT {_FUNCTION_COLUMNS} FROM functions"
                    f" WHERE name IN ({', '.join('?' * len(chunk))}) AND deleted = 0",
                    chunk,
                ).fetchall()
                records += self._records(cur, rows)
            for record in records:
                name = record.name
                gone = [vid for vid, why in retention(record, retain).items() if not why]
                if not gone:
                    continue
                rev = self._bump(cur)
                for vid in gone:
                    candidates.add(record.versions[vid].bundle_sha256)
                    cur.execute(
                        "DELETE FROM versions WHERE function = ? AND sha256 = ?", (name, vid)
                    )
                    removed.append((name, vid))
                cur.execute(
                    "UPDATE functions SET revision = ?, updated_at = ? WHERE name = ?",
                    (rev, time.time(), name),
                )
            unused = self._unreferenced(cur, candidates)
            head = int(cur.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])
        self._collected = (retain, head)  # committed: a rolled-back pass marks nothing
        return removed, unused

    def unreferenced(self, bundles: set[str]) -> set[str]:
        """Those of ``bundles`` that no version of any function refers to."""
        with self._lock:
            return self._unreferenced(self._db.cursor(), bundles)

    @staticmethod
    def _unreferenced(cur: sqlite3.Cursor, bundles: set[str]) -> set[str]:
        return {
            sha
            for sha in bundles
            if cur.execute(
                "SELECT 1 FROM versions WHERE bundle_sha256 = ? LIMIT 1", (sha,)
            ).fetchone()
            is None
        }

    def changes(
        self, since: int, limit: int = 1000, *, live_only: bool = False, configs_only: bool = False
    ) -> tuple[int, list[FunctionRecord]]:
        """Functions changed after ``since`` (tombstones included), oldest first.
        ``configs_only``: without versions and aliases (the scheduler reads only
        configs, over the whole registry at start).

        The returned revision is the last one included, so a client that
        passes it back as ``since`` never misses or repeats a change.
        ``live_only`` leaves tombstones out, for a caller that holds nothing
        (its first page from 0) and so has nothing to delete; past that page it
        needs them, as what it was sent may have been deleted since.
        """
        with self.snapshot() as cur:
            head = int(cur.execute("SELECT value FROM meta WHERE key = 'revision'").fetchone()[0])
            rows = cur.execute(
                f"SELECT {_FUNCTION_COLUMNS} FROM functions WHERE revision > ?"
                + (" AND deleted = 0" if live_only else "")
                + " ORDER BY revision LIMIT ?",
                (since, limit),
            ).fetchall()
            records = self._records(cur, rows, configs_only)
        if len(records) == limit:
            head = records[-1].revision
        return head, records
