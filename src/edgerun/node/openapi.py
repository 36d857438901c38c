"""The OpenAPI 3.1 document of a node's API (``GET /v1/openapi.json`` on every node).

It lists every route of :func:`edgerun.node.admin.api_routes` plus the two
invocation routes :class:`edgerun.node.front.Front` serves outside the
router (a unit test keeps the sets equal). The answers are described by the
structs below, which mirror what each handler sends; they are closed (no
other fields), so the fuzz tests, which check every answer against this
document, notice a field added to an answer and not here.

An invocation's success is the function's own answer, so its body is
described only loosely; the platform's failures are the shared error shape.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

import msgspec

from edgerun.models import SHA256_RE
from edgerun.node.events import DeadLetter
from edgerun.node.logs import LogEntry
from edgerun.openapi import (
    ERROR_REF,
    ERRORS,
    Paths,
    document,
    ecma,
    flag_param,
    int_param,
    json_content,
    string_param,
    struct_schemas,
)
from edgerun.placement import Action, Reason

INVOKE_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
"""The methods documented on ``/fn/{name}/{path}`` (the trigger takes any)."""
INVOCATION_ROUTES = frozenset(
    {
        *((m, "/fn/{name}/{path}") for m in INVOKE_METHODS),
        ("POST", "/v1/functions/{name}/invocations"),
    }
)
"""The invocation routes, served by :class:`edgerun.node.front.Front` outside the router."""
_INVOKE_ERRORS = (400, 401, 403, 404, 408, 413, 429, 500, 502, 503, 504)
_PLACEMENT_HEADERS = (
    "x-edgerun-node",
    "x-edgerun-placement",
    "x-edgerun-reason",
    "x-edgerun-version",
    "x-edgerun-request-id",
)
"""Where and why it ran: on every answer the function itself gave."""


class _Closed(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An answer's shape: every field without a default required, no other field allowed."""


class PoolSnapshot(_Closed):
    capacity_mb: int
    used_mb: int
    held_mb: int
    idle: int
    busy: int
    starting: int
    waiting: int
    starts: int
    evictions: int


class StartCosts(_Closed):
    fork_ms: float
    load_ms: float


class Health(_Closed):
    """503 with the same body while the sandbox engine cannot start sandboxes."""

    status: Literal["ok", "degraded"]
    problem: str | None
    role: Literal["pop", "region"]
    node: str
    revision: int
    synced: bool
    load: float
    pool: PoolSnapshot
    warm: list[str] = []
    """Only for nodes and the cluster admin, as are ``loaded`` and ``start_ms``."""
    loaded: list[str] = []
    start_ms: StartCosts | None = None


class InitErrorView(_Closed):
    type: str
    message: str


class FunctionStatus(_Closed):
    aliases: dict[str, str]
    code_cached: list[str]
    init_errors: dict[str, InitErrorView]


class PlacementCount(_Closed):
    function: str
    placement: str
    reason: str
    count: int


class CodeCacheUsage(_Closed):
    used_mb: float
    limit_mb: float | None
    bundles: int


class RegionStatus(_Closed):
    name: str
    url: str
    healthy: bool
    latency_ms: float


class IsolationLayer(_Closed):
    name: str
    active: bool
    detail: str


class TenantStatus(_Closed):
    """What a key other than the cluster admin's sees: its readable functions."""

    node: str
    role: Literal["pop", "region"]
    revision: int
    synced: bool
    functions: dict[str, FunctionStatus]
    placements: list[PlacementCount]
    next: str | None = None
    """More functions after this name: ask again with ``after`` set to it."""


class WorkerBudget(_Closed):
    index: int
    pid: int
    charged_mb: int


class WorkersView(_Closed):
    """Which worker process answered, and what each holds of the node's one budget."""

    this: int
    count: int
    engine_mb: int
    """What the node's shared sandbox engine holds (zygote heaps and /tmp), charged once."""
    budget: list[WorkerBudget]


class AsyncStats(_Closed):
    """The node's queue of asynchronous invocations."""

    queued: int
    running: int
    oldest_age_s: float
    dead_letters: int
    retries: int
    succeeded: int


class DeadLetters(_Closed):
    node: str
    dead_letters: list[DeadLetter]


class Replayed(_Closed):
    node: str
    replayed: int


class Purged(_Closed):
    node: str
    purged: int


