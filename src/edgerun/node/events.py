"""Asynchronous invocations on a node: a durable queue, and a dispatcher that runs
its events through the same placement, pool and forwarding as a direct call.

Why queue where the event arrives (POP or region), not on the region that will
run it: the 202 then waits for one local fsync, not a trip to a region; the
POP's placement still decides at run time where each event runs (here, or
forwarded as a synchronous call); and a POP cut off from its regions or the
control plane keeps taking events (static stability). The queue is SQLite
(WAL, ``synchronous=FULL``): an event is on disk before its 202 is sent.

Each event runs at least once: a run is leased, and an event whose lease ran out
(or whose runner was this node's previous process, killed mid-run) runs again.
A failed run is retried ``max_retries`` times with exponential backoff and
jitter while younger than ``max_event_age_s``; then it goes to the function's
failure destination: the dead-letter store here, or another function.
"""

from __future__ import annotations

import json
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from edgerun.dbtx import transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    qualifier TEXT,
    payload BLOB NOT NULL,
    enqueued_at DOUBLE PRECISION NOT NULL,
    not_before DOUBLE PRECISION NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'queued',
    owner TEXT NOT NULL DEFAULT '',
    lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    errors TEXT NOT NULL DEFAULT '[]',
    hop INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_due ON events (state, not_before);
CREATE INDEX IF NOT EXISTS events_by_function ON events (function);
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    function TEXT NOT NULL,
    qualifier TEXT,
    payload BLOB NOT NULL,
    enqueued_at DOUBLE PRECISION NOT NULL,
    died_at DOUBLE PRECISION NOT NULL,
    reason TEXT NOT NULL,
    errors TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_by_function ON dead_letters (function, died_at);
