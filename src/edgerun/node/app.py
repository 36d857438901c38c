"""The frontend every region and POP serves.

``ANY /fn/{name}[@{qualifier}]/{path}`` is the HTTP trigger (Lambda
function-URL events); ``POST /v1/functions/{name}/invocations`` is the direct
invoke. A POP asks :func:`edgerun.placement.decide` where each request runs
and either runs it in its pool or forwards it to a region; a region always
runs it. Every answer carries ``x-edgerun-node``, ``x-edgerun-placement`` and
``x-edgerun-reason``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgerun.config import NodeConfig
from edgerun.errors import ApiError, bad_request, not_found
from edgerun.http import (
    EXCEPTION_HANDLERS,
    bearer_ok,
    check_bearer,
    check_json_depth,
    decode_json,
    json_response,
    read_body,
    token_ok,
    too_deep,
)
from edgerun.lambda_http import build_event
from edgerun.models import SHA256_RE, FunctionRecord, UnknownQualifier, Version, validate_name
from edgerun.node.catalog import Catalog, follow
from edgerun.node.code_cache import BundleUnavailable, CodeCache
from edgerun.node.front import FORWARDED_BY_HEADER, NODE_TOKEN_HEADER, Front, Incoming, Reply
from edgerun.node.logs import LogEntry, LogRing
from edgerun.node.placer import WARM_PREFIX, Placer
from edgerun.node.regions import AllRegionsDown, ForwardFailed, Regions
from edgerun.placement import Decision
from edgerun.pool import Pool
from edgerun.sandbox.base import SandboxError, SandboxFactory, SandboxInitError, SandboxSpec
from edgerun.sandbox.isolation import Layer, as_dicts
from edgerun.sandbox.protocol import Failure, Invoke

log = logging.getLogger("edgerun.node")

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
    }
)
_FORWARD_OWNED = frozenset(
    {NODE_TOKEN_HEADER, FORWARDED_BY_HEADER, "x-edgerun-request-id", "x-edgerun-version"}
    | {"x-forwarded-for", "x-forwarded-host"}
)
"""Headers a POP sets itself when forwarding; whatever a caller sent is dropped."""
_NOT_FORWARDED = _HOP_BY_HOP | _FORWARD_OWNED
_NOT_FOR_FUNCTIONS = frozenset({"x-edgerun-version", NODE_TOKEN_HEADER})
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_INIT_ERROR_TTL_S = 10.0
_JSON = [("content-type", "application/json")]
_encode = msgspec.json.Encoder().encode


class PrewarmRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    function: str
    qualifier: str | None = None
    count: int = 1


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where a request comes from, as far as this node believes the headers."""

    request_id: str
    source_ip: str
    host: str
    pinned: str | None = None
    """The version a POP resolved and forwards (x-edgerun-version); None from anyone else."""


_PREWARM = _Origin("prewarm", "", "")


@dataclass(slots=True)
class _Call:
    """One invocation, as both trigger kinds describe it."""

    fn: FunctionRecord
    version: Version
    mode: Literal["http", "direct"]
    event: Any
    origin: _Origin

    @property
    def request_id(self) -> str:
        return self.origin.request_id