class AdminStatus(_Closed):
    """What the cluster admin sees: the whole node."""

    node: str
    role: Literal["pop", "region"]
    revision: int
    synced: bool
    pool: PoolSnapshot
    warm_versions: list[str]
    code_cache: CodeCacheUsage
    regions: list[RegionStatus]
    functions: dict[str, FunctionStatus]
    isolation: list[IsolationLayer]
    placements: list[PlacementCount]
    workers: WorkersView
    async_: AsyncStats = msgspec.field(name="async")
    next: str | None = None


class PoolVersion(_Closed):
    function: str
    version: str
    idle: int
    busy: int
    memory_mb: int


class PoolState(PoolSnapshot):
    node: str
    versions: list[PoolVersion]


class Logs(_Closed):
    node: str
    logs: list[LogEntry]
    until: float = 0.0
    """With ``since``: entries logged up to this time are all in (or before) this
    answer; the next ``since`` to follow with."""


class Prewarmed(_Closed):
    function: str
    version: str
    started: int


class DecisionView(_Closed):
    action: Action
    reason: Reason
    regions: list[str]
    evict_below: float | None
    wait_ms: float | None
    on_no_room: Action
    on_forward_failed: Action
    prewarm: bool


class Estimates(_Closed):
    here_warm: float | None
    here_cold: float | None
    here_queue: float | None
    eviction: float
    forward: dict[str, float]
    gain_over_horizon: float


class CostsView(_Closed):
    run_ms: float
    start_ms: float
    fetch_ms: float
    run_there_ms: float | None


class PoolViewView(_Closed):
    idle: int
    busy: int
    waiting: int
    free_mb: int
    need_mb: int
    victims: list[float] | None
    at_function_max: bool


class RegionInput(_Closed):
    name: str
    healthy: bool
    rtt_ms: float
    warm: bool
    start_ms: float
    load: float


class ExplainInputs(_Closed):
    rate_per_s: float
    costs_ms: CostsView
    pool: PoolViewView
    regions: list[RegionInput]
    horizon_s: float


class Explained(_Closed):
    function: str
    version: str
    mode: Literal["edgerun", "always-here", "always-forward"]
    decision: DecisionView
    estimates_ms: Estimates
    inputs: ExplainInputs
    worker: int | None
    """Which worker of a multi-worker node answered (None: a single-process node)."""


