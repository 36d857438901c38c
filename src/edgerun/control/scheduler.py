"""Scheduled invocations: the control plane fires each function's ticks.

The control plane is the one owner of every schedule (there is one control
plane per cluster), so no lease is needed: it follows the registry's change
feed for functions with a ``schedule``, and at each tick sends an async
invocation (``x-edgerun-invocation-type: Event``) carrying an EventBridge-shaped
scheduled event to a region that is up, trying the next region when one fails.

Exactly once:

- The request id is ``sched-<hash of the name>-<tick's Unix seconds>``, the same
  for every try of one tick, and sent with the control plane's own node
  credential, so a region uses it as the event id and ignores a second enqueue of
  it: a tick re-sent after a crash between the region's 202 and the write below
  still runs once.
- The last settled tick of each function is kept in ``schedules.db`` (SQLite, in
  the control plane's data dir) once a region answered 202, so a restart does
  not send it again.

Catch-up rule: after downtime (or while every region refuses) only the latest
tick that is due is fired, once; older missed ticks are skipped (a rate of a
minute after an hour down fires once, not sixty times). A function seen for
the first time, or whose schedule changed, starts at its next tick.

``schedules.db`` is its own file rather than a table of the registry: it is the
control plane's private bookkeeping, written at every tick, and must not bump
the registry's revision (which every node follows) nor ride on PostgreSQL
when the registry does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from edgerun import schedule as sched
from edgerun.auth.scopes import SYSTEM_TENANT
from edgerun.control.accounts import Accounts
from edgerun.control.registry import Registry
from edgerun.models import FunctionRecord

log = logging.getLogger("edgerun.control.scheduler")

SCHEDULER_NAME = "control:scheduler"
"""The name of the node credential the control plane fires ticks with."""
NODE_TOKEN_HEADER = "x-edgerun-node-token"
INVOCATION_TYPE_HEADER = "x-edgerun-invocation-type"
REQUEST_ID_HEADER = "x-edgerun-request-id"
ACCOUNT = "000000000000"
MAX_INFLIGHT = 16
"""Ticks being sent at once."""
POST_TIMEOUT_S = 5.0
MAX_SLEEP_S = 1.0
_FEED_BATCH = 1000
_EVENT_NS = uuid.UUID("5d2f7c1e-8a43-4b0e-9d7e-2f9c3a1b6e50")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fired (
    function TEXT PRIMARY KEY,
    schedule TEXT NOT NULL,
    settled INTEGER NOT NULL,
    last_fired INTEGER
);
CREATE TABLE IF NOT EXISTS clock (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    anchor_real REAL NOT NULL,
    anchor_sched REAL NOT NULL,
    scale REAL NOT NULL
);
"""


# --- the pure part -------------------------------------------------------------------
@dataclass(frozen=True)
class Due:
    """What to do for one function now: fire ``fire`` (a tick, Unix seconds) or nothing,
    and the tick up to which everything is settled once that is done."""

    fire: int | None
    settled: int


def due(schedule: sched.Schedule, settled: int | None, now: float) -> Due:
    """The tick to fire at ``now`` (Unix seconds of the schedule's clock), given that
    every tick up to ``settled`` was fired or skipped (None: never seen before).

    Only the latest due tick fires (the catch-up rule); a function never seen
    starts at its next tick."""
    at = datetime.fromtimestamp(now, UTC)
    latest = schedule.last_fire(at)
    latest_s = int(latest.timestamp()) if latest is not None else None
    if settled is None:
        return Due(None, latest_s if latest_s is not None else int(now))
    if latest_s is None or latest_s <= settled:
        return Due(None, settled)
    return Due(latest_s, latest_s)


def request_id(name: str, tick: int) -> str:
    """The same id for every try of one tick of one function (a region ignores a
    second enqueue of it)."""
    return f"sched-{hashlib.sha256(name.encode()).hexdigest()[:12]}-{tick}"


