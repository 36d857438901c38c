"""Distributed traces: W3C trace context in, OpenTelemetry spans out.

Two halves with different costs:

- **Trace context** (always on, no I/O): every node reads the caller's
  ``traceparent`` and ``tracestate`` headers strictly (:func:`trace_context`),
  passes valid ones on unchanged (a POP to its region, a node to the sandbox,
  where the handler sees them in the event's headers and on its context) and
  drops malformed ones, so a broken header never reaches a function and is
  never an error.
- **Spans** (only with ``[otel] endpoint`` set): :class:`Tracer` builds an
  OpenTelemetry SDK tracer provider exporting over OTLP/HTTP, importing the SDK
  and the exporter only then. Each invocation gets one SERVER span per node
  (``invoke <fn>``, a child of the incoming traceparent) with children
  ``decide`` (POP placement), ``queue`` (getting a sandbox from the pool: its
  wait for room or a free sandbox, and the start when there is none, so
  ``cold start`` is the queue's child), ``run`` (the call into the sandbox) and
  ``forward`` (CLIENT, POP to region). The traceparent a node sends on names
  the span that sends it: the region's invoke span is the child of the POP's
  forward span, and the handler's traceparent names the run span.

With no endpoint the invoke path holds ``None`` instead of a tracer, so it
pays one ``is None`` test per phase and creates no span at all. The tracer
provider is the node's own (never the process-global one), so every worker of
a multi-worker node and every node in a test process has its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from opentelemetry import trace as otel
from opentelemetry.context import Context

from edgerun.errors import ApiError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from edgerun.config import NodeConfig
    from edgerun.placement import Decision
    from edgerun.sandbox.protocol import Invoke

log = logging.getLogger("edgerun.tracing")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
HEADERS = frozenset({TRACEPARENT, TRACESTATE})
TRACESTATE_MAX_CHARS = 512
"""W3C: a tracestate may be cut to 512 characters (entries over 128 go first)."""
TRACESTATE_MAX_MEMBERS = 32
_ENTRY_CUT_FIRST = 128
SHUTDOWN_WAIT_S = 3.0
"""How long a stopping node waits for its last spans to be exported."""

_TRACEPARENT_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
"""Version 00 exactly: lowercase hex, nothing before or after (no future versions)."""
_KEY = r"(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER_RE = re.compile(f"{_KEY}={_VALUE}")
_OWS = " \t"


class TraceParent(NamedTuple):
    trace_id: int
    span_id: int
    """The caller's span: the parent of the span that receives it."""
    flags: int

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)

    def header(self) -> str:
        return format_traceparent(self.trace_id, self.span_id, self.flags)


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def parse_traceparent(value: str) -> TraceParent | None:
    """A W3C ``traceparent`` (version 00), or None when it is malformed: another
    version, upper case, wrong lengths, an all-zero trace or parent id."""
    match = _TRACEPARENT_RE.fullmatch(value.strip(_OWS))
    if match is None:
        return None
    trace_id, span_id = int(match[1], 16), int(match[2], 16)
    if trace_id == 0 or span_id == 0:
        return None
    return TraceParent(trace_id, span_id, int(match[3], 16))


def clean_tracestate(value: str) -> str | None:
    """The tracestate to pass on: the value itself when it is valid and short
    enough, else its valid members, cut to 512 characters as W3C advises
    (members over 128 characters first, then from the end); None when nothing
    is left. An invalid member is dropped, not the whole header."""
    value = value.strip(_OWS)
    if not value:
        return None
    members = [m for m in (raw.strip(_OWS) for raw in value.split(",")) if m]
    valid = [m for m in members if _MEMBER_RE.fullmatch(m)]
    keys = {m.partition("=")[0] for m in valid}
    fits = len(value) <= TRACESTATE_MAX_CHARS and len(valid) <= TRACESTATE_MAX_MEMBERS
    if fits and len(valid) == len(members) == len(keys):
        return value  # blanks and empty members are allowed: pass it on as it came
    members = valid
    seen: set[str] = set()
    unique = []
    for m in members:  # a key twice is invalid: keep its first (leftmost, newest) entry
        key = m.partition("=")[0]
        if key not in seen:
            seen.add(key)
            unique.append(m)
    members = unique[:TRACESTATE_MAX_MEMBERS]
    if len(",".join(members)) > TRACESTATE_MAX_CHARS:
        members = [m for m in members if len(m) <= _ENTRY_CUT_FIRST]
    while members and len(",".join(members)) > TRACESTATE_MAX_CHARS:
        members.pop()
    return ",".join(members) or None


