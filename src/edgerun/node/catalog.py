"""A node's copy of the registry, fed by the control plane's change feed.

The copy lives in SQLite (``registry.db``, WAL), not in memory: a node that
restarts while the control plane is down still serves what it knew (static
stability), a restart reads no records at all (serving at once with 100k
functions known), and memory holds only the records in use (a bounded cache
in front of the file). Each batch of changes is one transaction, written off
the event loop, that touches only the records that changed: applying N
changes costs O(N), whatever the number of functions.

Beside each record the file keeps which bundles its versions run, so the node
learns which bundles a change left unreferenced (code it may delete) without
scanning every function.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import httpx
import msgspec

from edgerun.auth import KeyEntry, Keyring
from edgerun.dbtx import transaction
from edgerun.models import FunctionRecord

log = logging.getLogger("edgerun.node.catalog")

CACHE_RECORDS = 8192
"""Records kept decoded in memory (the rest are a point read away, ~20 µs)."""
_DECODE_IN_THREAD = 64 << 10
"""A feed answer this big is decoded off the event loop."""
_SCHEMA_VERSION = 2
BATCH_WINDOW_S = 0.05
"""After a small answer the next poll waits this long, so a burst of deploys
reaches the node as a few batches, not one answer per change (each answer
costs every node a request and a transaction). A node catching up (big
answers) does not wait."""
_SMALL_BATCH = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS functions (name TEXT PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, entry BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS bundles (
    function TEXT NOT NULL, sha TEXT NOT NULL, PRIMARY KEY (function, sha)
);
CREATE INDEX IF NOT EXISTS bundles_sha ON bundles (sha);
"""


class _Snapshot(msgspec.Struct):
    """The JSON copy of earlier releases (read once, to migrate)."""

    revision: int
    functions: dict[str, FunctionRecord]
    keys: list[KeyEntry] = []


class _Changes(msgspec.Struct):
    revision: int
    functions: list[FunctionRecord]
    keys: list[KeyEntry] = []


_decode_changes = msgspec.json.Decoder(_Changes).decode
_decode_record = msgspec.msgpack.Decoder(FunctionRecord).decode
_decode_key = msgspec.msgpack.Decoder(KeyEntry).decode
_encode = msgspec.msgpack.Encoder().encode


def _bundles(record: FunctionRecord) -> set[str]:
    return {v.bundle_sha256 for v in record.versions.values() if v.bundle_sha256}


