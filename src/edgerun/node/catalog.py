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
_CHUNK = 500

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
    head: int = 0
    """The control plane's revision (0 from a control plane that does not say)."""


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
        """The control plane's revision at its last answer (the lag in /metrics)."""
        self.answered_at = 0.0
        """``time.monotonic()`` of the feed's last answer (0: none yet)."""
        self._cache: OrderedDict[str, FunctionRecord] = OrderedDict()
        self._cache_records = cache_records
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        """The writer's connection: the feed's batches (in a thread) and repairs."""
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        path.chmod(0o600)
        self._reader = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        """Reads (point reads on the loop, scans in threads in short chunks): WAL lets
        them run beside a write."""
        self._read_lock = threading.Lock()
        self._broken: set[str] = set()
        """Records found unreadable: deleted, and the feed followed from 0, by
        :meth:`repair` (in a thread, between two polls of the feed)."""
        self.generation = 0
        """Moves when a record is found unreadable: a feed answer asked for before
        that is dropped, not applied over the reset."""
        self._upgrade()
        self._load()
        self._migrate(path.with_name("registry.json"))

    @property
    def caught_up(self) -> bool:
        """In sync and holding everything up to the control plane's last answer: a
        node paging through the feed does not yet know every function (so must
        not, say, delete code it thinks nobody runs)."""
        return self.synced and self.revision >= self.control_revision

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
                    continue  # repaired when first read (see _unreadable)
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
        """After the last batch: waits for a commit or a scan still running in a thread."""
        with self._lock, self._read_lock:
            self._reader.close()
            self._db.close()

    # --- reads ------------------------------------------------------------------
    def get(self, name: str) -> FunctionRecord | None:
        record = self._cache.get(name)
        if record is not None:
            self._cache.move_to_end(name)
            return record
        record = self.peek(name)
        if record is not None:
            self._cache[name] = record
            if len(self._cache) > self._cache_records:
                self._cache.popitem(last=False)
        return record

    def peek(self, name: str) -> FunctionRecord | None:
        """:meth:`get` without keeping the record in memory (listings)."""
        record = self._cache.get(name)
        if record is not None:
            return record
        with self._read_lock:
            row = self._reader.execute(
                "SELECT record FROM functions WHERE name = ?", (name,)
            ).fetchone()
        if row is None:
            return None
        try:
            return _decode_record(row[0])
        except (msgspec.DecodeError, msgspec.ValidationError):
            self._unreadable(name)
            return None

    def read_many(self, names: list[str]) -> tuple[list[FunctionRecord], list[str]]:
        """The records of ``names`` (in a thread: nothing cached) and the names whose
        record is unreadable (for the loop to pass to :meth:`unreadable`)."""
        records, broken = [], []
        for i in range(0, len(names), _CHUNK):
            chunk = names[i : i + _CHUNK]
            with self._read_lock:
                rows = dict(
                    self._reader.execute(
                        "SELECT name, record FROM functions WHERE name IN"
                        f" ({', '.join('?' * len(chunk))})",
                        chunk,
                    ).fetchall()
                )
            for name in chunk:
                blob = rows.get(name)
                if blob is None:
                    continue
                try:
                    records.append(_decode_record(blob))
                except (msgspec.DecodeError, msgspec.ValidationError):
                    broken.append(name)
        return records, broken

    def unreadable(self, names: Iterable[str]) -> None:
        for name in names:
            self._unreadable(name)

    def _unreadable(self, name: str) -> None:
        """A record that cannot be decoded: from now on the node follows the feed
        from 0, which sends the whole registry again and repairs it. The disk is
        changed by :meth:`repair`, off the loop."""
        if name not in self._broken:
            log.warning("unreadable record %r in %s: following the feed from 0", name, self._path)
        self._broken.add(name)
        self.revision = 0
        self.generation += 1

    async def repair(self) -> None:
        """Delete the unreadable records and the stored revision (so a restart also
        follows from 0); ``follow`` calls it between two polls."""
        broken, self._broken = self._broken, set()
        if broken:
            await asyncio.to_thread(self._delete_broken, broken)

    def _delete_broken(self, names: set[str]) -> None:
        with transaction(self._db, self._lock) as cur:
            for name in names:
                cur.execute("DELETE FROM functions WHERE name = ?", (name,))
                cur.execute("DELETE FROM bundles WHERE function = ?", (name,))
            cur.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('revision', 0)")

    def names(
        self, *, after: str = "", limit: int = 100, tenant_prefix: str | None = None
    ) -> list[str]:
        """Names in order after ``after``: all of them (``tenant_prefix`` None), or one
        tenant's (``"acme."``: a range of the index; ``""``: the default tenant's,
        which have no dot). Names only, no record decoded: cheap to scan."""
        sql, args = "SELECT name FROM functions WHERE name > ?", [after]
        if tenant_prefix:
            end = tenant_prefix[:-1] + chr(ord(tenant_prefix[-1]) + 1)
            sql += " AND name >= ? AND name < ?"
            args += [tenant_prefix, end]
        elif tenant_prefix == "":
            sql += " AND instr(name, '.') = 0"
        with self._read_lock:
            rows = self._reader.execute(sql + " ORDER BY name LIMIT ?", (*args, limit)).fetchall()
        return [name for (name,) in rows]

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

    def all_bundles(self) -> set[str]:
        """Every bundle some version runs (a region's whole working set; in a thread)."""
        with self._read_lock:
            return {sha for (sha,) in self._reader.execute("SELECT DISTINCT sha FROM bundles")}

    def referenced(self, shas: Iterable[str]) -> set[str]:
        """Which of ``shas`` a version of some function runs. Safe in any thread; a
        long list is read in chunks, so the loop's point reads wait for one chunk
        at most."""
        wanted, found = list(shas), set[str]()
        for i in range(0, len(wanted), _CHUNK):
            chunk = wanted[i : i + _CHUNK]
            with self._read_lock:
                found.update(
                    sha
                    for (sha,) in self._reader.execute(
                        "SELECT DISTINCT sha FROM bundles WHERE sha IN"
                        f" ({', '.join('?' * len(chunk))})",
                        chunk,
                    )
                )
        return found

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
        """:meth:`apply` with the disk work in a thread. The cache and the revision
        change on the loop after the commit; until then a record not in memory
        may already read as its new state. A record found unreadable meanwhile
        keeps the revision at 0 (the feed is followed again from there)."""
        if keys:
            self.keyring.apply(keys)
        generation = self.generation
        unreferenced = await asyncio.to_thread(self._commit, revision, records, keys or [])
        self._applied(revision if generation == self.generation else 0, records)
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
        if revision:
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
            await catalog.repair()
            generation = catalog.generation
            changes = await _poll(catalog, client, control_url, wait_s)
            if generation != catalog.generation:
                continue  # asked for before a reset to 0: ask again from there
            catalog.synced = True
            catalog.control_revision = max(changes.head, changes.revision)
            catalog.answered_at = time.monotonic()
            backoff = 0.2
            if not (changes.functions or changes.keys or changes.revision != catalog.revision):
                continue
            # Shielded: a node told to stop mid-batch still finishes it in memory too.
            unreferenced = await asyncio.shield(
                catalog.apply_async(changes.revision, changes.functions, changes.keys)
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Unreachable, a bad answer, or a disk that failed a write: serve what is
            # held, and try again (the revision moved only with a committed batch).
            if not isinstance(exc, httpx.HTTPError | msgspec.DecodeError | msgspec.ValidationError):
                log.exception("applying the change feed failed; serving last known state")
            elif catalog.synced:
                log.warning("change feed unreachable (%s); serving last known state", exc)
            catalog.synced = False
            await asyncio.sleep(backoff)
            # Until the first answer (a node starting beside its control plane) at
            # least once a second; after that, up to every 5 s.
            backoff = min(backoff * 2, 5.0 if catalog.answered_at else 1.0)
            continue
        try:
            await on_change(changes.functions, unreferenced)
        except Exception:
            log.exception("acting on a change of the registry failed")
        if len(changes.functions) + len(changes.keys) < _SMALL_BATCH:
            await asyncio.sleep(batch_window_s)


async def _poll(
    catalog: Catalog, client: httpx.AsyncClient, control_url: str, wait_s: float
) -> _Changes:
    params: dict[str, str | int] = {"since": catalog.revision, "wait": int(wait_s)}
    if catalog.revision == 0 and catalog.empty():
        # Nothing held: a snapshot of what lives (no deleted functions or revoked
        # keys to replay), paged like any other answer.
        params["fresh"] = "true"
    resp = await client.get(f"{control_url}/v1/changes", params=params, timeout=wait_s + 10)
    resp.raise_for_status()
    body = resp.content
    if len(body) > _DECODE_IN_THREAD:
        return await asyncio.to_thread(_decode_changes, body)
    return _decode_changes(body)