class NodeApp:
    def __init__(
        self,
        cfg: NodeConfig,
        token: str,
        factory: SandboxFactory,
        *,
        isolation: list[Layer] | None = None,
    ) -> None:
        self.cfg = cfg
        self.factory = factory
        self.isolation = isolation or []
        self.token = token
        self._trusted_proxies = frozenset(cfg.trusted_proxies)
        data = Path(cfg.data_dir)
        self.client = httpx.AsyncClient(
            headers={"authorization": f"Bearer {token}"},
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self.catalog = Catalog(data / "registry.json")
        upstreams = [r.url.rstrip("/") for r in cfg.regions] if cfg.role == "pop" else []
        upstreams.append(cfg.control_url.rstrip("/"))
        self.code = CodeCache(
            data,
            self.client,
            upstreams,
            max_uncompressed=cfg.max_bundle_bytes,
            limit_bytes=cfg.code_cache_mb << 20,
            in_use=self._code_in_use,
        )
        self._bundle_of: dict[str, str] = {}
        """Version id -> bundle sha of every version this node built a spec for."""
        self.pool = Pool(
            factory,
            capacity_mb=cfg.capacity_mb,
            max_per_function=cfg.max_per_function,
            max_queue=cfg.max_queue,
            queue_timeout_s=cfg.queue_timeout_s,
            idle_ttl_s=cfg.idle_ttl_s,
            value=self._popularity if cfg.role == "pop" else None,
        )
        self.regions = Regions(cfg.regions, self.client)
        self.placer = Placer(cfg, self.pool, self.regions, factory)
        self._warming: set[str] = set()
        self._specs: dict[tuple[str, str], tuple[int, SandboxSpec]] = {}
        self._id_prefix = secrets.token_hex(8)
        self._id_counter = itertools.count(1)
        self.logs = LogRing()
        self.init_errors: dict[tuple[str, str], tuple[float, SandboxInitError]] = {}
        self.counters: dict[tuple[str, str, str], int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        routes = [
            Route("/v1/health", self.health, methods=["GET"]),
            Route("/v1/status", self.status, methods=["GET"]),
            Route("/v1/bundles/{sha}", self.bundle, methods=["GET"]),
            Route("/v1/pool", self.pool_state, methods=["GET"]),
            Route("/v1/logs", self.logs_query, methods=["GET"]),
            Route("/v1/admin/prewarm", self.prewarm, methods=["POST"]),
        ]
        self.asgi = Front(
            self,
            Starlette(
                routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=self._lifespan
            ),
        )

    # --- lifecycle ---------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.factory.open()
        self._tasks = [
            asyncio.create_task(
                follow(
                    self.catalog,
                    self.client,
                    self.cfg.control_url.rstrip("/"),
                    wait_s=self.cfg.feed_wait_s,
                    on_change=self._on_change,
                )
            ),
            asyncio.create_task(self._reap_forever()),
        ]
        if self.cfg.role == "pop" and self.regions.regions:
            self._tasks.append(asyncio.create_task(self.regions.monitor()))
        try:
            yield
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.pool.close()
            await self.regions.close()
            await self.client.aclose()

    async def _on_change(self, records: list[FunctionRecord]) -> None:
        """Stop what deleted functions still run, then prefetch what aliases point at."""
        deleted = [r.name for r in records if r.deleted]
        if deleted:
            await asyncio.gather(*(self._stop_function(name) for name in deleted))
        await self._prefetch([r for r in records if not r.deleted])
        self.collect_code()

    def collect_code(self) -> list[str]:
        """Remove bundles no version in the registry refers to, unless a sandbox,
        a zygote or a fetch still uses them; returns the removed hashes. Only once
        the registry copy is in sync: a node serving from a stale copy keeps all."""
        if not self.catalog.synced:
            return []
        in_use = self._code_in_use()
        if in_use is None:
            return []  # a live version whose code is unknown: remove nothing
        keep = {
            v.bundle_sha256 for fn in self.catalog.functions.values() for v in fn.versions.values()
        }
        keep |= in_use | self.code.inflight()
        removed = sorted(self.code.cached() - keep)
        for sha in removed:
            self.code.remove(sha)
        for vid in [v for v, sha in self._bundle_of.items() if sha not in keep]:
            del self._bundle_of[vid]
        if removed:
            log.info("collected %d bundle(s): %s", len(removed), [s[:12] for s in removed])
        return removed

    def _code_in_use(self) -> set[str] | None:
        """Bundles of versions with a sandbox slot or a loaded zygote (None when
        one of them was built before this node knew its bundle)."""
        live = self.pool.live_versions() | self.factory.loaded_versions()
        if any(vid not in self._bundle_of for vid in live):
            return None
        return {self._bundle_of[vid] for vid in live}

    async def _stop_function(self, name: str) -> None:
        """A deleted function: its idle sandboxes and zygotes stop now, busy ones when
        their call ends; its memory charge is freed with them."""
        try:
            await self.pool.stop_function(name)
        except Exception:
            log.exception("stopping deleted function %s failed", name)
        for key in [k for k in self._specs if k[0] == name]:
            del self._specs[key]
        for key in [k for k in self.init_errors if k[0] == name]:
            del self.init_errors[key]

    async def _prefetch(self, records: list[FunctionRecord]) -> None:
        """Fetch the code every alias points at, so the first request is not slowed."""
        for record in records:
            for vid in set(record.aliases.values()):
                version = record.versions.get(vid)
                if version is None:
                    continue
                sha = version.bundle_sha256
                if not self.code.ready(sha):
                    self._spawn(self._prefetch_one(sha))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _prefetch_one(self, sha: str) -> None:
        try:
            await self.code.ensure(sha, prefetch=True)
        except (BundleUnavailable, ApiError) as exc:
            log.warning("prefetch of %s failed: %s", sha[:12], exc)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(min(30.0, self.cfg.idle_ttl_s / 2))
            await self.pool.reap_idle()
            if await self.factory.reap_idle():
                self.pool.wake()  # zygote memory came free: waiters may fit now
            self.collect_code()

    def _new_request_id(self) -> str:
        """Unique per node process: a random prefix and a counter (cheaper than uuid4)."""
        return f"{self._id_prefix}{next(self._id_counter):x}"

    def _popularity(self, function: str) -> float:
        return self.placer.rate(function)

    # --- small endpoints ---------------------------------------------------
    async def health(self, request: Request) -> Response:
        """Public; what this node holds warm (for POPs choosing a region) only with the token.

        503 while the sandbox engine cannot start sandboxes, so POPs route around."""
        problem = self.factory.problem()
        body: dict[str, object] = {
            "status": "degraded" if problem else "ok",
            "problem": problem,
            "role": self.cfg.role,
            "node": self.cfg.name,
            "revision": self.catalog.revision,
            "synced": self.catalog.synced,
            "load": round(self.pool.load(), 3),
            "pool": self.pool.snapshot(),
        }
        if bearer_ok(request.headers.get("authorization"), self.token):
            body["warm"] = sorted(v[:WARM_PREFIX] for v in self.pool.warm_versions())
        return json_response(body, status=503 if problem else 200)

    async def status(self, request: Request) -> Response:
        check_bearer(request, self.token)
        now = time.monotonic()
        functions = {}
        for name, fn in sorted(self.catalog.functions.items()):
            functions[name] = {
                "aliases": fn.aliases,
                "code_cached": sorted(
                    vid for vid, v in fn.versions.items() if self.code.ready(v.bundle_sha256)
                ),
                "init_errors": {
                    sha: {"type": err.info.type, "message": err.info.message}
                    for (n, sha), (at, err) in self.init_errors.items()
                    if n == name and now - at < _INIT_ERROR_TTL_S * 30
                },
            }
        return json_response(
            {
                "node": self.cfg.name,
                "role": self.cfg.role,
                "revision": self.catalog.revision,
                "synced": self.catalog.synced,
                "pool": self.pool.snapshot(),
                "warm_versions": sorted(self.pool.warm_versions()),
                "code_cache": self.code.usage(),
                "regions": [
                    {
                        "name": r.name,
                        "url": r.url,
                        "healthy": r.healthy,
                        "latency_ms": round(r.latency_ms, 2),
                    }
                    for r in self.regions.regions
                ],
                "functions": functions,
                "isolation": as_dicts(self.isolation),
                "placements": [
                    {"function": f, "placement": p, "reason": r, "count": n}
                    for (f, p, r), n in sorted(self.counters.items())
                ],
            }
        )

    async def pool_state(self, request: Request) -> Response:
        """Read-only: what this node holds warm, for placement and `edgerun status`."""
        check_bearer(request, self.token)
        return json_response(
            {"node": self.cfg.name, **self.pool.snapshot(), "versions": self.pool.versions()}
        )

    async def logs_query(self, request: Request) -> Response:
        """Captured output by request id (asking the regions too) or by function."""
        check_bearer(request, self.token)
        request_id = request.query_params.get("request_id")
        function = request.query_params.get("function")
        if not request_id and not function:
            raise bad_request("pass request_id or function")
        found = self.logs.find(request_id=request_id, function=function)
        if request_id and not found and self.cfg.role == "pop":
            found = await self._region_logs(request_id)
        return json_response({"logs": found})

    async def _region_logs(self, request_id: str) -> list[LogEntry]:
        for region in self.regions.regions:
            try:
                resp = await self.client.get(
                    f"{region.url}/v1/logs", params={"request_id": request_id}, timeout=2.0
                )
                entries = msgspec.json.decode(resp.content, type=dict[str, list[LogEntry]])
            except (httpx.HTTPError, msgspec.DecodeError, msgspec.ValidationError):
                continue
            if entries.get("logs"):
                return entries["logs"]
        return []

    async def prewarm(self, request: Request) -> Response:
        """Start idle sandboxes for a function version ahead of its traffic."""
        check_bearer(request, self.token)
        body: PrewarmRequest = decode_json(
            await read_body(request, 4096, self.cfg.body_timeout_s), PrewarmRequest
        )
        if not 1 <= body.count <= 100:
            raise bad_request("count must be between 1 and 100")
        fn, version = self._resolve(body.function, body.qualifier)
        call = _Call(fn, version, "direct", None, _PREWARM)
        try:
            await self.code.ensure(version.bundle_sha256)
            started = await self.pool.prewarm(self._spec(call), body.count)
        except BundleUnavailable as exc:
            raise ApiError(503, "CodeUnavailable", str(exc)) from None
        except SandboxInitError as exc:
            raise _init_error(exc, {}, detail=True) from None
        return json_response({"function": fn.name, "version": version.sha256, "started": started})

    async def bundle(self, request: Request) -> Response:
        check_bearer(request, self.token)
        sha = request.path_params["sha"]
        if not SHA256_RE.match(sha):
            raise bad_request(f"{sha!r} is not a sha256 hex digest")
        try:
            data = await self.code.zip_bytes(sha)
        except BundleUnavailable as exc:
            raise not_found(str(exc)) from None
        return Response(data, media_type="application/zip")

    # --- triggers (raw ASGI: see edgerun.node.front) ---------------------------
    async def invoke_http(self, req: Incoming, target: str, path: str, body: bytes) -> Reply:
        name, qualifier = _split_target(target)
        origin = self._origin(req)
        fn, version = self._resolve(name, qualifier, origin.pinned)
        event = build_event(
            method=req.method,
            path=path,
            query_string=req.query,
            headers=[(k, v) for k, v in req.headers if k not in _NOT_FOR_FUNCTIONS],
            body=body,
            source_ip=origin.source_ip,
            request_id=origin.request_id,
            domain=origin.host,
        )
        return await self._dispatch(_Call(fn, version, "http", event, origin), req, body)

    async def invoke_direct(self, req: Incoming, name: str, body: bytes) -> Reply:
        qualifier = req.query_param("qualifier")
        if "@" in name:
            name, qualifier = _split_target(name)
        try:
            event = msgspec.json.decode(body) if body.strip() else {}
        except msgspec.DecodeError as exc:
            raise bad_request(f"invocation payload is not valid JSON: {exc}") from None
        except RecursionError:
            raise too_deep("invocation payload") from None
        check_json_depth(body, "invocation payload")
        origin = self._origin(req)
        fn, version = self._resolve(name, qualifier, origin.pinned)
        return await self._dispatch(_Call(fn, version, "direct", event, origin), req, body)

    def _origin(self, req: Incoming) -> _Origin:
        """Request id, client address and host of a request, and the version it pins.

        The x-edgerun-request-id, X-Forwarded-For and X-Forwarded-Host headers
        are believed only from a POP (it sends the cluster token) or a
        configured trusted proxy; anyone else gets a fresh id and their own
        socket address. Only a POP may pin a version (x-edgerun-version): a
        caller could otherwise run any retained version, whatever the aliases say.
        """
        host = req.header("host") or self.cfg.name
        from_pop = token_ok(req.header(NODE_TOKEN_HEADER), self.token)
        if not from_pop and not (req.client and req.client in self._trusted_proxies):
            return _Origin(self._new_request_id(), req.client, host)
        given_id = req.header("x-edgerun-request-id") or ""
        request_id = given_id if _REQUEST_ID_RE.fullmatch(given_id) else self._new_request_id()
        forwarded_for = (req.header("x-forwarded-for") or "").rpartition(",")[2].strip()
        return _Origin(
            request_id,
            forwarded_for or req.client,
            req.header("x-forwarded-host") or host,
            req.header("x-edgerun-version") if from_pop else None,
        )

    def _resolve(
        self, name: str, qualifier: str | None, pinned: str | None = None
    ) -> tuple[FunctionRecord, Version]:
        validate_name(name)
        fn = self.catalog.get(name)
        if fn is None:
            raise not_found(f"function {name!r} does not exist (on node {self.cfg.name})")
        if pinned and pinned in fn.versions:
            return fn, fn.versions[pinned]
        try:
            return fn, fn.resolve(qualifier)
        except UnknownQualifier as exc:
            raise not_found(str(exc)) from None

    async def _dispatch(self, call: _Call, req: Incoming, body: bytes) -> Reply:
        evict_below: float | None = None
        if self.cfg.role == "pop":
            spec = self._spec(call)
            decision, rate = self.placer.decide(call.fn, spec)
            if decision.reason in ("popular", "queued"):
                evict_below = rate  # a function may only displace less popular ones
            if decision.prewarm:
                self._warm_in_background(call, spec, rate)
        else:
            decision = Decision("local-cold", "region")
        if decision.action == "reject":
            self._count(call, "rejected", decision.reason)
            raise ApiError(
                503,
                "Unavailable",
                "no region is reachable and the function cannot run at this POP",
                headers=self._headers(decision, call),
            )
        if decision.action == "forward":
            assert decision.region is not None
            try:
                return await self._forward(call, req, body, decision)
            except AllRegionsDown:
                if call.fn.config.placement != "region" and self._fits(call):
                    decision = Decision("local-wait", "all-regions-down")
                else:
                    self._count(call, "rejected", "all-regions-down")
                    raise ApiError(
                        503,
                        "Unavailable",
                        "no region could be reached",
                        headers=self._headers(decision, call),
                    ) from None
        return await self._run_local(call, decision, evict_below)

    def _fits(self, call: _Call) -> bool:
        cfg, limits = call.fn.config, self.placer.limits
        return cfg.memory_mb <= limits.max_memory_mb and cfg.timeout_s <= limits.max_timeout_s

    def _warm_in_background(self, call: _Call, spec: SandboxSpec, rate: float) -> None:
        """Start a sandbox for a function that became popular, once at a time."""
        if spec.key in self._warming:
            return
        self._warming.add(spec.key)

        async def warm() -> None:
            try:
                await self.code.ensure(call.version.bundle_sha256)
                await self.pool.prewarm(spec, 1, evict_below=rate)
            except SandboxInitError as exc:
                self.init_errors[(call.fn.name, call.version.sha256)] = (time.monotonic(), exc)
            except (BundleUnavailable, SandboxError, ApiError) as exc:
                log.warning("warming %s failed: %s", call.fn.name, exc)
            finally:
                self._warming.discard(spec.key)

        self._spawn(warm())

    def _spec(self, call: _Call) -> SandboxSpec:
        """The sandbox spec of a call, built once per function revision and version."""
        cache_key = (call.fn.name, call.version.sha256)
        cached = self._specs.get(cache_key)
        if cached is not None and cached[0] == call.fn.revision:
            return cached[1]
        cfg = call.fn.config
        spec = SandboxSpec(
            function=call.fn.name,
            version=call.version.sha256,
            handler=call.version.handler,
            bundle_dir=self.code.code_dir(call.version.bundle_sha256),
            memory_mb=cfg.memory_mb,
            timeout_s=cfg.timeout_s,
            env=cfg.env,
            network=cfg.network,
        )
        if len(self._specs) > 10_000:
            self._specs.clear()
        self._bundle_of[call.version.sha256] = call.version.bundle_sha256
        self._specs[cache_key] = (call.fn.revision, spec)
        return spec

    def _headers(
        self, decision: Decision, call: _Call, *, cold: bool | None = None
    ) -> dict[str, str]:
        placement = decision.label
        if cold is not None and decision.action != "forward":
            placement = "local-cold" if cold else "local-warm"
        return {
            "x-edgerun-node": self.cfg.name,
            "x-edgerun-placement": placement,
            "x-edgerun-reason": decision.reason,
            "x-edgerun-version": call.version.sha256,
            "x-edgerun-request-id": call.request_id,
        }

    def _count(self, call: _Call, placement: str, reason: str = "") -> None:
        key = (call.fn.name, placement, reason)
        self.counters[key] = self.counters.get(key, 0) + 1

    async def _run_local(
        self, call: _Call, decision: Decision, evict_below: float | None = None
    ) -> Reply:
        sha = call.version.sha256
        key = (call.fn.name, sha)
        cached = self.init_errors.get(key)
        if cached and time.monotonic() - cached[0] < _INIT_ERROR_TTL_S:
            self._log_init_error(call, cached[1])
            raise _init_error(cached[1], self._headers(decision, call), detail=False)
        try:
            await self.code.ensure(call.version.bundle_sha256)
        except BundleUnavailable as exc:
            raise ApiError(
                503, "CodeUnavailable", str(exc), headers=self._headers(decision, call)
            ) from None
        spec = self._spec(call)
        msg = Invoke(id=call.request_id, mode=call.mode, event=call.event, timeout_s=spec.timeout_s)
        cold: bool | None = None
        try:
            async with self.pool.lease(spec, evict_below) as (sandbox, cold):
                started = time.perf_counter()
                reply = await sandbox.invoke(msg)
                took_ms = (time.perf_counter() - started) * 1000
        except SandboxInitError as exc:
            self.init_errors[key] = (time.monotonic(), exc)
            self._log_init_error(call, exc)
            raise _init_error(exc, self._headers(decision, call), detail=False) from None
        except SandboxError as exc:
            raise ApiError(
                exc.status, exc.type, str(exc), headers=self._headers(decision, call, cold=cold)
            ) from None
        except ApiError as exc:
            exc.headers.update(self._headers(decision, call))
            raise
        self.init_errors.pop(key, None)
        if self.catalog.get(call.fn.name) is None:
            # Deleted while this call started its sandbox: do not keep it warm.
            self._spawn(self._stop_function(call.fn.name))
        if reply.logs:
            self.logs.add(call.request_id, call.fn.name, sha, self.cfg.name, reply.logs)
        headers = self._headers(decision, call, cold=cold)
        headers["x-edgerun-duration-ms"] = f"{took_ms:.2f}"
        self.placer.observe(call.fn.name, took_ms, here=True)
        self._count(call, headers["x-edgerun-placement"], decision.reason)
        if isinstance(reply, Failure):
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
        detail = "\n".join([f"{exc.info.type}: {exc.info.message}", *exc.info.traceback])
        self.logs.add(call.request_id, call.fn.name, call.version.sha256, self.cfg.name, detail)

    async def _forward(self, call: _Call, req: Incoming, body: bytes, decision: Decision) -> Reply:
        assert decision.region is not None
        headers = [(k, v) for k, v in req.headers if k not in _NOT_FORWARDED]
        headers += [
            ("x-edgerun-version", call.version.sha256),
            ("x-edgerun-request-id", call.request_id),
            (FORWARDED_BY_HEADER, self.cfg.name),
            (NODE_TOKEN_HEADER, self.token),
            ("x-forwarded-for", call.origin.source_ip),
            ("x-forwarded-host", call.origin.host),
        ]
        path = req.raw_path + (f"?{req.query}" if req.query else "")
        try:
            region, resp = await self.regions.forward(
                decision.region,
                req.method,
                path,
                headers,
                body,
                timeout_s=call.fn.config.timeout_s,
                idempotent=call.fn.config.idempotent,
            )
        except ForwardFailed as exc:
            raise ApiError(
                502, "RegionFailed", str(exc), headers=self._headers(decision, call)
            ) from None
        if region.name != decision.region:
            decision = Decision("forward", f"{decision.reason},failover", region.name)
        out = self._headers(decision, call)
        self._count(call, out["x-edgerun-placement"], decision.reason)
        duration = resp.header("x-edgerun-duration-ms")
        if duration:
            with contextlib.suppress(ValueError):
                self.placer.observe(call.fn.name, float(duration), here=False)
        relayed = list(out.items())
        relayed += [(k, v) for k, v in resp.headers if k not in _HOP_BY_HOP and k not in out]
        region_placement = resp.header("x-edgerun-placement")
        if region_placement:
            relayed.append(("x-edgerun-region-placement", region_placement))
        return Reply(resp.status, relayed, resp.body)


def _split_target(target: str) -> tuple[str, str | None]:
    name, sep, qualifier = target.partition("@")
    if sep and not qualifier:
        raise bad_request(f"empty alias or version after '@' in {target!r}")
    return name, qualifier or None


def _init_error(exc: SandboxInitError, headers: dict[str, str], *, detail: bool) -> ApiError:
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