@cache
def openapi_document() -> dict[str, Any]:
    # The request struct lives with its handler in admin, which imports this module.
    from edgerun.node.admin import PrewarmRequest, ReplayRequest

    refs, components = struct_schemas(
        PrewarmRequest, Health, TenantStatus, AdminStatus, PoolState, Logs, Prewarmed, Explained,
        ReplayRequest, DeadLetters, DeadLetter, Replayed, Purged,
    )  # fmt: skip
    prewarm_req, health, tenant_status, admin_status, pool, logs, prewarmed, explained = refs[:8]
    replay_req, dead_letters, dead_letter, replayed, purged = refs[8:]
    count = components["PrewarmRequest"]["properties"]["count"]
    count.update(minimum=1, maximum=100)  # what the handler allows (400 otherwise)

    name = string_param("name", "path", maxLength=200)
    name["description"] = "`name` or `tenant.name`, optionally `@alias` or `@version`"
    function_q = string_param("function", "query", description="the function's full name")
    qualifier_q = string_param("qualifier", "query", description="an alias or a version")

    p = Paths()
    p.add(
        "GET",
        "/v1/health",
        "Liveness, load and pool; to nodes and the cluster admin also what is warm here",
        {"200": json_content(health, "Healthy"), "503": json_content(health, "Degraded")},
        public=True,
    )
    p.add_self()
    p.add(
        "GET",
        "/v1/dlq",
        "This node's dead letters (asynchronous invocations that failed for good), newest "
        "first: one function's or all the key may read",
        {"200": json_content(dead_letters, "The dead letters")},
        errors=[400, 403, 404],
        params=[function_q, int_param("limit", 1, 1000, "at most this many")],
    )
    p.add(
        "GET",
        "/v1/dlq/{event_id}",
        "One dead letter: the event, each attempt's error and the timestamps",
        {"200": json_content(dead_letter, "The dead letter")},
        errors=[403, 404],
        params=[string_param("event_id", "path", maxLength=64)],
    )
    p.add(
        "POST",
        "/v1/dlq/replay",
        "Queue a function's dead letters again (invoke scope)",
        {"200": json_content(replayed, "How many")},
        errors=[400, 403, 404],
        body={"application/json": {"schema": replay_req}},
    )
    p.add(
        "DELETE",
        "/v1/dlq",
        "Drop a function's dead letters (deploy scope)",
        {"200": json_content(purged, "How many")},
        errors=[400, 403, 404],
        params=[{**function_q, "required": True}],
    )
    p.add(
        "GET",
        "/v1/status",
        "The node as the key may see it: the cluster admin all of it, other keys their "
        "readable functions (a page of them, by name)",
        {"200": json_content({"anyOf": [admin_status, tenant_status]}, "Status")},
        errors=[400],
        params=[
            string_param("after", "query", description="the previous page's next"),
            int_param("limit", 1, 1000, "functions per page (default 100)"),
        ],
    )
    p.add(
        "GET",
        "/v1/bundles/{sha}",
        "A bundle this node holds (POPs fetch code from their regions)",
        {
            "200": {
                "description": "The zip",
                "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
        errors=[400, 403, 404],
        params=[string_param("sha", "path", pattern=ecma(SHA256_RE.pattern))],
    )
    p.add(
        "GET",
        "/v1/pool",
        "What this node holds warm, per version (cluster admin)",
        {"200": json_content(pool, "The pool")},
        errors=[403],
    )
    p.add(
        "GET",
        "/v1/logs",
        "Invocation records and output, oldest first: by request id (a POP asks its "
        "regions too), by function, or all the key may read; `since` follows",
        {"200": json_content(logs, "The entries the key may read")},
        errors=[400, 403, 404],
        params=[
            string_param("request_id", "query", description="one request's entries"),
            function_q,
            {
                "name": "since",
                "in": "query",
                "description": "only entries after this time (Unix seconds)",
                "schema": {"type": "number", "minimum": 0, "maximum": 1e11},
            },
            string_param("status", "query", enum=["all", "error"]),
            int_param("limit", 1, 1000, "at most this many entries"),
            flag_param(
                "settled",
                "false: up to now (a snapshot), not only up to `until` (what a follower "
                "needs: entries still in a worker's buffer come later)",
            ),
            flag_param("output", "false: leave what functions printed out (records only)"),
        ],
    )
    p.add(
        "POST",
        "/v1/admin/prewarm",
        "Start idle sandboxes of a function's version ahead of its traffic (deploy scope)",
        {"200": json_content(prewarmed, "How many started")},
        errors=[403, 404, 500, 503],
        body={"application/json": {"schema": prewarm_req}},
    )
    p.add(
        "GET",
        "/v1/placement/explain",
        "What the POP would decide for the next request of a function, and why",
        {"200": json_content(explained, "The decision, its estimates and their inputs")},
        errors=[400, 403, 404, 503],
        params=[function_q, qualifier_q],
    )
    p.add(
        "GET",
        "/metrics",
        "Prometheus metrics of the whole node, every worker of it (cluster admin; "
        "send the key as a bearer token). 404 when the node runs with metrics = false",
        {
            "200": {
                "description": "The Prometheus text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
        errors=[403, 404],
    )
    answer = {
        "description": "The function's answer, with where and why it ran",
        "headers": {
            h: {"required": True, "schema": {"type": "string"}} for h in _PLACEMENT_HEADERS
        },
        "content": {"*/*": {"schema": {}}},
    }
    own = {"description": "Any other status the function answers with itself"}
    invoke_errors = {str(code): json_content(ERROR_REF, ERRORS[code]) for code in _INVOKE_ERRORS}
    for method in INVOKE_METHODS:
        p.add(
            method,
            "/fn/{name}/{path}",
            "The HTTP trigger: the function gets the request as a Lambda HTTP event. "
            "Public functions need no key; others a key with invoke scope",
            {"200": answer, **invoke_errors, "default": own},
            public=True,
            params=[
                name,
                string_param("path", "path", description="the function's own path"),
                {
                    "name": "query",
                    "in": "query",
                    "required": False,
                    "style": "form",
                    "explode": True,
                    "description": "any query parameters: the function gets them",
                    "schema": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            ],
            body=None
            if method in ("GET", "DELETE")
            else {
                "application/json": {"schema": {}},
                "text/plain": {"schema": {"type": "string"}},
            },
            body_required=False,
        )
    p.add(
        "POST",
        "/v1/functions/{name}/invocations",
        "Direct invoke: the JSON body is the function's event; needs a key with invoke scope",
        {"200": answer, **invoke_errors, "default": own},
        params=[name, qualifier_q],
        body={"application/json": {"schema": {}}},
        body_required=False,
    )
    return document("edgerun node", p, components)
