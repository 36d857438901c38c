"""A node's copy of the registry, fed by the control plane's change feed.

The copy is saved to disk after every change so a node that restarts while
the control plane is down still serves what it knew (static stability).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import msgspec

from edgerun.auth import KeyEntry, Keyring
from edgerun.files import write_atomic
from edgerun.models import FunctionRecord

log = logging.getLogger("edgerun.node.catalog")


class _Snapshot(msgspec.Struct):
    revision: int
    functions: dict[str, FunctionRecord]
    keys: list[KeyEntry] = []


class _Changes(msgspec.Struct):
    revision: int
    functions: list[FunctionRecord]
    keys: list[KeyEntry] = []


_decode_changes = msgspec.json.Decoder(_Changes).decode


class Catalog:
    """Functions and the keys that may call them, as of ``revision``. Keys are kept
    as the feed sends them (digests, never secrets) so a restarted node still
    verifies callers while the control plane is down."""

    def __init__(self, path: Path, keyring: Keyring) -> None:
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
        if path.exists():
            try:
                snap = msgspec.json.decode(path.read_bytes(), type=_Snapshot)
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.warning("ignoring unreadable registry snapshot %s", path)
            else:
                self.revision, self.functions = snap.revision, snap.functions
                keyring.apply(snap.keys)

    def get(self, name: str) -> FunctionRecord | None:
        return self.functions.get(name)

    def apply(
        self, revision: int, records: list[FunctionRecord], keys: list[KeyEntry] | None = None
    ) -> None:
        if keys:
            self.keyring.apply(keys)
        for record in records:
            if record.deleted:
                self.functions.pop(record.name, None)
            else:
                self.functions[record.name] = record
        self.revision = max(self.revision, revision)
        self._save()

    def _save(self) -> None:
        snap = _Snapshot(self.revision, self.functions, self.keyring.entries())
        write_atomic(self._path, msgspec.json.encode(snap))


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