CREATE INDEX IF NOT EXISTS dead_by_age ON dead_letters (died_at);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, at DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS seen_at ON seen (at);
"""
SEEN_FOR_S = 86400.0
"""How long an event id is remembered after it was queued: the same id sent again
within a day (a scheduler or client trying again) is not queued twice."""
MAX_ERROR_CHARS = 2000
DEAD_LETTERS_KEPT_S = 14 * 86400.0
"""Dead letters older than this are dropped (as Lambda's destinations keep 14 days)."""


class QueueFull(Exception):
    """The node's or the function's share of the queue is taken (a 429 to the sender)."""


class Attempt(msgspec.Struct, kw_only=True):
    """One run of an event that failed."""

    at: float
    status: int
    error: str
    message: str


class Event(msgspec.Struct, kw_only=True):
    id: str
    function: str
    qualifier: str | None
    payload: bytes
    enqueued_at: float
    attempts: int = 0
    errors: list[Attempt] = msgspec.field(default_factory=list)
    hop: int = 0
    """1 for an on-failure record: if it fails too, it goes to the dead letters (no loops)."""


class DeadLetter(msgspec.Struct, kw_only=True):
    id: str
    function: str
    qualifier: str | None
    event: Any
    enqueued_at: float
    died_at: float
    reason: str
    attempts: list[Attempt]


def new_event_id() -> str:
    return "ev-" + secrets.token_hex(12)


class EventQueue:
    """The node's events and dead letters in one SQLite file, shared by its workers
    (claims are atomic updates), safe to call from threads."""

    def __init__(
        self,
        path: Path,
        *,
        owner: str = "0",
        clock: Callable[[], float] = time.time,
        max_queued: int = 100_000,
        max_per_function: int = 10_000,
    ):
        """``owner``: this worker's seat; events a previous process of the same seat
        was running when it died are queued again at once (see :meth:`recover`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.owner = owner
        self.clock = clock
        self.max_queued = max_queued
        self.max_per_function = max_per_function
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=10.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a 202 means the event is on disk
        self._db.executescript(_SCHEMA)
        path.chmod(0o600)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        with transaction(self._db, self._lock) as cur:
            yield cur

    # --- the queue ---------------------------------------------------------
    def put(
        self,
        event_id: str,
        function: str,
        qualifier: str | None,
        payload: bytes,
        *,
        remember: bool = False,
        hop: int = 0,
    ) -> bool:
        """Queue an event (durably, before returning). ``remember``: the id comes from
        a sender that may send it again (a node, the scheduler): within a day, the same
        id is queued once (False then, changing nothing). Raises :class:`QueueFull`
        past the node's or the function's share."""
        now = self.clock()
        with self._tx() as cur:
            if remember:
                cur.execute("DELETE FROM seen WHERE at < ?", (now - SEEN_FOR_S,))
                if cur.execute("SELECT 1 FROM seen WHERE id = ?", (event_id,)).fetchone():
                    return False
            total = cur.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            if total >= self.max_queued:
                raise QueueFull(f"this node holds {total} queued events, its limit")
            mine = cur.execute(
                "SELECT COUNT(*) FROM events WHERE function = ?", (function,)
            ).fetchone()[0]
            if mine >= self.max_per_function:
                raise QueueFull(f"{function!r} has {mine} events queued here, its limit")
            if remember:
                cur.execute("INSERT INTO seen (id, at) VALUES (?, ?)", (event_id, now))
            cur.execute(
                "INSERT INTO events"
                " (id, function, qualifier, payload, enqueued_at, not_before, hop)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (event_id, function, qualifier, payload, now, now, hop),
            )
        return True

    def recover(self, *, at_start: bool = False) -> int:
        """Queue again anything whose lease ran out and, ``at_start``, what this seat's
        previous process was running; returns how many (each may run twice: at least
        once). Old dead letters are dropped on the way."""
        now = self.clock()
        owner = self.owner if at_start else "\0"
        with self._tx() as cur:
            cur.execute(
                "UPDATE events SET state = 'queued', not_before = ?"
                " WHERE state = 'running' AND (owner = ? OR lease_until < ?)",
                (now, owner, now),
            )
            count = cur.rowcount
            cur.execute("DELETE FROM dead_letters WHERE died_at < ?", (now - DEAD_LETTERS_KEPT_S,))
            return count

    def release(self, event: Event, delay_s: float) -> None:
        """Back to the queue without counting the run (throttled, or the runner failed)."""
        with self._tx() as cur:
            cur.execute(
                "UPDATE events SET state = 'queued', not_before = ?,"
                " attempts = MAX(0, attempts - 1) WHERE id = ?",
                (self.clock() + delay_s, event.id),
            )

    def due(self, limit: int, skip: frozenset[str] = frozenset()) -> list[Event]:
        """The oldest due events, leaving out functions in ``skip`` (those at their
        concurrency cap: one function's backlog must not hide the others')."""
        now = self.clock()
        marks = ",".join("?" * len(skip))
        where = f" AND function NOT IN ({marks})" if skip else ""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, function, qualifier, payload, enqueued_at, attempts, errors, hop"
                f" FROM events WHERE state = 'queued' AND not_before <= ?{where}"
                " ORDER BY not_before LIMIT ?",
                (now, *sorted(skip), limit),
            ).fetchall()
        return [_event(r) for r in rows]

    def claim(self, event_id: str, lease_s: float) -> bool:
        """Take a due event to run (False: another worker took it first)."""
        now = self.clock()
        with self._tx() as cur:
            cur.execute(
                "UPDATE events SET state = 'running', owner = ?, lease_until = ?,"
                " attempts = attempts + 1 WHERE id = ? AND state = 'queued'",
                (self.owner, now + lease_s, event_id),
            )
            return cur.rowcount == 1

    def done(self, event_id: str) -> None:
        with self._tx() as cur:
            cur.execute("DELETE FROM events WHERE id = ?", (event_id,))
            self._bump(cur, "succeeded")

    def retry(self, event: Event, attempt: Attempt, delay_s: float) -> None:
        errors = [*event.errors, attempt]
        with self._tx() as cur:
            cur.execute(
                "UPDATE events SET state = 'queued', not_before = ?, errors = ? WHERE id = ?",
                (self.clock() + delay_s, _errors(errors), event.id),
            )
            self._bump(cur, "retries")

    def dead(self, event: Event, reason: str, attempt: Attempt | None) -> None:
        """Move it to the dead letters, with every attempt's error."""
        errors = [*event.errors, *([attempt] if attempt else [])]
        with self._tx() as cur:
            cur.execute("DELETE FROM events WHERE id = ?", (event.id,))
            cur.execute(
                "INSERT OR REPLACE INTO dead_letters"
                " (id, function, qualifier, payload, enqueued_at, died_at, reason, errors)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (event.id, event.function, event.qualifier, event.payload, event.enqueued_at,
                 self.clock(), reason, _errors(errors)),
            )  # fmt: skip
            self._bump(cur, "dead")

    def handed_on(self, event: Event) -> None:
        """Gone to its on-failure function (queued there as a new event)."""
        with self._tx() as cur:
            cur.execute("DELETE FROM events WHERE id = ?", (event.id,))
            self._bump(cur, "handed_on")

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        with self._lock:
            queued, running, oldest = self._db.execute(
                "SELECT SUM(state = 'queued'), SUM(state = 'running'), MIN(enqueued_at) FROM events"
            ).fetchone()
            dead = self._db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
            counts = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return {
            "queued": int(queued or 0),
            "running": int(running or 0),
            "oldest_age_s": round(now - oldest, 3) if oldest is not None else 0.0,
            "dead_letters": int(dead),
            "retries": int(counts.get("retries", 0)),
            "succeeded": int(counts.get("succeeded", 0)),
        }

    # --- dead letters ------------------------------------------------------
    def dead_letters(
        self, function: str | None = None, limit: int = 100, tenant: str | None = None
    ) -> list[DeadLetter]:
        """Newest first: one function's, one tenant's (``tenant.`` names; the default
        tenant's have no dot), or all."""
        args: tuple[object, ...]
        if function:
            where, args = "WHERE function = ?", (function,)
        elif tenant == "default":
            where, args = "WHERE instr(function, '.') = 0", ()
        elif tenant:
            where, args = "WHERE substr(function, 1, ?) = ?", (len(tenant) + 1, tenant + ".")
        else:
            where, args = "", ()
        with self._lock:
            rows = self._db.execute(
                "SELECT id, function, qualifier, payload, enqueued_at, died_at, reason, errors"
                f" FROM dead_letters {where} ORDER BY died_at DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [_dead(r) for r in rows]

    def dead_letter(self, event_id: str) -> DeadLetter | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, function, qualifier, payload, enqueued_at, died_at, reason, errors"
                " FROM dead_letters WHERE id = ?",
                (event_id,),
            ).fetchone()
        return None if row is None else _dead(row)

    def replay(self, function: str, ids: list[str] | None) -> int:
        """Queue dead letters of ``function`` again (all, or these ids), as new attempts."""
        now = self.clock()
        with self._tx() as cur:
            rows = cur.execute(
                "SELECT id, qualifier, payload, errors FROM dead_letters WHERE function = ?",
                (function,),
            ).fetchall()
            wanted = None if ids is None else set(ids)
            chosen = [r for r in rows if wanted is None or r[0] in wanted]
            for event_id, qualifier, payload, errors in chosen:
                # A fresh set of attempts; the earlier ones stay in its history.
                cur.execute("DELETE FROM dead_letters WHERE id = ?", (event_id,))
                cur.execute(
                    "INSERT OR REPLACE INTO events"
                    " (id, function, qualifier, payload, enqueued_at, not_before, errors)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (event_id, function, qualifier, payload, now, now, errors),
                )
        return len(chosen)

    def purge(self, function: str) -> int:
        with self._tx() as cur:
            cur.execute("DELETE FROM dead_letters WHERE function = ?", (function,))
            return cur.rowcount

    @staticmethod
    def _bump(cur: sqlite3.Cursor, name: str) -> None:
        cur.execute(
            "INSERT INTO counters (name, value) VALUES (?, 1)"
            " ON CONFLICT (name) DO UPDATE SET value = value + 1",
            (name,),
        )


