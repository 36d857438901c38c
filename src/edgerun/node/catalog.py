"""A node's copy of the registry, fed by the control plane's change feed.

The copy is kept in SQLite (``registry.db``, WAL) so a node that restarts while
the control plane is down still serves what it knew (static stability). Each
batch of changes is one transaction that writes only the records that changed:
applying N changes costs O(N), whatever the number of functions (the JSON
snapshot it replaces was rewritten whole on every change: O(N²) to catch up).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import msgspec

from edgerun.auth import KeyEntry, Keyring
from edgerun.dbtx import transaction
from edgerun.models import FunctionRecord

log = logging.getLogger("edgerun.node.catalog")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS functions (name TEXT PRIMARY KEY, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS keys (id TEXT PRIMARY KEY, entry BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
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


class Catalog:
    """Functions and the keys that may call them, as of ``revision``. Keys are kept
    as the feed sends them (digests, never secrets) so a restarted node still
    verifies callers while the control plane is down."""

    def __init__(self, path: Path, keyring: Keyring) -> None:
        """``path``: the SQLite file (``registry.db``); a ``registry.json`` beside it
        from an earlier release is migrated once and removed."""
        self._path = path
        self.keyring = keyring
        self.revision = 0
        self.functions: dict[str, FunctionRecord] = {}
        self.synced = False
        """True once the control plane has answered since start-up."""
        self.control_revision = 0
        """The control plane's revision at its last answer (for the lag in /metrics)."""
        self.answered_at = 0.0
        """``time.monotonic()`` of the feed's last answer (0: none yet)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        path.chmod(0o600)
        self._load()
        self._migrate(path.with_name("registry.json"))

    def _load(self) -> None:
        rows = self._db.execute("SELECT record FROM functions").fetchall()
        broken = 0
        for (blob,) in rows:
            try:
                record = _decode_record(blob)
            except (msgspec.DecodeError, msgspec.ValidationError):
                broken += 1
                continue
            self.functions[record.name] = record
        keys = []
        for (blob,) in self._db.execute("SELECT entry FROM keys").fetchall():
            try:
                keys.append(_decode_key(blob))
            except (msgspec.DecodeError, msgspec.ValidationError):
                broken += 1
        if keys:
            self.keyring.apply(keys)
        row = self._db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()
        self.revision = int(row[0]) if row and not broken else 0  # a gap: fetch it all again
        if broken:
            log.warning(
                "%d unreadable record(s) in %s: following the feed from 0", broken, self._path
            )

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
        self._db.close()

    def get(self, name: str) -> FunctionRecord | None:
        return self.functions.get(name)

    def apply(
        self, revision: int, records: list[FunctionRecord], keys: list[KeyEntry] | None = None
    ) -> None:
        """One batch of the feed: the changed records only, in one transaction."""
        if keys:
            self.keyring.apply(keys)
        with transaction(self._db, self._lock) as cur:
            for record in records:
                if record.deleted:
                    self.functions.pop(record.name, None)
                    cur.execute("DELETE FROM functions WHERE name = ?", (record.name,))
                else:
                    self.functions[record.name] = record
                    cur.execute(
                        "INSERT OR REPLACE INTO functions (name, record) VALUES (?, ?)",
                        (record.name, _encode(record)),
                    )
            for key in keys or ():
                cur.execute(
                    "INSERT OR REPLACE INTO keys (id, entry) VALUES (?, ?)", (key.id, _encode(key))
                )
            self.revision = max(self.revision, revision)
            cur.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES ('revision', ?)",
                (self.revision,),
            )


async def follow(
    catalog: Catalog,
    client: httpx.AsyncClient,
    control_url: str,
    *,
    wait_s: float,
    on_change: Callable[[list[FunctionRecord]], Awaitable[None]],
) -> None:
    """Long-poll the change feed forever, backing off while it is unreachable."""
    backoff = 0.2
    while True:
        try:
            resp = await client.get(
                f"{control_url}/v1/changes",
                params={"since": catalog.revision, "wait": int(wait_s)},
                timeout=wait_s + 10,
            )
            resp.raise_for_status()
            changes = _decode_changes(resp.content)
        except (httpx.HTTPError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            if catalog.synced:
                log.warning("change feed unreachable (%s); serving last known state", exc)
            catalog.synced = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            continue
        backoff = 0.2
        catalog.synced = True
        catalog.control_revision, catalog.answered_at = changes.revision, time.monotonic()
        if changes.functions or changes.keys or changes.revision != catalog.revision:
            catalog.apply(changes.revision, changes.functions, changes.keys)
            await on_change(changes.functions)