class Catalog:
    """Functions and the keys that may call them, as of ``revision``. Keys are kept
    as the feed sends them (digests, never secrets) so a restarted node still
    verifies callers while the control plane is down."""

    def __init__(self, path: Path, keyring: Keyring, *, cache_records: int = CACHE_RECORDS) -> None:
        """``path``: the SQLite file (``registry.db``); a ``registry.json`` beside it
        from an earlier release is migrated once and removed."""
        self._path = path
        self.keyring = keyring
        self.revision = 0
        self.synced = False
        """True once the control plane has answered since start-up."""
        self.control_revision = 0
        """The control plane's revision at its last answer (for the lag in /metrics)."""
        self.answered_at = 0.0
        """``time.monotonic()`` of the feed's last answer (0: none yet)."""
        self._cache: OrderedDict[str, FunctionRecord] = OrderedDict()
        self._cache_records = cache_records
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        """Writes, and reads made off the event loop (the writer's connection)."""
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        path.chmod(0o600)
        self._reader = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        """Point reads on the event loop: WAL lets them run beside a write."""
        self._read_lock = threading.Lock()
        self._upgrade()
        self._load()
        self._migrate(path.with_name("registry.json"))

    def _meta(self, name: str) -> int | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else None

    def _upgrade(self) -> None:
        """A copy from before the bundle index: index every record once."""
        if (self._meta("schema") or 1) >= _SCHEMA_VERSION:
            return
        with transaction(self._db, self._lock) as cur:
            cur.execute("DELETE FROM bundles")
            for name, blob in cur.execute("SELECT name, record FROM functions").fetchall():
                try:
                    shas = _bundles(_decode_record(blob))
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue  # found by _load's check below
                cur.executemany(
                    "INSERT OR IGNORE INTO bundles (function, sha) VALUES (?, ?)",
                    [(name, sha) for sha in shas],
                )
            cur.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('schema', ?)",
                (_SCHEMA_VERSION,),
            )

    def _load(self) -> None:
        """Keys and the revision only: records are read when asked for."""
        keys, broken = [], 0
        for (blob,) in self._db.execute("SELECT entry FROM keys").fetchall():
            try:
                keys.append(_decode_key(blob))
            except (msgspec.DecodeError, msgspec.ValidationError):
                broken += 1
        if keys:
            self.keyring.apply(keys)
        self.revision = 0 if broken else (self._meta("revision") or 0)
        if broken:
            log.warning("%d unreadable key(s) in %s: following the feed from 0", broken, self._path)

    def _migrate(self, old: Path) -> None:
        if not old.exists():
            return
        try:
            snap = msgspec.json.decode(old.read_bytes(), type=_Snapshot)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("ignoring unreadable registry snapshot %s", old)
        else:
            if snap.revision > self.revision:
                self.apply(snap.revision, list(snap.functions.values()), snap.keys)
        old.unlink(missing_ok=True)

    def close(self) -> None:
        self._reader.close()
        self._db.close()

    # --- reads ------------------------------------------------------------------
    def get(self, name: str) -> FunctionRecord | None:
        record = self._cache.get(name)
        if record is not None:
            self._cache.move_to_end(name)
            return record
        with self._read_lock:
            row = self._reader.execute(
                "SELECT record FROM functions WHERE name = ?", (name,)
            ).fetchone()
        if row is None:
            return None
        try:
            record = _decode_record(row[0])
        except (msgspec.DecodeError, msgspec.ValidationError):
            self._unreadable(name)
            return None
        self._cache[name] = record
        if len(self._cache) > self._cache_records:
            self._cache.popitem(last=False)
        return record

    def _unreadable(self, name: str) -> None:
        """A record that cannot be decoded: forget it and every revision, so the
        feed sends the whole registry again (a snapshot) and repairs it."""
        log.warning("unreadable record %r in %s: following the feed from 0", name, self._path)
        with transaction(self._db, self._lock) as cur:
            cur.execute("DELETE FROM functions WHERE name = ?", (name,))
            cur.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('revision', 0)")
        self.revision = 0

    def page(self, *, after: str = "", limit: int = 100, prefix: str = "") -> list[FunctionRecord]:
        """Records by name after ``after`` (only names starting with ``prefix``)."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT record FROM functions WHERE name > ? AND substr(name, 1, ?) = ?"
                " ORDER BY name LIMIT ?",
                (max(after, prefix), len(prefix), prefix, limit),
            ).fetchall()
        out = []
        for (blob,) in rows:
            try:
                out.append(_decode_record(blob))
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
        return out

    def empty(self) -> bool:
        """No function or key held (a node never fed, whose first answers may be a
        snapshot without tombstones)."""
        with self._read_lock:
            return not self._reader.execute(
                "SELECT 1 FROM functions UNION ALL SELECT 1 FROM keys LIMIT 1"
            ).fetchone()

    def count(self) -> int:
        with self._read_lock:
            return int(self._reader.execute("SELECT count(*) FROM functions").fetchone()[0])

    def referenced(self, shas: Iterable[str]) -> set[str]:
        """Which of ``shas`` a version of some function runs (safe in any thread)."""
        with self._read_lock:
            return {
                sha
                for sha in shas
                if self._reader.execute(
                    "SELECT 1 FROM bundles WHERE sha = ? LIMIT 1", (sha,)
                ).fetchone()
            }

    # --- writes -----------------------------------------------------------------
    def apply(
        self, revision: int, records: list[FunctionRecord], keys: list[KeyEntry] | None = None
    ) -> set[str]:
        """One batch of the feed, in one transaction; returns the bundles no version
        runs any more (the event loop uses :meth:`apply_async`)."""
        if keys:
            self.keyring.apply(keys)
        unreferenced = self._commit(revision, records, keys or [])
        self._applied(revision, records)
        return unreferenced

    async def apply_async(
        self, revision: int, records: list[FunctionRecord], keys: list[KeyEntry] | None = None
    ) -> set[str]:
        """:meth:`apply` with the disk work in a thread. The cache and revision
        change on the loop after the commit, so a reader meanwhile sees the batch
        wholly before or wholly after."""
        if keys:
            self.keyring.apply(keys)
        unreferenced = await asyncio.to_thread(self._commit, revision, records, keys or [])
        self._applied(revision, records)
        return unreferenced

    def _commit(
        self, revision: int, records: list[FunctionRecord], keys: list[KeyEntry]
    ) -> set[str]:
        dropped: set[str] = set()
        with transaction(self._db, self._lock) as cur:
            for record in records:
                old = {
                    sha
                    for (sha,) in cur.execute(
                        "SELECT sha FROM bundles WHERE function = ?", (record.name,)
                    ).fetchall()
                }
                new = set() if record.deleted else _bundles(record)
                if record.deleted:
                    cur.execute("DELETE FROM functions WHERE name = ?", (record.name,))
                else:
                    cur.execute(
                        "INSERT OR REPLACE INTO functions (name, record) VALUES (?, ?)",
                        (record.name, _encode(record)),
                    )
                if old != new:
                    cur.executemany(
                        "DELETE FROM bundles WHERE function = ? AND sha = ?",
                        [(record.name, sha) for sha in old - new],
                    )
                    cur.executemany(
                        "INSERT INTO bundles (function, sha) VALUES (?, ?)",
                        [(record.name, sha) for sha in new - old],
                    )
                    dropped |= old - new
            for key in keys:
                cur.execute(
                    "INSERT OR REPLACE INTO keys (id, entry) VALUES (?, ?)", (key.id, _encode(key))
                )
            cur.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('revision', ?)",
                (max(self.revision, revision),),
            )
            return {
                sha
                for sha in dropped
                if not cur.execute("SELECT 1 FROM bundles WHERE sha = ? LIMIT 1", (sha,)).fetchone()
            }

    def _applied(self, revision: int, records: list[FunctionRecord]) -> None:
        for record in records:
            if record.name in self._cache:
                if record.deleted:
                    del self._cache[record.name]
                else:
                    self._cache[record.name] = record
        self.revision = max(self.revision, revision)


async def follow(
    catalog: Catalog,
    client: httpx.AsyncClient,
    control_url: str,
    *,
    wait_s: float,
    on_change: Callable[[list[FunctionRecord], set[str]], Awaitable[None]],
    batch_window_s: float = BATCH_WINDOW_S,
) -> None:
    """Long-poll the change feed forever, backing off while it is unreachable.
    ``on_change(records, unreferenced)`` follows each applied batch."""
    backoff = 0.2
    while True:
        try:
            params: dict[str, str | int] = {"since": catalog.revision, "wait": int(wait_s)}
            if catalog.revision == 0 and catalog.empty():
                # Nothing held: a snapshot of what lives (no deleted functions or
                # revoked keys to replay), paged like any other answer.
                params["fresh"] = "true"
            resp = await client.get(f"{control_url}/v1/changes", params=params, timeout=wait_s + 10)
            resp.raise_for_status()
            body = resp.content
            if len(body) > _DECODE_IN_THREAD:
                changes = await asyncio.to_thread(_decode_changes, body)
            else:
                changes = _decode_changes(body)
        except (httpx.HTTPError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            if catalog.synced:
                log.warning("change feed unreachable (%s); serving last known state", exc)
            catalog.synced = False
            await asyncio.sleep(backoff)
            # Until the first answer (a node starting beside its control plane) at
            # least once a second; after that, up to every 5 s.
            backoff = min(backoff * 2, 5.0 if catalog.answered_at else 1.0)
            continue
        backoff = 0.2
        catalog.synced = True
        catalog.control_revision, catalog.answered_at = changes.revision, time.monotonic()
        if changes.functions or changes.keys or changes.revision != catalog.revision:
            unreferenced = await catalog.apply_async(
                changes.revision, changes.functions, changes.keys
            )
            await on_change(changes.functions, unreferenced)
            if len(changes.functions) + len(changes.keys) < _SMALL_BATCH:
                await asyncio.sleep(batch_window_s)
