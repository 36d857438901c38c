"""Runs a node's queued events (see :mod:`edgerun.node.events`) through the invoke
path, within limits that leave synchronous calls their room: at most
``async_slots`` events at once on the node, and each function's
``[async] max_concurrency``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from edgerun.auth import tenant_of
from edgerun.errors import ApiError, error_in
from edgerun.node.events import (
    Attempt,
    Event,
    EventQueue,
    QueueFull,
    attempt_of,
    backoff_s,
    failure_record,
    new_event_id,
)
from edgerun.node.invoke import FUNCTION_ERROR_HEADER, Checked, Incoming, Origin

if TYPE_CHECKING:
    from edgerun.config import NodeConfig
    from edgerun.node.catalog import Catalog
    from edgerun.node.invoke import Invoker

log = logging.getLogger("edgerun.node")

POLL_S = 0.2
LEASE_MARGIN_S = 30.0
RECOVER_EVERY_S = 5.0
THROTTLED_DELAY_S = 1.0


class Dispatcher:
    def __init__(
        self, cfg: NodeConfig, queue: EventQueue, invoker: Invoker, catalog: Catalog
    ) -> None:
        self.cfg = cfg
        self.queue = queue
        self.invoker = invoker
        self.catalog = catalog
        self._running: dict[str, int] = {}
        self._total = 0
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """An event was queued: look now rather than at the next poll."""
        self._wake.set()

    async def run_forever(self) -> None:
        recovered = await asyncio.to_thread(self.queue.recover, at_start=True)
        if recovered:
            log.warning("queued again %d event(s) a previous run had not finished", recovered)
        last_recover = time.monotonic()
        while True:
            try:
                if time.monotonic() - last_recover > RECOVER_EVERY_S:
                    last_recover = time.monotonic()
                    await asyncio.to_thread(self.queue.recover)  # leases that ran out
                await self._dispatch()
            except Exception:
                log.exception("dispatching queued events failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)

    async def _dispatch(self) -> None:
        room = self.cfg.async_slots - self._total
        if room <= 0:
            return
        full = frozenset(f for f, n in self._running.items() if n >= self._cap(f))
        for event in await asyncio.to_thread(self.queue.due, room * 4, full):
            if self._total >= self.cfg.async_slots:
                return
            if self._running.get(event.function, 0) >= self._cap(event.function):
                continue
            fn = self.catalog.get(event.function)
            timeout = fn.config.timeout_s if fn is not None else 0.0
            lease = timeout + self.cfg.queue_timeout_s + LEASE_MARGIN_S
            if not await asyncio.to_thread(self.queue.claim, event.id, lease):
                continue
            event.attempts += 1  # as the claim counted it
            self._running[event.function] = self._running.get(event.function, 0) + 1
            self._total += 1
            task = asyncio.create_task(self._run(event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _cap(self, function: str) -> int:
        """Half the function's sandboxes at most: its synchronous calls keep the rest."""
        fn = self.catalog.get(function)
        own = max(1, self.cfg.max_per_function // 2)
        return min(fn.config.async_.max_concurrency, own) if fn is not None else 1

    async def _run(self, event: Event) -> None:
        try:
            await self._attempt(event)
        except Exception:
            log.exception("running event %s failed; it will run again", event.id)
            try:
                await asyncio.to_thread(self.queue.release, event, THROTTLED_DELAY_S)
            except Exception:
                log.exception("event %s stays leased; it runs again when the lease ends", event.id)
        finally:
            self._total -= 1
            left = self._running.get(event.function, 1) - 1
            if left:
                self._running[event.function] = left
            else:
                self._running.pop(event.function, None)
            self._wake.set()

    async def _attempt(self, event: Event) -> None:
        """One run (``event.attempts`` already counts it), and what follows from it."""
        fn = self.catalog.get(event.function)
        now = time.time()
        if fn is None:
            gone = attempt_of(404, "ResourceNotFound", "the function no longer exists", now)
            await asyncio.to_thread(self.queue.dead, event, "FunctionGone", gone)
            return
        settings = fn.config.async_
        if now - event.enqueued_at > settings.max_event_age_s:
            await self._failed(event, "EventAgeExceeded", None)
            return
        if event.attempts > settings.max_retries + 1:  # e.g. it killed its runner each time
            await self._failed(event, "RetriesExhausted", None)
            return
        status, error, message = await self._invoke(event)
        if status == 200:
            await asyncio.to_thread(self.queue.done, event.id)
            return
        if status == 429 and now + THROTTLED_DELAY_S - event.enqueued_at < settings.max_event_age_s:
            # Throttled (its own limits, or no room): not a failed run, so not a retry.
            await asyncio.to_thread(self.queue.release, event, THROTTLED_DELAY_S)
            return
        attempt = attempt_of(status, error, message, time.time())
        retryable = status >= 500 or status == 429 or error == "Unhandled"
        attempts_left = settings.max_retries + 1 - event.attempts
        if retryable and attempts_left > 0:
            delay = backoff_s(event.attempts, self.cfg.async_retry_base_s)
            if now + delay - event.enqueued_at <= settings.max_event_age_s:
                await asyncio.to_thread(self.queue.retry, event, attempt, delay)
                return
        reason = "RetriesExhausted" if retryable else "NotRetryable"
        await self._failed(event, reason, attempt)

    async def _invoke(self, event: Event) -> tuple[int, str, str]:
        """Run it as a direct call would run (placement, pool, forwarding): its status,
        error type and message."""
        name, qualifier = event.function, event.qualifier
        req = Incoming(
            trigger="direct",
            target=name,
            path="/",
            method="POST",
            raw_path=f"/v1/functions/{name}/invocations",
            query=f"qualifier={qualifier}" if qualifier else "",
            headers=[("content-type", "application/json")],
            client="",
        )
        request_id = f"{event.id}.{event.attempts}"[:64]
        checked = Checked(name, qualifier, Origin(request_id, "", ""), None)
        try:
            reply = await self.invoker(req, event.payload, checked)
        except ApiError as exc:
            return exc.status, exc.type, exc.message
        if reply.status == 200:
            return 200, "", ""
        handler_raised = any(k == FUNCTION_ERROR_HEADER for k, _ in reply.headers)
        error = error_in(reply.body)
        kind = "Unhandled" if handler_raised else str(error.get("type") or f"HTTP{reply.status}")
        message = str(error.get("message") or reply.body[:2000].decode("utf-8", "replace"))
        if handler_raised:
            message = f"{error.get('type', 'Exception')}: {message}"
        return reply.status, kind, message

    async def _failed(self, event: Event, reason: str, attempt: Attempt | None) -> None:
        """To the function's failure destination: the dead letters, or a function of
        the same tenant (which gets Lambda's invocation record as its event)."""
        fn = self.catalog.get(event.function)
        target = fn.config.async_.on_failure if fn is not None else "dlq"
        if (
            target != "dlq"
            and event.hop == 0  # a failure record that failed too stops here: no loops
            and self.catalog.get(target) is not None
            and _same_tenant(target, event.function)
        ):
            attempts = [*event.errors, *([attempt] if attempt else [])]
            record = failure_record(event, attempts, reason)
            try:
                queued = await asyncio.to_thread(
                    self.queue.put, new_event_id(), target, None, record, hop=1
                )
            except QueueFull:
                queued = False
            if queued:
                await asyncio.to_thread(self.queue.handed_on, event)
                self._wake.set()
                return
        await asyncio.to_thread(self.queue.dead, event, reason, attempt)


def _same_tenant(a: str, b: str) -> bool:
    return tenant_of(a) == tenant_of(b)