def iso(tick: float) -> str:
    return datetime.fromtimestamp(tick, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def scheduled_event(name: str, tick: int) -> dict[str, Any]:
    """EventBridge's "Scheduled Event", its id derived from the function and tick."""
    return {
        "version": "0",
        "id": str(uuid.uuid5(_EVENT_NS, f"{name}\0{tick}")),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": iso(tick),
        "region": "edgerun",
        "resources": [f"arn:aws:events:edgerun:{ACCOUNT}:rule/{name}"],
        "detail": {},
    }


# --- persistence ---------------------------------------------------------------------
@dataclass
class Fired:
    schedule: str
    settled: int
    last_fired: int | None


class ScheduleStore:
    """``schedules.db``: the last settled tick of each function, and the schedule clock."""

    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            yield self._db.cursor()

    def load(self) -> dict[str, Fired]:
        with self._cursor() as cur:
            rows = cur.execute("SELECT function, schedule, settled, last_fired FROM fired")
            return {r[0]: Fired(r[1], int(r[2]), r[3]) for r in rows.fetchall()}

    def put(self, name: str, fired: Fired) -> None:
        with self._cursor() as cur:
            cur.execute(
                "INSERT INTO fired (function, schedule, settled, last_fired) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (function) DO UPDATE SET schedule = excluded.schedule,"
                " settled = excluded.settled, last_fired = excluded.last_fired",
                (name, fired.schedule, fired.settled, fired.last_fired),
            )

    def delete(self, name: str) -> None:
        with self._cursor() as cur:
            cur.execute("DELETE FROM fired WHERE function = ?", (name,))

    def anchor(self, scale: float, real_now: float) -> tuple[float, float]:
        """(real, schedule) seconds the schedule clock runs from at ``scale``: kept
        across restarts, and moved on continuously when the scale changed."""
        with self._cursor() as cur:
            row = cur.execute("SELECT anchor_real, anchor_sched, scale FROM clock").fetchone()
            if row is not None and row[2] == scale:
                return float(row[0]), float(row[1])
            sched_now = real_now if row is None else row[1] + (real_now - row[0]) * row[2]
            if row is None and scale == 1.0:
                sched_now = 0.0  # at the real clock: schedule time is real time
                real_now = 0.0
            cur.execute(
                "INSERT INTO clock (id, anchor_real, anchor_sched, scale) VALUES (0, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET anchor_real = excluded.anchor_real,"
                " anchor_sched = excluded.anchor_sched, scale = excluded.scale",
                (real_now, sched_now, scale),
            )
            return real_now, sched_now

    def close(self) -> None:
        with self._lock:
            self._db.close()


class ScheduleClock:
    """Schedule time: real time, or real time running ``scale`` times faster from a
    kept anchor (``schedule_time_scale``, a lab and test knob)."""

    def __init__(
        self, store: ScheduleStore, scale: float, real: Callable[[], float] = time.time
    ) -> None:
        if not 0 < scale <= 86400:
            raise ValueError("schedule_time_scale must be in (0, 86400]")
        self.scale = scale
        self.real = real
        self.anchor_real, self.anchor_sched = store.anchor(scale, real())

    def now(self) -> float:
        return self.anchor_sched + (self.real() - self.anchor_real) * self.scale

    def real_in(self, tick: float) -> float:
        """Real seconds from now until schedule time ``tick``."""
        return (tick - self.now()) / self.scale


def mint_credential(accounts: Accounts) -> str:
    """A fresh node credential for the scheduler, revoking the ones earlier starts
    made; its secret lives only in this process (as the dashboard's observer key)."""
    for entry in accounts.keys(SYSTEM_TENANT, nodes=True):
        if entry.name == SCHEDULER_NAME and not entry.revoked:
            accounts.revoke(entry.id)
    _, secret = accounts.create_key(SYSTEM_TENANT, ["node"], name=SCHEDULER_NAME, node=True)
    return secret


# --- the loop ------------------------------------------------------------------------
@dataclass
class Entry:
    name: str
    schedule: sched.Schedule
    fired: Fired | None
    next_due: float | None = None
    """Schedule time of its next tick once known: nothing to work out before it."""


class Scheduler:
    """Fires the ticks of every scheduled function (see the module's docstring)."""

    def __init__(
        self,
        registry: Registry,
        store: ScheduleStore,
        regions: Callable[[], list[dict[str, Any]]],
        node_secret: str,
        *,
        verify: Any = True,
        time_scale: float = 1.0,
        real: Callable[[], float] = time.time,
    ) -> None:
        """``regions`` lists the nodes (``ControlApp.node_views``); ``node_secret`` is
        the control plane's own node credential."""
        self.registry = registry
        self.store = store
        self.regions = regions
        self.node_secret = node_secret
        self.verify = verify
        self.clock = ScheduleClock(store, time_scale, real)
        self.entries: dict[str, Entry] = {}
        self._revision = 0
        self._persisted = store.load()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(MAX_INFLIGHT)
        self.client: httpx.AsyncClient | None = None

    # following the registry
    def sync(self) -> None:
        """Catch up with the registry: functions scheduled, rescheduled or gone."""
        while True:
            revision, records = self.registry.changes(
                self._revision, _FEED_BATCH, configs_only=True
            )
            for record in records:
                self._apply(record)
            self._revision = max(self._revision, revision)
            if len(records) < _FEED_BATCH:
                return

    async def catch_up(self) -> None:
        """:meth:`sync` with the pages read off the event loop: from 0 (at start) that
        is the whole registry, 100 pages at 100k functions. A page :meth:`sync`
        overtook meanwhile is read again, never applied over newer records."""
        while True:
            since = self._revision
            revision, records = await asyncio.to_thread(
                functools.partial(self.registry.changes, since, _FEED_BATCH, configs_only=True)
            )
            if self._revision != since:
                continue
            for record in records:
                self._apply(record)
            self._revision = max(self._revision, revision)
            if len(records) < _FEED_BATCH:
                return

    def _apply(self, record: FunctionRecord) -> None:
        name, expr = record.name, record.config.schedule
        if record.deleted or not expr:
            self.entries.pop(name, None)
            if self._persisted.pop(name, None) is not None:
                self.store.delete(name)
            return
        current = self.entries.get(name)
        if current is not None and current.schedule.expr == expr:
            return
        try:
            parsed = sched.parse(expr)
        except ValueError as exc:  # validated at deploy: only an older edgerun's record
            log.warning("function %s: schedule not fired: %s", name, exc)
            self.entries.pop(name, None)
            return
        fired = self._persisted.get(name)
        if fired is not None and fired.schedule != expr:  # rescheduled: start afresh
            settled = due(parsed, None, self.clock.now()).settled
            fired = Fired(expr, settled, fired.last_fired)
            self._persisted[name] = fired
            self.store.put(name, fired)
        self.entries[name] = Entry(name, parsed, fired)

    # firing
    async def run_forever(self) -> None:
        async with httpx.AsyncClient(verify=self.verify, timeout=POST_TIMEOUT_S) as client:
            self.client = client
            try:
                while True:
                    try:
                        await self.catch_up()
                        wait = self.step()
                    except Exception:
                        log.exception("the scheduler's step failed")
                        wait = MAX_SLEEP_S
                    await asyncio.sleep(wait)
            finally:
                tasks = list(self._inflight.values())
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def step(self) -> float:
        """Start sending every due tick; the real seconds until the next one is due
        (at most :data:`MAX_SLEEP_S`, so deploys and regions coming up are seen)."""
        now = self.clock.now()
        soonest = now + MAX_SLEEP_S * self.clock.scale
        for entry in list(self.entries.values()):
            if entry.name in self._inflight:
                continue
            if entry.next_due is not None and now < entry.next_due:
                soonest = min(soonest, entry.next_due)
                continue
            settled = entry.fired.settled if entry.fired else None
            todo = due(entry.schedule, settled, now)
            if entry.fired is None:
                entry.fired = Fired(entry.schedule.expr, todo.settled, None)
                self._persisted[entry.name] = entry.fired
                self.store.put(entry.name, entry.fired)
            if todo.fire is not None:
                task = asyncio.create_task(self._fire(entry, todo.fire))
                self._inflight[entry.name] = task
                task.add_done_callback(functools.partial(self._done, entry.name))
                continue
            following = entry.schedule.next_fire(datetime.fromtimestamp(now, UTC))
            entry.next_due = following.timestamp() if following is not None else math.inf
            soonest = min(soonest, entry.next_due)
        return max(0.02, min(MAX_SLEEP_S, self.clock.real_in(soonest)))

    def _done(self, name: str, task: asyncio.Task[None]) -> None:
        self._inflight.pop(name, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("firing a tick of %s failed", name, exc_info=task.exception())

    def up_regions(self, name: str) -> list[str]:
        """URLs of the regions that are up, in an order of their own per function
        (spreading functions over regions, the same for every try)."""
        regions = [
            n
            for n in self.regions()
            if n.get("role") == "region"
            and n.get("state") == "up"
            and n.get("url")
            and not n.get("revoked")
        ]
        regions.sort(key=lambda n: hashlib.sha256(f"{name}\0{n['name']}".encode()).digest())
        return [str(n["url"]).rstrip("/") for n in regions]

    async def _fire(self, entry: Entry, tick: int) -> None:
        async with self._slots:
            if await self.send(entry.name, tick) and self.entries.get(entry.name) is entry:
                fired = Fired(entry.schedule.expr, tick, tick)
                entry.fired = fired
                self._persisted[entry.name] = fired
                self.store.put(entry.name, fired)

    async def send(self, name: str, tick: int) -> bool:
        """POST the tick's event to a region that is up, the next on failure; whether
        one queued it (202)."""
        client = self.client
        assert client is not None
        rid = request_id(name, tick)
        headers = {
            INVOCATION_TYPE_HEADER: "Event",
            NODE_TOKEN_HEADER: self.node_secret,
            REQUEST_ID_HEADER: rid,
        }
        regions = self.up_regions(name)
        if not regions:
            log.warning("tick %s of %s: no region is up; trying again", iso(tick), name)
            return False
        for url in regions:
            try:
                resp = await client.post(
                    f"{url}/v1/functions/{name}/invocations",
                    json=scheduled_event(name, tick),
                    headers=headers,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                log.warning("tick %s of %s: %s: %s", iso(tick), name, url, exc)
                continue  # never sent: the next region may take it
            except httpx.HTTPError as exc:
                # Sent, and maybe queued there: try that region again (it queues an id
                # once) rather than another, which would run the tick a second time.
                log.warning("tick %s of %s: %s: %s; trying it again", iso(tick), name, url, exc)
                return False
            if resp.status_code == 202:
                log.info("tick %s of %s queued at %s as %s", iso(tick), name, url, rid)
                return True
            log.warning(
                "tick %s of %s: %s answered %d: %s",
                iso(tick),
                name,
                url,
                resp.status_code,
                resp.text[:200],
            )
        return False

    # what GET /v1/schedules shows
    def view(self, entry: Entry) -> dict[str, Any]:
        now = self.clock.now()
        following = entry.schedule.next_fire(datetime.fromtimestamp(now, UTC))
        last = entry.fired.last_fired if entry.fired else None
        nxt = following.timestamp() if following is not None else None
        return {
            "name": entry.name,
            "schedule": entry.schedule.expr,
            "next_fire": iso(nxt) if nxt is not None else None,
            "next_fire_in_s": round(self.clock.real_in(nxt), 3) if nxt is not None else None,
            "last_fired": iso(last) if last is not None else None,
        }