def backoff_s(attempt: int, base_s: float, rng: random.Random | None = None) -> float:
    """Before retry ``attempt`` (1, 2, ...): ``base * 2^(attempt-1)``, jittered by
    ±50% so failed events of one outage do not all come back at once."""
    jitter = (rng or random).uniform(0.5, 1.5)
    return float(base_s * (2 ** (attempt - 1)) * jitter)


def attempt_of(status: int, error: str, message: str, at: float) -> Attempt:
    return Attempt(at=at, status=status, error=error[:128], message=message[:MAX_ERROR_CHARS])


def failure_record(event: Event, attempts: list[Attempt], reason: str) -> bytes:
    """What an on-failure function receives: Lambda's invocation record shape."""
    last = attempts[-1] if attempts else None
    return json.dumps(
        {
            "version": "1.0",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "requestContext": {
                "requestId": event.id,
                "functionArn": f"arn:aws:lambda:edgerun:000000000000:function:{event.function}",
                "condition": reason,
                "approximateInvokeCount": len(attempts),
            },
            "requestPayload": _json_or_text(event.payload),
            "responseContext": {"statusCode": last.status if last else 0},
            "responsePayload": (
                {"errorType": last.error, "errorMessage": last.message} if last else None
            ),
        }
    ).encode()


def _json_or_text(payload: bytes) -> Any:
    try:
        return json.loads(payload) if payload.strip() else {}
    except ValueError:
        return payload.decode("utf-8", "replace")


def _errors(errors: list[Attempt]) -> str:
    return msgspec.json.encode(errors).decode()


def _event(row: tuple[Any, ...]) -> Event:
    return Event(
        id=row[0], function=row[1], qualifier=row[2], payload=bytes(row[3]),
        enqueued_at=row[4], attempts=row[5],
        errors=msgspec.json.decode(row[6], type=list[Attempt]), hop=row[7],
    )  # fmt: skip


def _dead(row: tuple[Any, ...]) -> DeadLetter:
    return DeadLetter(
        id=row[0], function=row[1], qualifier=row[2], event=_json_or_text(bytes(row[3])),
        enqueued_at=row[4], died_at=row[5], reason=row[6],
        attempts=msgspec.json.decode(row[7], type=list[Attempt]),
    )  # fmt: skip
