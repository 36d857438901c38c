"""The invoke path: resolve the function, decide where it runs, run it here or forward it.

Both triggers arrive as an :class:`Incoming` (the HTTP trigger
``ANY /fn/{name}[@{qualifier}]/{path}`` and the direct invoke ``POST
/v1/functions/{name}/invocations``) and leave as a :class:`Reply`. A POP
asks the placement policy (through :class:`~edgerun.node.placer.Placer`) and
does exactly what the :class:`~edgerun.placement.Decision` says, including
what to do when the room it counted on is gone or every region refuses; a
region runs what it is sent. The Lambda event is built only on the node that
runs the code, from the client's address and host (a forward carries them in
``x-forwarded-for`` and ``x-forwarded-host``), so a handler sees the same
event wherever it ran.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import re
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qsl

import msgspec

from edgerun.auth import Keyring, Kind, NodeCredential, Principal
from edgerun.auth.keys import bearer
from edgerun.config import NodeConfig
from edgerun.errors import ApiError, bad_request, not_found, unauthorized
from edgerun.http import check_json_depth, too_deep
from edgerun.lambda_http import build_event
from edgerun.limits import Limit, Limiter, Ticket
from edgerun.logconfig import invocation as current_invocation
from edgerun.models import FunctionRecord, UnknownQualifier, Version, validate_function_name
from edgerun.node.catalog import Catalog
from edgerun.node.code_cache import BundleUnavailable, CodeCache
from edgerun.node.events import EventQueue, QueueFull, new_event_id
from edgerun.node.logs import CLIENT_CLOSED, Journal, LogEntry
from edgerun.node.metrics import NodeMetrics
from edgerun.node.placer import Placer
from edgerun.node.regions import AllRegionsDown, ForwardFailed, Regions
from edgerun.node.secrets import SecretCache
from edgerun.node.state import Counters, InitErrors, Specs
from edgerun.placement import Action, Decision, FunctionView, region_decision
from edgerun.pool import Claim, Pool, PoolFull
from edgerun.sandbox.base import SandboxError, SandboxInitError, SandboxSpec
from edgerun.sandbox.protocol import Failure, Invoke
from edgerun.tracing import HEADERS as TRACE_HEADERS
from edgerun.tracing import (
    NO_CONTEXT,
    InvokeTrace,
    TraceContext,
    Tracer,
    decision_attributes,
    trace_context,
)

log = logging.getLogger("edgerun.node")

NODE_TOKEN_HEADER = "x-edgerun-node-token"
"""Carries the forwarding POP's node credential. Not ``authorization``: that
header belongs to the caller (and, for a public function, reaches it)."""
FORWARDED_BY_HEADER = "x-edgerun-forwarded-by"
LOG_TAIL_HEADER = "x-edgerun-log-tail"
"""On a direct invoke, "1": answer with the end of the output (LOG_RESULT_HEADER)."""
LOG_RESULT_HEADER = "x-edgerun-log-result"
LOG_TAIL_BYTES = 4096
INVOCATION_TYPE_HEADER = "x-edgerun-invocation-type"
"""``Event`` on a direct invoke: queue it durably, answer 202, run it later."""
FUNCTION_ERROR_HEADER = "x-edgerun-function-error"
"""On a reply: the handler raised (its error is the body), as opposed to edgerun failing."""

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "proxy-connection",
        "content-length",
        "host",
        "x-edgerun-node",
        "x-edgerun-placement",
        "x-edgerun-reason",
        "x-edgerun-worker",
    }
)
_FORWARD_OWNED = frozenset(
    {NODE_TOKEN_HEADER, FORWARDED_BY_HEADER, "x-edgerun-request-id", "x-edgerun-version"}
    | {"x-forwarded-for", "x-forwarded-host"}
    | TRACE_HEADERS
)
"""Headers a POP sets itself when forwarding; whatever a caller sent is dropped
(the trace context goes on checked, see :mod:`edgerun.tracing`)."""
_NOT_FORWARDED = _HOP_BY_HOP | _FORWARD_OWNED
_NOT_FOR_FUNCTIONS = frozenset({"x-edgerun-version", NODE_TOKEN_HEADER}) | TRACE_HEADERS
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_JSON = [("content-type", "application/json")]
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
"""An integer that may not fit 64 bits has 19 digits or more: only then are they checked."""
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_encode = msgspec.json.Encoder().encode


@dataclass(slots=True)
class Incoming:
    """One invocation request as the frontend parsed it."""

    trigger: Literal["http", "direct"]
    target: str
    """``name`` or ``name@qualifier``."""
    path: str
    """The function-relative path of an HTTP trigger ("/" for a direct invoke)."""
    method: str
    raw_path: str
    """The path escaped exactly as it arrived (what a forward must send on)."""
    query: str
    headers: list[tuple[str, str]]
    client: str
    key_id: str | None = None
    """Set once the caller's key is checked: its ``authorization`` header was meant
    for edgerun, so it reaches neither the function nor a region."""

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def query_param(self, name: str) -> str | None:
        for k, v in parse_qsl(self.query):
            if k == name:
                return v
        return None


@dataclass(slots=True)
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a request comes from, as far as this node believes the headers."""

    request_id: str
    source_ip: str
    host: str
    pinned: str | None = None
    """The version a POP resolved and forwards (x-edgerun-version); None from anyone else."""
    from_node: bool = False
    """Sent by a node of the cluster (its credential checked): auth and limits applied there."""