class TraceContext(NamedTuple):
    """The trace context a request carried, checked."""

    parent: TraceParent | None = None
    traceparent: str | None = None
    """The caller's header, unchanged (stripped of surrounding blanks), when valid."""
    tracestate: str | None = None
    """Only with a valid traceparent (W3C: a tracestate alone means nothing)."""

    def headers(self) -> list[tuple[str, str]]:
        """The headers that pass this context on unchanged (none when it is empty)."""
        out: list[tuple[str, str]] = []
        if self.traceparent is not None:
            out.append((TRACEPARENT, self.traceparent))
            if self.tracestate is not None:
                out.append((TRACESTATE, self.tracestate))
        return out


NO_CONTEXT = TraceContext()


def trace_context(headers: Iterable[tuple[str, str]]) -> TraceContext:
    """The trace context of a request's headers (lower-case names). A malformed
    or repeated ``traceparent`` counts as none (W3C: the receiver starts a new
    trace), and its ``tracestate`` goes with it; repeated ``tracestate`` headers
    are one list."""
    parents: list[str] = []
    states: list[str] = []
    for k, v in headers:
        if k == TRACEPARENT:
            parents.append(v)
        elif k == TRACESTATE:
            states.append(v)
    if len(parents) != 1:
        return NO_CONTEXT
    parent = parse_traceparent(parents[0])
    if parent is None:
        return NO_CONTEXT
    state = clean_tracestate(",".join(states)) if states else None
    return TraceContext(parent, parents[0].strip(_OWS), state)


# --- spans ----------------------------------------------------------------

_ACTIVE: contextvars.ContextVar[InvokeTrace | None] = contextvars.ContextVar(
    "edgerun_invoke_trace", default=None
)
"""The invocation the current task serves, so the pool's start callback can
put a ``cold start`` span under it without the pool knowing about traces."""


class Tracer:
    """A node's spans, exported over OTLP/HTTP in batches from a thread.

    Build it with :func:`make_tracer` (None when no endpoint is set)."""

    def __init__(self, cfg: NodeConfig, worker: str | None = None) -> None:
        # Imported here: a node without an endpoint never loads the SDK or exporter.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        otel_cfg = cfg.otel
        instance = cfg.name if worker is None else f"{cfg.name}/{worker}"
        resource = Resource.create(
            {
                "service.name": otel_cfg.service_name or f"edgerun-{cfg.role}",
                "service.instance.id": instance,
                "edgerun.node": cfg.name,
                "edgerun.role": cfg.role,
            }
        )
        # A caller's "sampled" flag is a request, not an order: any client could ask
        # for every call to be exported. The ratio decides by trace id, so every node
        # with the same ratio decides the same for one trace (its parts stay whole).
        ratio = TraceIdRatioBased(otel_cfg.sample_ratio)
        self.provider: TracerProvider = TracerProvider(
            resource=resource, sampler=ParentBased(ratio, remote_parent_sampled=ratio)
        )
        exporter = OTLPSpanExporter(endpoint=otel_cfg.endpoint, timeout=otel_cfg.timeout_s)
        self.provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                schedule_delay_millis=otel_cfg.export_interval_s * 1000,
                export_timeout_millis=otel_cfg.timeout_s * 1000,
            )
        )
        self.tracer = self.provider.get_tracer("edgerun")
        self.node = cfg.name

    def begin(self, ctx: TraceContext, function: str, request_id: str) -> InvokeTrace:
        """The SERVER span of one invocation on this node, a child of the caller's
        traceparent when it sent a valid one (else the root of a new trace)."""
        return InvokeTrace(self, ctx, function, request_id)

    def shutdown(self) -> None:
        """Export what is still queued and stop the exporter's thread, blocking at
        most ``SHUTDOWN_WAIT_S``: a collector that is down must not hold up a node's
        stop (the SDK alone may wait 30 s)."""

        def flush() -> None:
            try:
                self.provider.shutdown()
            except Exception:
                log.exception("flushing traces failed")

        thread = threading.Thread(target=flush, name="edgerun-trace-flush", daemon=True)
        thread.start()
        thread.join(SHUTDOWN_WAIT_S)
        if thread.is_alive():
            log.warning("traces not flushed within %g s; left unsent", SHUTDOWN_WAIT_S)


