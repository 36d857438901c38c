"""A node's API beside invocations: health, status, pool, logs, bundles, prewarm, explain
and its OpenAPI document.

Every route declares what it needs in :func:`api_routes` and is served only
through :func:`edgerun.auth.guard.route`, so a new route cannot forget its
guard; a tenant's key sees only its own functions (status, logs) and acts
only on them (prewarm, explain).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgerun.auth import Kind, Principal
from edgerun.auth.guard import ApiRoute, Need, optional_principal, principal_of, route
from edgerun.auth.scopes import tenant_prefix
from edgerun.errors import ApiError, bad_request, not_found
from edgerun.http import decode_json, json_response, query_flag, query_int, read_body
from edgerun.models import SHA256_RE, FunctionRecord
from edgerun.node.code_cache import BundleUnavailable
from edgerun.node.invoke import function_view, init_error
from edgerun.node.logs import SETTLE_S, LogEntry
from edgerun.node.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edgerun.node.openapi import openapi_document
from edgerun.node.placer import WARM_PREFIX
from edgerun.sandbox.base import SandboxInitError
from edgerun.sandbox.isolation import as_dicts

if TYPE_CHECKING:
    from edgerun.node.app import NodeApp


class _Logs(msgspec.Struct):
    logs: list[LogEntry]


def _since(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        since = float(value)
    except ValueError:
        raise bad_request("since must be a time in Unix seconds") from None
    if not 0 <= since < 1e11:
        raise bad_request("since must be a time in Unix seconds")
    return since


class ReplayRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    function: str
    ids: list[str] | None = None
    """Only these dead letters (all of the function's when absent)."""


class PrewarmRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    function: str
    qualifier: str | None = None
    count: int = 1


def routes(node: NodeApp) -> list[Route]:
    return [route(api, lambda: node.keyring) for api in api_routes(node)]


ROUTES: tuple[tuple[str, str, Need, str], ...] = (
    ("GET", "/v1/health", Need.PUBLIC, "health"),
    ("GET", "/v1/openapi.json", Need.PUBLIC, "openapi"),
    ("GET", "/v1/status", Need.KEY, "status"),
    ("GET", "/v1/bundles/{sha}", Need.NODE, "bundle"),
    ("GET", "/v1/pool", Need.CLUSTER_ADMIN, "pool_state"),
    ("GET", "/v1/logs", Need.KEY, "logs_query"),
    ("POST", "/v1/admin/prewarm", Need.KEY, "prewarm"),
    ("GET", "/v1/placement/explain", Need.KEY, "explain"),
    ("GET", "/metrics", Need.CLUSTER_ADMIN, "metrics"),
    ("GET", "/v1/dlq", Need.KEY, "dlq_list"),
    ("GET", "/v1/dlq/{event_id}", Need.KEY, "dlq_show"),
    ("POST", "/v1/dlq/replay", Need.KEY, "dlq_replay"),
    ("DELETE", "/v1/dlq", Need.KEY, "dlq_purge"),
)
"""Every route beside invocations and what it needs; the guard test walks this table."""


def api_routes(node: NodeApp) -> list[ApiRoute]:
    admin = _Admin(node)
    return [ApiRoute(m, path, need, getattr(admin, attr)) for m, path, need, attr in ROUTES]


_SCAN_BATCH = 2000


def _readable_names(
    node: NodeApp, principal: Principal, after: str, limit: int
) -> tuple[list[FunctionRecord], list[str], str | None]:
    """A page of the functions ``principal`` may read, by name, the names found
    unreadable, and the page's last name if more follow. In a thread: a node may
    hold 100k functions and a key may read few of them, so this may scan many
    names (only names: records are read for the page). Never a name the key may
    not read leaves here, not even as a cursor."""
    everything = principal.is_cluster_admin or principal.is_observer
    tenant = None if everything else tenant_prefix(principal.tenant)
    names: list[str] = []
    cursor = after
    while len(names) <= limit:
        batch = node.catalog.names(after=cursor, limit=_SCAN_BATCH, tenant_prefix=tenant)
        names += [n for n in batch if everything or principal.allows(Kind.READ, n)]
        if len(batch) < _SCAN_BATCH:
            break
        cursor = batch[-1]
    page = names[:limit]
    records, broken = node.catalog.read_many(page)
    return records, broken, page[-1] if len(names) > limit else None


async def _readable_page(
    node: NodeApp, principal: Principal, params: Mapping[str, str]
) -> tuple[list[FunctionRecord], str | None]:
    """A page of readable functions and the name to go on after (None: no more)."""
    limit = query_int(params, "limit", 100, lo=1, hi=1000)
    after = params.get("after", "")
    records, broken, cursor = await asyncio.to_thread(
        _readable_names, node, principal, after, limit
    )
    node.catalog.unreadable(broken)
    return records, cursor


def _workers(node: NodeApp) -> dict[str, object]:
    """Which worker answered, and what each worker of the node holds of its one budget."""
    seat = node.seat
    if seat is None:
        return {"this": 0, "count": 1, "engine_mb": 0, "budget": []}
    return {
        "this": seat.index,
        "count": seat.count,
        "engine_mb": node.pool.budget.engine_mb(),
        "budget": [
            {"index": i, "pid": pid, "charged_mb": mb}
            for i, (pid, mb) in enumerate(node.pool.budget.slots())
        ],
    }


class _Admin:
    def __init__(self, node: NodeApp) -> None:
        self.node = node

    async def health(self, request: Request) -> Response:
        """Public; what this node holds warm and its start costs (for POPs ranking
        regions) only to nodes and the cluster admin. 503 while the sandbox engine cannot start
        sandboxes, so POPs route around."""
        node = self.node
        problem = node.factory.problem()
        body: dict[str, object] = {
            "status": "degraded" if problem else "ok",
            "problem": problem,
            "role": node.cfg.role,
            "node": node.cfg.name,
            "revision": node.catalog.revision,
            "synced": node.catalog.synced,
            "load": round(node.pool.load(), 3),
            "pool": node.pool.snapshot(),
        }
        caller = optional_principal(request)
        if caller is not None and (caller.is_node or caller.is_cluster_admin):
            body["warm"] = sorted(v[:WARM_PREFIX] for v in node.pool.warm_versions())
            body["loaded"] = sorted(v[:WARM_PREFIX] for v in node.factory.loaded_versions())
            body["start_ms"] = node.measured.published()
        return json_response(body, status=503 if problem else 200)

    async def openapi(self, request: Request) -> Response:
        return json_response(openapi_document())

    async def status(self, request: Request) -> Response:
        """The cluster admin sees the whole node; any other key, its readable functions."""
        node = self.node
        principal = principal_of(request)
        page, more = await _readable_page(node, principal, request.query_params)
        functions = {}
        for fn in page:
            name = fn.name
            functions[name] = {
                "aliases": fn.aliases,
                "code_cached": sorted(
                    vid for vid, v in fn.versions.items() if node.code.ready(v.bundle_sha256)
                ),
                "init_errors": {
                    sha: {"type": err.info.type, "message": err.info.message}
                    for sha, err in node.init_errors.shown(name).items()
                },
            }
        everything = principal.is_cluster_admin or principal.is_observer
        placements = [
            r
            for r in node.counters.rows()
            if everything or principal.allows(Kind.READ, str(r["function"]))
        ]
        if not everything:
            return json_response(
                {
                    "node": node.cfg.name,
                    "role": node.cfg.role,
                    "revision": node.catalog.revision,
                    "synced": node.catalog.synced,
                    "functions": functions,
                    "placements": placements,
                    "next": more,
                }
            )
        return json_response(
            {
                "node": node.cfg.name,
                "role": node.cfg.role,
                "revision": node.catalog.revision,
                "synced": node.catalog.synced,
                "pool": node.pool.snapshot(),
                "warm_versions": sorted(node.pool.warm_versions()),
                "code_cache": node.code.usage(),
                "regions": [
                    {
                        "name": r.name,
                        "url": r.url,
                        "healthy": r.healthy,
                        "latency_ms": round(r.latency_ms, 2),
                    }
                    for r in node.regions.regions
                ],
                "functions": functions,
                "isolation": as_dicts(node.isolation),
                "placements": placements,
                "workers": _workers(node),
                "async": await asyncio.to_thread(node.events.stats),
                "next": more,
            }
        )

    async def metrics(self, request: Request) -> Response:
        """Prometheus metrics of the whole node (every worker). The cluster admin's
        only: function names are tenant data (Prometheus sends the key as a bearer token)."""
        if self.node.metrics is None:
            raise not_found(f"metrics are off on node {self.node.cfg.name} (metrics = false)")
        return Response(await self.node.scrape(), media_type=METRICS_CONTENT_TYPE)

    async def pool_state(self, request: Request) -> Response:
        """Read-only: what this node holds warm, for placement and `edgerun status`."""
        node = self.node
        return json_response(
            {"node": node.cfg.name, **node.pool.snapshot(), "versions": node.pool.versions()}
        )

    async def logs_query(self, request: Request) -> Response:
        """Invocation records and output, oldest first: one request's (a POP asks its
        regions for what it forwarded), one function's, or everything the key may read;
        ``since`` (Unix seconds) follows, ``status=error`` keeps failures only."""
        node = self.node
        principal = principal_of(request)
        params = request.query_params
        request_id = params.get("request_id") or None
        function = params.get("function") or None
        since = _since(params.get("since"))
        status = params.get("status", "all")
        if status not in ("all", "error"):
            raise bad_request("status must be 'all' or 'error'")
        limit = query_int(params, "limit", 100, lo=1, hi=1000)
        sees_all = principal.is_node or principal.is_observer
        if function and not sees_all:
            principal.check(Kind.READ, function)
        readable = None if sees_all else functools.partial(principal.may, Kind.READ)
        settled = query_flag(params, "settled", True)
        records_only = not query_flag(params, "output", True)  # the dashboard's
        until = None if since is None or not settled else time.time() - SETTLE_S
        node.journal.flush()  # on the loop: the buffer is the loop's
        async with node.log_queries:  # reading files off the loop, two at a time
            found = await asyncio.to_thread(
                node.journal.search,
                request_id=request_id,
                function=function,
                since=since,
                until=until,
                errors=status == "error",
                readable=readable,
                limit=limit,
            )
        if (
            request_id
            and node.cfg.role == "pop"
            and not any(not e.placement.startswith("forwarded") for e in found)
        ):
            there = await self._region_logs(request_id)
            if readable is not None:
                there = [e for e in there if readable(e.function)]
            found = sorted(found + there, key=lambda e: e.at)
        if records_only:
            found = [msgspec.structs.replace(e, output="") for e in found]
        body: dict[str, object] = {"node": node.cfg.name, "logs": found}
        if until is not None:
            body["until"] = until  # where a follower's next `since` starts
        return json_response(body)

    async def _region_logs(self, request_id: str) -> list[LogEntry]:
        """What the regions logged for a request this POP forwarded (asked at once)."""

        async def ask(url: str) -> list[LogEntry]:
            try:
                resp = await self.node.client.get(
                    f"{url}/v1/logs", params={"request_id": request_id}, timeout=2.0
                )
                return msgspec.json.decode(resp.content, type=_Logs).logs
            except (httpx.HTTPError, msgspec.DecodeError, msgspec.ValidationError):
                return []

        found = await asyncio.gather(*(ask(r.url) for r in self.node.regions.regions))
        return [e for entries in found for e in entries]

    # --- dead letters (asynchronous invocations that failed for good) -------------
    async def dlq_list(self, request: Request) -> Response:
        """This node's dead letters, newest first: one function's, or all the key may read."""
        principal = principal_of(request)
        function = request.query_params.get("function") or None
        if function:
            principal.check(Kind.READ, function)
        limit = query_int(request.query_params, "limit", 100, lo=1, hi=1000)
        tenant = None if principal.is_cluster_admin or function else principal.tenant
        found = await asyncio.to_thread(self.node.events.dead_letters, function, limit, tenant)
        found = [d for d in found if principal.may(Kind.READ, d.function)]
        return json_response({"node": self.node.cfg.name, "dead_letters": found})

    async def dlq_show(self, request: Request) -> Response:
        principal = principal_of(request)
        event_id = request.path_params["event_id"]
        found = await asyncio.to_thread(self.node.events.dead_letter, event_id)
        if found is None or not principal.may(Kind.READ, found.function):
            raise not_found(f"no dead letter {event_id[:80]!r} on {self.node.cfg.name}")
        return json_response(found)

    async def dlq_replay(self, request: Request) -> Response:
        """Queue a function's dead letters again (invoke scope: it runs them)."""
        body: ReplayRequest = decode_json(
            await read_body(request, 256 * 1024, self.node.cfg.body_timeout_s), ReplayRequest
        )
        if body.ids is not None and len(body.ids) > 10_000:
            raise bad_request("replay at most 10000 ids at once")
        principal_of(request).check(Kind.INVOKE, body.function)
        count = await asyncio.to_thread(self.node.events.replay, body.function, body.ids)
        self.node.dispatcher.wake()
        return json_response({"node": self.node.cfg.name, "replayed": count})

    async def dlq_purge(self, request: Request) -> Response:
        """Drop a function's dead letters (deploy scope)."""
        function = request.query_params.get("function") or ""
        if not function:
            raise bad_request("pass function")
        principal_of(request).check(Kind.DEPLOY, function)
        count = await asyncio.to_thread(self.node.events.purge, function)
        return json_response({"node": self.node.cfg.name, "purged": count})

    async def prewarm(self, request: Request) -> Response:
        """Start idle sandboxes for a function version ahead of its traffic."""
        node = self.node
        body: PrewarmRequest = decode_json(
            await read_body(request, 4096, node.cfg.body_timeout_s), PrewarmRequest
        )
        if not 1 <= body.count <= 100:
            raise bad_request("count must be between 1 and 100")
        principal_of(request).check(Kind.DEPLOY, body.function)
        fn, version = node.invoker.resolve(body.function, body.qualifier)
        try:
            await node.secrets.ensure(fn)
            await node.code.ensure(version.bundle_sha256)
            started = await node.pool.prewarm(node.specs.get(fn, version), body.count)
        except BundleUnavailable as exc:
            raise ApiError(503, "CodeUnavailable", str(exc)) from None
        except SandboxInitError as exc:
            raise init_error(exc, {}, detail=True) from None
        return json_response({"function": fn.name, "version": version.sha256, "started": started})

    async def bundle(self, request: Request) -> Response:
        sha = request.path_params["sha"]
        if not SHA256_RE.match(sha):
            raise bad_request(f"{sha!r} is not a sha256 hex digest")
        try:
            data = await self.node.code.zip_bytes(sha)
        except BundleUnavailable as exc:
            raise not_found(str(exc)) from None
        return Response(data, media_type="application/zip")

    async def explain(self, request: Request) -> Response:
        """What the policy would decide for the next request of a function, and why:
        every estimate it compared, and the inputs they came from (not counted as a hit)."""
        node = self.node
        name = request.query_params.get("function")
        if not name:
            raise bad_request("pass function=NAME (and optionally qualifier=...)")
        principal_of(request).check(Kind.READ, name)
        if node.cfg.role != "pop":
            raise ApiError(404, "NotFound", "placement is decided at POPs; this node is a region")
        fn, version = node.invoker.resolve(name, request.query_params.get("qualifier"))
        await node.secrets.ensure(fn)
        spec = node.specs.get(fn, version)
        placer = node.placer
        decision = placer.decide(spec, function_view(fn), count=False)
        costs = placer.costs(spec)
        view = node.pool.view(spec)
        run_there = costs.run_ms if costs.run_there_ms is None else costs.run_there_ms
        est = decision.estimate
        body: dict[str, Any] = {
            "function": fn.name,
            "version": version.sha256,
            "mode": placer.mode,
            "decision": {
                "action": decision.action.value,
                "reason": decision.reason.value,
                "regions": list(decision.regions),
                "evict_below": decision.evict_below,
                "wait_ms": decision.wait_ms,
                "on_no_room": decision.on_no_room.value,
                "on_forward_failed": decision.on_forward_failed.value,
                "prewarm": decision.prewarm,
            },
            "estimates_ms": {
                "here_warm": est.here_warm_ms,
                "here_cold": est.here_cold_ms,
                "here_queue": est.here_queue_ms,
                "eviction": est.eviction_ms,
                "forward": est.forward_ms,
                "gain_over_horizon": est.gain_ms,
            },
            "inputs": {
                "rate_per_s": placer.rate(fn.name),
                "costs_ms": dataclasses.asdict(costs),
                "pool": view._asdict(),
                "regions": [
                    {
                        "name": r.name,
                        "healthy": r.healthy,
                        "rtt_ms": round(r.rtt_ms, 3),
                        "warm": r.warm,
                        "start_ms": r.start_ms,
                        "load": r.load,
                    }
                    for r in placer.region_views(version.sha256, run_there)
                ],
                "horizon_s": placer.tuning.horizon_s,
            },
            "worker": node.seat.index if node.seat is not None else None,
        }
        return json_response(body)