class Checked(NamedTuple):
    """What :meth:`Invoker.check` established about a request before its body was read."""

    name: str
    qualifier: str | None
    origin: Origin
    principal: Principal | None


@dataclass(slots=True)
class _Call:
    fn: FunctionRecord
    version: Version
    req: Incoming
    body: bytes
    origin: Origin
    payload: Any = None
    """The decoded JSON of a direct invoke."""
    qualifier: str | None = None
    """The alias or version the caller named (the handler's context shows it)."""
    output: str = ""
    """What the function printed, for the invocation's log entry."""
    error: str = ""
    """The type of the exception the handler raised, if it did."""
    trace_ctx: TraceContext = NO_CONTEXT
    """The caller's traceparent and tracestate, checked (empty when malformed)."""
    trace: InvokeTrace | None = None
    """This node's spans of the call, when it exports traces."""

    @property
    def request_id(self) -> str:
        return self.origin.request_id


def split_target(target: str) -> tuple[str, str | None]:
    name, sep, qualifier = target.partition("@")
    if sep and not qualifier:
        raise bad_request(f"empty alias or version after '@' in {target!r}")
    return name, qualifier or None


class Invoker:
    def __init__(
        self,
        cfg: NodeConfig,
        credential: NodeCredential,
        keyring: Keyring,
        *,
        catalog: Catalog,
        code: CodeCache,
        pool: Pool,
        regions: Regions,
        placer: Placer,
        specs: Specs,
        secret_cache: SecretCache,
        counters: Counters,
        init_errors: InitErrors,
        journal: Journal,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        stop_function: Callable[[str], Coroutine[Any, Any, None]],
    ) -> None:
        self.cfg = cfg
        self.worker: str | None = None
        """Which worker of a multi-worker node this is (told in x-edgerun-worker)."""
        self.tracer: Tracer | None = None
        """Set when the node exports traces (``[otel] endpoint``); None: no spans at all."""
        self.credential = credential
        self.keyring = keyring
        self.limiter = Limiter()
        self.catalog = catalog
        self.code = code
        self.pool = pool
        self.regions = regions
        self.placer = placer
        self.specs = specs
        self.secrets = secret_cache
        self.counters = counters
        self.metrics: NodeMetrics | None = None
        """Set by the node when ``metrics`` is on (see :mod:`edgerun.node.metrics`)."""
        self.init_errors = init_errors
        self.journal = journal
        self.events: EventQueue | None = None
        """Where asynchronous invocations are queued (None: this node takes none)."""
        self.on_queued: Callable[[], None] | None = None
        self._spawn = spawn
        self._stop_function = stop_function
        self._trusted_proxies = frozenset(cfg.trusted_proxies)
        self._id_prefix = secrets.token_hex(8)
        self._id_counter = itertools.count(1)
        self._warming: set[str] = set()

    # --- entry ---------------------------------------------------------------
    def check(self, req: Incoming) -> Checked:
        """Who is calling what, from the headers alone: the frontend runs this before it
        reads a body, so a caller without the right key is refused before it can upload."""
        if req.trigger == "http":
            name, qualifier = split_target(req.target)
        else:
            name, qualifier = req.target, req.query_param("qualifier")
            if "@" in name:
                name, qualifier = split_target(name)
        origin = self.origin(req)
        principal = None if origin.from_node else self.authorize(req, name)
        return Checked(name, qualifier, origin, principal)

    async def __call__(self, req: Incoming, body: bytes, checked: Checked | None = None) -> Reply:
        """Run or forward one invocation, and log it (record and output) whatever the outcome."""
        checked = checked or self.check(req)
        at, started = time.time(), time.perf_counter()
        token = current_invocation.set((checked.origin.request_id, checked.name))
        entry = LogEntry(
            at=at, node=self.cfg.name, request_id=checked.origin.request_id,
            function=checked.name, worker=int(self.worker or 0),
        )  # fmt: skip
        if checked.origin.from_node:
            entry.from_node = req.header(FORWARDED_BY_HEADER) or "?"
        headers: list[tuple[str, str]] | dict[str, str] = []
        trace_ctx = trace_context(req.headers)
        try:
            if self.tracer is None:
                reply = await self._invoke(req, body, checked, entry, trace_ctx, None)
            else:
                reply = await self._traced(req, body, checked, entry, trace_ctx, self.tracer)
            entry.status, headers = reply.status, reply.headers
            return reply
        except ApiError as exc:
            entry.status, entry.error, headers = exc.status, exc.type, exc.headers
            raise
        except asyncio.CancelledError:
            entry.status, entry.error = 499, CLIENT_CLOSED  # the caller went away
            raise
        except BaseException:
            entry.status, entry.error = 500, "InternalError"
            raise
        finally:
            entry.duration_ms = round((time.perf_counter() - started) * 1000, 3)
            for k, v in headers.items() if isinstance(headers, dict) else headers:
                if k == "x-edgerun-placement":
                    entry.placement = v
                elif k == "x-edgerun-reason":
                    entry.reason = v
            self.journal.add(entry)
            current_invocation.reset(token)

    async def _traced(
        self,
        req: Incoming,
        body: bytes,
        checked: Checked,
        entry: LogEntry,
        trace_ctx: TraceContext,
        tracer: Tracer,
    ) -> Reply:
        """:meth:`_invoke` under this node's spans of the call (edgerun.tracing)."""
        trace = tracer.begin(trace_ctx, checked.name, checked.origin.request_id)
        try:
            reply = await self._invoke(req, body, checked, entry, trace_ctx, trace)
        except BaseException as exc:
            trace.fail(exc)
            raise
        trace.finish(reply.status, reply.headers)
        return reply

    async def _invoke(
        self,
        req: Incoming,
        body: bytes,
        checked: Checked,
        entry: LogEntry,
        trace_ctx: TraceContext,
        trace: InvokeTrace | None,
    ) -> Reply:
        name, qualifier, origin, principal = checked
        payload: Any = None
        if req.trigger == "direct":
            payload = _decode_payload(body)
        fn, version = self.resolve(name, qualifier, origin.pinned)
        entry.version = version.sha256
        if req.trigger == "direct" and req.header(INVOCATION_TYPE_HEADER) == "Event":
            entry.placement = "queued"
            if not origin.from_node:  # the key's and the function's rate apply to queuing
                admitted = self._admit(principal, fn)
                if admitted is not None:
                    admitted.release()
            return await self._enqueue(req, fn, qualifier, body, origin)
        metrics, t0 = self.metrics, time.perf_counter()
        call = _Call(
            fn, version, req, body, origin, payload, qualifier=qualifier,
            trace_ctx=trace_ctx, trace=trace,
        )  # fmt: skip
        ticket = None
        try:
            ticket = None if origin.from_node else self._admit(principal, fn)
            await self.secrets.ensure(fn)
            spec = self.specs.get(fn, version)
            if self.cfg.role == "pop" and trace is not None:
                span = trace.start("decide")
                decision = self.placer.decide(spec, function_view(fn))
                trace.end(span, attributes=decision_attributes(decision))
            elif self.cfg.role == "pop":
                decision = self.placer.decide(spec, function_view(fn))
            else:
                decision = region_decision()
            reply = await self._carry_out(call, spec, decision)
        except ApiError as exc:
            if metrics is not None:
                metrics.refused(fn.name, exc.status, exc.headers)
            raise
        except Exception:
            if metrics is not None:
                metrics.refused(fn.name, 500, {})  # the frontend answers 500 InternalError
            raise
        finally:
            entry.output, entry.error = call.output, call.error
            if ticket is not None:
                ticket.release()
        if metrics is not None:
            metrics.replied(fn.name, reply.status, reply.headers, t0)
        return reply

    async def _enqueue(
        self,
        req: Incoming,
        fn: FunctionRecord,
        qualifier: str | None,
        body: bytes,
        origin: Origin,
    ) -> Reply:
        """Queue an event (on disk before the 202) for the dispatcher to run. A node's
        (the scheduler's, a POP's) request id is the event's id: sent twice, queued once."""
        if self.events is None:
            raise ApiError(400, "BadRequest", "this node does not take asynchronous invocations")
        event_id = origin.request_id if origin.from_node else new_event_id()
        try:
            queued = await asyncio.to_thread(
                self.events.put, event_id, fn.name, qualifier, body if body.strip() else b"{}",
                remember=origin.from_node,
            )  # fmt: skip
        except QueueFull as exc:
            raise ApiError(429, "TooManyRequests", str(exc), headers={"retry-after": "5"}) from None
        if self.on_queued is not None:
            self.on_queued()
        headers = [("x-edgerun-request-id", origin.request_id), ("x-edgerun-event-id", event_id)]
        body_out = _encode({"event_id": event_id, "queued": queued})
        return Reply(202, headers + _JSON, body_out)

    def authorize(self, req: Incoming, name: str) -> Principal | None:
        """Check the caller before anything else is decided: a public function's HTTP
        trigger is open to all; everything else needs a key with invoke scope on it.
        A caller without a key learns nothing about functions that are not public
        (401 whether or not they exist); a key learns nothing about other tenants'
        (404, as for a missing function)."""
        if req.trigger == "http":
            fn = self.catalog.get(name)
            if fn is not None and fn.config.auth == "public":
                # Open to all: an authorization header is the function's own, unless it
                # is a live edgerun key (the caller's, which no function may collect).
                for k, v in req.headers:
                    caller = self.keyring.principal(bearer(v)) if k == "authorization" else None
                    if caller is not None:
                        req.key_id = caller.key_id
                        break
                return None
        principal = self.keyring.authenticate(req.header("authorization"))
        if principal is None:
            raise unauthorized(
                f"calling {name!r} needs a key with invoke scope: "
                "send 'Authorization: Bearer <key secret>'"
            )
        principal.check(Kind.INVOKE, name)
        req.key_id = principal.key_id
        return principal

    def _admit(self, principal: Principal | None, fn: FunctionRecord) -> Ticket | None:
        """The key's and the function's rate and concurrency limits (429 past them);
        nothing to hold, and nothing paid, when neither has any."""
        key_limit = None
        if principal is not None and (principal.rate_per_s or principal.max_concurrency):
            key_limit = Limit(
                rate_per_s=principal.rate_per_s, max_concurrency=principal.max_concurrency
            )
        cfg = fn.config
        fn_limit = None
        if cfg.rate_per_s or cfg.max_concurrency:
            fn_limit = Limit(rate_per_s=cfg.rate_per_s, max_concurrency=cfg.max_concurrency)
        if key_limit is None and fn_limit is None:
            return None
        key_id = principal.key_id if key_limit is not None and principal is not None else None
        return self.limiter.admit(key_id, key_limit, fn.name, fn_limit)

    def new_request_id(self) -> str:
        """Unique per node process: a random prefix and a counter (cheaper than uuid4)."""
        return f"{self._id_prefix}{next(self._id_counter):x}"

    def origin(self, req: Incoming) -> Origin:
        """Request id, client address and host of a request, and the version it pins.

        The x-edgerun-request-id, X-Forwarded-For and X-Forwarded-Host headers
        are believed only from a POP (it sends its node credential) or a
        configured trusted proxy; anyone else gets a fresh id and their own
        socket address. Only a POP may pin a version (x-edgerun-version): a
        caller could otherwise run any retained version, whatever the aliases say.
        """
        host = req.header("host") or self.cfg.name
        from_pop = self._from_pop(req)
        if not from_pop and not (req.client and req.client in self._trusted_proxies):
            return Origin(self.new_request_id(), req.client, host)
        given_id = req.header("x-edgerun-request-id") or ""
        request_id = given_id if _REQUEST_ID_RE.fullmatch(given_id) else self.new_request_id()
        forwarded_for = (req.header("x-forwarded-for") or "").rpartition(",")[2].strip()
        return Origin(
            request_id,
            forwarded_for or req.client,
            req.header("x-forwarded-host") or host,
            req.header("x-edgerun-version") if from_pop else None,
            from_node=from_pop,
        )

    def _from_pop(self, req: Incoming) -> bool:
        """A forward is believed only by a region, and only from a POP's own credential;
        the control plane's scheduler is believed only to queue a tick's event (an
        Event with a ``sched-`` id). A POP takes no forwards, and a region's
        credential forwards nothing."""
        token = req.header(NODE_TOKEN_HEADER)
        if self.cfg.role != "region" or not token:
            return False
        found = self.keyring.lookup(token)
        if found is None or not found[1].is_node:
            return False
        name = found[0].name
        if name.startswith("pop:"):
            return True
        return (
            name == "control:scheduler"
            and req.trigger == "direct"
            and req.header(INVOCATION_TYPE_HEADER) == "Event"
            and (req.header("x-edgerun-request-id") or "").startswith("sched-")
        )

    def resolve(
        self, name: str, qualifier: str | None, pinned: str | None = None
    ) -> tuple[FunctionRecord, Version]:
        validate_function_name(name)
        fn = self.catalog.get(name)
        if fn is None:
            raise not_found(f"function {name!r} does not exist (on node {self.cfg.name})")
        if pinned and pinned in fn.versions:
            return fn, fn.versions[pinned]
        try:
            return fn, fn.resolve(qualifier)
        except UnknownQualifier as exc:
            raise not_found(str(exc)) from None

    # --- carrying out a decision ---------------------------------------------
    async def _carry_out(self, call: _Call, spec: SandboxSpec, decision: Decision) -> Reply:
        claim: Claim | None = None
        if decision.action is Action.HERE:
            # Hold the slot in the same step as the decision: nothing can take it now.
            claim = self.pool.claim(spec, decision.evict_below)
            if claim is None:
                decision = decision.fallback()
        if decision.prewarm:
            self.warm_in_background(call.fn, call.version, spec, decision.evict_below)
        if decision.action is Action.REJECT:
            raise self._unavailable(call, decision)
        if decision.action is Action.FORWARD:
            try:
                return await self._forward(call, decision)
            except AllRegionsDown:
                if decision.on_forward_failed is not Action.HERE:
                    raise self._unavailable(call, decision, "no region could be reached") from None
                decision = decision.run_here_instead()
        try:
            return await self._run_here(call, spec, decision, claim)
        except PoolFull:
            if decision.action is not Action.WAIT or decision.on_no_room is not Action.FORWARD:
                raise
        # The queue it was worth waiting in did not move in time.
        fallback = decision.fallback()
        try:
            return await self._forward(call, fallback)
        except AllRegionsDown:
            if fallback.on_forward_failed is not Action.HERE:
                raise self._unavailable(call, fallback, "no region could be reached") from None
        # No region either: queue here as long as the pool allows.
        return await self._run_here(call, spec, fallback.run_here_instead(), None)

    def _unavailable(
        self,
        call: _Call,
        decision: Decision,
        message: str = "no region is reachable and the function cannot run at this POP",
    ) -> ApiError:
        self.counters.count(call.fn.name, "rejected", decision.reason)
        return ApiError(503, "Unavailable", message, headers=self._headers(decision, call))

    def warm_in_background(
        self, fn: FunctionRecord, version: Version, spec: SandboxSpec, evict_below: float | None
    ) -> None:
        """Start a sandbox here for a function the policy judged worth it, once at a time."""
        if spec.key in self._warming:
            return
        self._warming.add(spec.key)

        async def warm() -> None:
            try:
                await self.ensure_code(version)
                await self.pool.prewarm(spec, 1, evict_below=evict_below)
            except SandboxInitError as exc:
                self.init_errors.put(fn.name, version.sha256, exc)
            except (BundleUnavailable, SandboxError, ApiError) as exc:
                log.warning("warming %s failed: %s", fn.name, exc)
            finally:
                self._warming.discard(spec.key)

        self._spawn(warm())

    async def ensure_code(self, version: Version) -> None:
        """Fetch the version's code unless cached, measuring what a fetch costs."""
        if self.code.ready(version.bundle_sha256):
            return
        started = time.perf_counter()
        await self.code.ensure(version.bundle_sha256)
        self.placer.measured.node.add("fetch", (time.perf_counter() - started) * 1000)

    def _headers(
        self, decision: Decision, call: _Call, *, cold: bool | None = None
    ) -> dict[str, str]:
        if decision.action is Action.FORWARD:
            placement = f"forwarded:{decision.region}"
        else:
            placement = "local-warm" if cold is False else "local-cold"
        headers = {
            "x-edgerun-node": self.cfg.name,
            "x-edgerun-placement": placement,
            "x-edgerun-reason": decision.reason.value,
            "x-edgerun-version": call.version.sha256,
            "x-edgerun-request-id": call.request_id,
        }
        if self.worker is not None:
            headers["x-edgerun-worker"] = self.worker
        return headers

    def _event(self, call: _Call) -> Any:
        """The handler's event, built here because this node runs the code."""
        if call.req.trigger == "direct":
            return call.payload
        req = call.req
        return build_event(
            method=req.method,
            path=req.path,
            query_string=req.query,
            headers=[
                (k, v)
                for k, v in req.headers
                if k not in _NOT_FOR_FUNCTIONS and not (req.key_id and k == "authorization")
            ]
            + call.trace_ctx.headers(),
            body=call.body,
            source_ip=call.origin.source_ip,
            request_id=call.origin.request_id,
            domain=call.origin.host,
        )

    async def _run_here(
        self, call: _Call, spec: SandboxSpec, decision: Decision, claim: Claim | None
    ) -> Reply:
        fn_name, sha = call.fn.name, call.version.sha256
        try:
            failed = self.init_errors.recent(fn_name, sha)
            if failed is not None:
                self._log_init_error(call, failed)
                raise init_error(failed, self._headers(decision, call), detail=False)
            try:
                await self.ensure_code(call.version)
            except BundleUnavailable as exc:
                raise ApiError(
                    503, "CodeUnavailable", str(exc), headers=self._headers(decision, call)
                ) from None
        except BaseException:
            if claim is not None:
                self.pool.cancel_claim(claim)
            raise
        msg = Invoke(
            id=call.request_id, mode=call.req.trigger, event=self._event(call),
            timeout_s=spec.timeout_s, traceparent=call.trace_ctx.traceparent,
            tracestate=call.trace_ctx.tracestate, qualifier=call.qualifier,
        )  # fmt: skip
        cold: bool | None = None
        wait_s = None if decision.wait_ms is None else decision.wait_ms / 1000
        acquired = time.perf_counter()
        lease = self.pool.lease(spec, decision.evict_below, claim=claim, wait_s=wait_s)
        if call.trace is not None:
            lease = call.trace.lease(lease, msg)  # spans "queue" and "run"
        try:
            async with lease as (sandbox, cold):
                started = time.perf_counter()
                reply = await sandbox.invoke(msg)
                took_ms = (time.perf_counter() - started) * 1000
        except SandboxInitError as exc:
            self.init_errors.put(fn_name, sha, exc)
            self._log_init_error(call, exc)
            raise init_error(exc, self._headers(decision, call), detail=False) from None
        except SandboxError as exc:
            raise ApiError(
                exc.status, exc.type, str(exc), headers=self._headers(decision, call, cold=cold)
            ) from None
        except ApiError as exc:
            exc.headers.update(self._headers(decision, call))
            raise
        self.init_errors.clear(fn_name, sha)
        if self.catalog.get(fn_name) is None:
            # Deleted while this call started its sandbox: do not keep it warm.
            self._spawn(self._stop_function(fn_name))
        call.output = reply.logs
        headers = self._headers(decision, call, cold=cold)
        headers["x-edgerun-duration-ms"] = f"{took_ms:.2f}"
        if cold:
            headers["x-edgerun-start-ms"] = f"{(started - acquired) * 1000:.2f}"
        self.placer.measured.run_here.add(fn_name, took_ms)
        self.counters.count(fn_name, headers["x-edgerun-placement"], decision.reason)
        if call.req.trigger == "direct" and call.req.header(LOG_TAIL_HEADER) == "1":
            # The caller asked for the end of the output (the Invoke API's LogType=Tail);
            # a direct invoke always has a key with invoke scope, or comes from a POP.
            tail = (call.output + _failure_text(reply)).encode()[-LOG_TAIL_BYTES:]
            headers[LOG_RESULT_HEADER] = base64.b64encode(tail).decode()
        if isinstance(reply, Failure):
            call.error = reply.error.type
            call.output += _failure_text(reply)
            headers[FUNCTION_ERROR_HEADER] = "Unhandled"
            err = ApiError(
                500,
                reply.error.type,
                reply.error.message,
                extra={"traceback": reply.error.traceback},
                headers=headers,
            )
            return Reply(500, list(headers.items()) + _JSON, _encode(err.body()))
        if len(reply.body) > self.cfg.max_payload_bytes:
            raise ApiError(
                413,
                "ResponseTooLarge",
                f"the function's response is larger than the "
                f"{self.cfg.max_payload_bytes}-byte limit",
                headers=headers,
            )
        # The sandbox layer has checked the headers and dropped framing and ours.
        return Reply(reply.status, list(headers.items()) + reply.headers, reply.body)

    def _log_init_error(self, call: _Call, exc: SandboxInitError) -> None:
        """The detail callers are not shown: in the logs under their request id, for the owner."""
        call.output = "\n".join([f"{exc.info.type}: {exc.info.message}", *exc.info.traceback])

    async def _forward(self, call: _Call, decision: Decision) -> Reply:
        if call.trace is None:
            return await self._forward_with(call, decision, call.trace_ctx.headers())
        async with call.trace.forwarding() as span:
            reply = await self._forward_with(call, decision, span.headers)
            span.answered(reply.status, reply.headers)
        return reply

    async def _forward_with(
        self, call: _Call, decision: Decision, trace_headers: list[tuple[str, str]]
    ) -> Reply:
        req = call.req
        headers = [
            (k, v)
            for k, v in req.headers
            if k not in _NOT_FORWARDED and not (req.key_id and k == "authorization")
        ]
        headers += [
            ("x-edgerun-version", call.version.sha256),
            ("x-edgerun-request-id", call.request_id),
            (FORWARDED_BY_HEADER, self.cfg.name),
            (NODE_TOKEN_HEADER, self.credential.secret),
            ("x-forwarded-for", call.origin.source_ip),
            ("x-forwarded-host", call.origin.host),
            *trace_headers,
        ]
        path = req.raw_path + (f"?{req.query}" if req.query else "")
        try:
            region, resp = await self.regions.forward(
                decision.regions,
                req.method,
                path,
                headers,
                call.body,
                timeout_s=call.fn.config.timeout_s,
                idempotent=call.fn.config.idempotent,
            )
        except ForwardFailed as exc:
            raise ApiError(
                502, "RegionFailed", str(exc), headers=self._headers(decision, call)
            ) from None
        failed_over = region.name != decision.region
        if failed_over:
            decision = Decision(Action.FORWARD, decision.reason, (region.name,))
        out = self._headers(decision, call)
        if failed_over:
            out["x-edgerun-failover"] = "true"
        self.counters.count(call.fn.name, out["x-edgerun-placement"], decision.reason)
        duration = resp.header("x-edgerun-duration-ms")
        if duration:
            with contextlib.suppress(ValueError):
                ms = float(duration)
                if 0.0 <= ms < 3_600_000.0:
                    self.placer.measured.run_there.add(call.fn.name, ms)
        relayed = list(out.items())
        relayed += [(k, v) for k, v in resp.headers if k not in _HOP_BY_HOP and k not in out]
        region_placement = resp.header("x-edgerun-placement")
        if region_placement:
            relayed.append(("x-edgerun-region-placement", region_placement))
        return Reply(resp.status, relayed, resp.body)