def make_tracer(cfg: NodeConfig, worker: str | None = None) -> Tracer | None:
    """The node's tracer, or None (no spans, no SDK) without an ``[otel] endpoint``."""
    return Tracer(cfg, worker) if cfg.otel.endpoint else None


def _traceparent_of(span: otel.Span) -> str:
    sc = span.get_span_context()
    return format_traceparent(sc.trace_id, sc.span_id, int(sc.trace_flags))


def _failed(span: otel.Span, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(otel.Status(otel.StatusCode.ERROR, type(exc).__name__))


_S = TypeVar("_S")


class InvokeTrace:
    """The spans of one invocation on one node. Phases still open when it ends
    (an exception went through them) end with it, marked as errors."""

    __slots__ = ("_open", "_queue", "_task", "_token", "ctx", "span", "tracer")

    def __init__(self, tracer: Tracer, ctx: TraceContext, function: str, request_id: str) -> None:
        self.tracer = tracer.tracer
        self.ctx = ctx
        parent = Context()  # never the ambient context: only what the request carried
        if ctx.parent is not None:
            state = otel.TraceState.from_header([ctx.tracestate]) if ctx.tracestate else None
            remote = otel.SpanContext(
                ctx.parent.trace_id,
                ctx.parent.span_id,
                is_remote=True,
                trace_flags=otel.TraceFlags(ctx.parent.flags),
                trace_state=state,
            )
            parent = otel.set_span_in_context(otel.NonRecordingSpan(remote), parent)
        self.span = self.tracer.start_span(
            f"invoke {function}",
            context=parent,
            kind=otel.SpanKind.SERVER,
            attributes={
                "edgerun.function": function,
                "edgerun.node": tracer.node,
                "edgerun.request_id": request_id,
            },
        )
        self._open: list[otel.Span] = []
        self._queue: otel.Span | None = None
        self._task = asyncio.current_task()
        self._token = _ACTIVE.set(self)

    # --- phases ---
    def start(
        self, name: str, *, client: bool = False, attributes: dict[str, Any] | None = None
    ) -> otel.Span:
        """Start a child of the invoke span (``client``: a call to another node)."""
        span = self.tracer.start_span(
            name,
            context=otel.set_span_in_context(self.span),
            kind=otel.SpanKind.CLIENT if client else otel.SpanKind.INTERNAL,
            attributes=attributes,
        )
        self._open.append(span)
        return span

    def end(
        self,
        span: otel.Span,
        exc: BaseException | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """End a phase (marked failed by ``exc``) unless it has ended already."""
        if span not in self._open:
            return
        self._open.remove(span)
        if attributes:
            span.set_attributes(attributes)
        if exc is not None:
            _failed(span, exc)
        span.end()

    def headers(self, span: otel.Span) -> list[tuple[str, str]]:
        """Trace context headers naming ``span`` as the parent, with the caller's
        tracestate unchanged (edgerun adds no entry of its own)."""
        out = [(TRACEPARENT, _traceparent_of(span))]
        if self.ctx.tracestate is not None:
            out.append((TRACESTATE, self.ctx.tracestate))
        return out

    @contextlib.asynccontextmanager
    async def lease(
        self, lease: contextlib.AbstractAsyncContextManager[tuple[_S, bool]], msg: Invoke
    ) -> AsyncIterator[tuple[_S, bool]]:
        """The pool's ``lease`` as ``queue`` (until a sandbox is held, its start
        included) then ``run`` (while it is held), whose traceparent and the
        caller's tracestate go to the sandbox in ``msg``: on its context, and in
        the event's headers for an HTTP trigger."""
        queue = self._queue = self.start("queue")
        async with contextlib.AsyncExitStack() as stack:
            try:
                held = await stack.enter_async_context(lease)
            except BaseException as exc:
                self.end(queue, exc)
                raise
            finally:
                self._queue = None
            self.end(queue, attributes={"edgerun.cold": held[1]})
            run = self.start("run")
            try:
                msg.traceparent = _traceparent_of(run)
                msg.tracestate = self.ctx.tracestate
                if msg.mode == "http" and isinstance(msg.event, dict):
                    headers = msg.event.get("headers")
                    if isinstance(headers, dict):
                        headers.update(self.headers(run))
                yield held
            except BaseException as exc:
                self.end(run, exc)
                raise
            self.end(run)

    @contextlib.asynccontextmanager
    async def forwarding(self) -> AsyncIterator[Forwarding]:
        """The ``forward`` span (CLIENT) while a POP forwards; its headers make
        it the parent of the region's invoke span."""
        span = self.start("forward", client=True)
        try:
            yield Forwarding(span, self.headers(span))
        except BaseException as exc:
            self.end(span, exc)
            raise
        self.end(span)

    def cold_start(self, ms: float, zygote_loaded: bool) -> None:
        """A sandbox this invocation waited for started, taking ``ms``: a span
        under its open queue span, placed back in time (the pool reports a start
        once it is over). Starts made by other tasks (background warming, which
        inherits this context) are not this invocation's."""
        queue = self._queue
        if queue is None or asyncio.current_task() is not self._task:
            return
        end = time.time_ns()
        span = self.tracer.start_span(
            "cold start",
            context=otel.set_span_in_context(queue),
            start_time=end - int(ms * 1_000_000),
            attributes={"edgerun.zygote_loaded": zygote_loaded},
        )
        span.end(end_time=end)

    # --- the end ---
    def finish(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        """End the invoke span with what the reply says (and any phase left open)."""
        self.span.set_attributes(reply_attributes(status, headers))
        if status >= 500:
            self.span.set_status(otel.Status(otel.StatusCode.ERROR, f"HTTP {status}"))
        self._close(None)

    def fail(self, exc: BaseException) -> None:
        """End every span after ``exc``: an API error is an answer (its status and
        headers are recorded; a 4xx is no error of the node's), anything else failed."""
        if isinstance(exc, ApiError):
            self.span.set_attribute("edgerun.error", exc.type)
            if exc.status < 500:
                self.finish(exc.status, exc.headers.items())
                return
            self.span.set_attributes(reply_attributes(exc.status, exc.headers.items()))
        _failed(self.span, exc)
        self._close(exc)

    def _close(self, exc: BaseException | None) -> None:
        for span in reversed(self._open):
            if exc is not None:
                _failed(span, exc)
            span.end()
        self._open.clear()
        self.span.end()
        with contextlib.suppress(ValueError):  # ended from another context: nothing to undo
            _ACTIVE.reset(self._token)


class Forwarding(NamedTuple):
    span: otel.Span
    headers: list[tuple[str, str]]
    """The trace context headers to send the region."""

    def answered(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        """What the region answered (its status; where it ran, with any failover)."""
        self.span.set_attributes(reply_attributes(status, headers))


_REPLY_ATTRIBUTES = {
    "x-edgerun-placement": "edgerun.placement",
    "x-edgerun-reason": "edgerun.reason",
    "x-edgerun-version": "edgerun.version",
    "x-edgerun-region-placement": "edgerun.region_placement",
    "x-edgerun-failover": "edgerun.failover",
}


def reply_attributes(status: int, headers: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Span attributes from a reply: its status, where it ran and why."""
    attrs: dict[str, Any] = {"http.response.status_code": status}
    for k, v in headers:
        if k in _REPLY_ATTRIBUTES:
            attrs[_REPLY_ATTRIBUTES[k]] = v
    return attrs


def cold_started(ms: float, zygote_loaded: bool) -> None:
    """The pool started a sandbox in ``ms``: recorded under the invocation that
    waited for it, if it is traced (a contextvar read when it is not)."""
    trace = _ACTIVE.get()
    if trace is not None:
        trace.cold_start(ms, zygote_loaded)


def decision_attributes(decision: Decision) -> dict[str, Any]:
    """What the ``decide`` span says about a placement decision."""
    attrs: dict[str, Any] = {
        "edgerun.action": decision.action.value,
        "edgerun.reason": decision.reason.value,
    }
    if decision.regions:
        attrs["edgerun.regions"] = list(decision.regions)
    return attrs