def _failure_text(reply: object) -> str:
    if not isinstance(reply, Failure):
        return ""
    return "".join([*reply.error.traceback, f"{reply.error.type}: {reply.error.message}\n"])


def function_view(fn: FunctionRecord) -> FunctionView:
    cfg = fn.config
    return FunctionView(cfg.memory_mb, cfg.timeout_s, cfg.placement, cfg.latency_sensitive)


def _decode_payload(body: bytes) -> Any:
    try:
        event = msgspec.json.decode(body) if body.strip() else {}
    except msgspec.DecodeError as exc:
        raise bad_request(f"invocation payload is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:  # msgspec's error for invalid UTF-8 in a string
        raise bad_request(f"invocation payload is not valid UTF-8: {exc.reason}") from None
    except RecursionError:
        raise too_deep("invocation payload") from None
    check_json_depth(body, "invocation payload")
    if _LONG_DIGITS.search(body) and not _ints_fit(event):
        raise bad_request(
            "invocation payload has an integer outside -2**63..2**64-1, "
            "which cannot be passed to a function"
        )
    return event


def _ints_fit(value: Any) -> bool:
    """Whether every integer in a decoded JSON value fits the sandbox protocol
    (msgpack: 64 bits); JSON allows any size, so a larger one would fail to encode.
    Recursion stays within the depth :func:`check_json_depth` allows."""
    if isinstance(value, int):
        return _INT_MIN <= value <= _INT_MAX
    if isinstance(value, list):
        return all(_ints_fit(v) for v in value)
    if isinstance(value, dict):
        return all(_ints_fit(v) for v in value.values())
    return True


def init_error(exc: SandboxInitError, headers: dict[str, str], *, detail: bool) -> ApiError:
    """The error an init failure gives: the exception text (which may hold secrets, and
    may be another request's) only for the admin; invocations get the type and where
    to look, the detail being in the node's logs under the request id."""
    if detail:
        message = f"the function failed to initialise: {exc.info.type}: {exc.info.message}"
        extra: dict[str, Any] = {"traceback": exc.info.traceback, "phase": "init"}
    else:
        message = f"the function failed to initialise ({exc.info.type}); see its logs"
        extra = {"phase": "init"}
    return ApiError(500, exc.info.type, message, extra=extra, headers=headers)
