"""The control plane's HTTP API (``/v1``), an ASGI app built on Starlette.

Deploying is two calls so bundles travel by hash: ``POST /v1/bundles`` stores
a zip and answers its sha256, then ``PUT /v1/functions/{name}`` points the
function at it. Nodes follow ``GET /v1/changes`` (a long-poll) and fetch
bundles with ``GET /v1/bundles/{sha256}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edgerun.control.bundles import BundleStore, verify_bundle
from edgerun.control.openapi import openapi_document
from edgerun.control.registry import Registry, retention
from edgerun.errors import bad_request, not_found
from edgerun.http import (
    BODY_TIMEOUT_S,
    EXCEPTION_HANDLERS,
    check_bearer,
    decode_json,
    json_response,
    query_int,
    read_body,
)
from edgerun.models import (
    SHA256_RE,
    AliasRequest,
    DeployRequest,
    FunctionRecord,
    UnknownQualifier,
    resolve_qualifier,
    validate_config,
    validate_name,
)

log = logging.getLogger("edgerun.control")

MAX_UPLOAD_BYTES = 100 * 1024 * 1024
MAX_FEED_WAIT_S = 60.0
MAX_REVISION = 2**63 - 1
"""Revisions are SQLite integers."""


class ControlApp:
    """State and handlers of the control plane; ``.asgi`` is the app to serve."""

    def __init__(
        self,
        registry: Registry,
        bundles: BundleStore,
        token: str,
        *,
        max_bundle_bytes: int = 250 * 1024 * 1024,
        retain_versions: int = 3,
        gc_interval_s: float = 60.0,
        body_timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        """Each function keeps its newest ``retain_versions`` versions and every
        aliased one; the others are collected every ``gc_interval_s`` (and on
        ``POST /v1/admin/gc``), their bundles with them once nothing refers to them."""
        self.registry = registry
        self.bundles = bundles
        self.token = token
        self.max_bundle_bytes = max_bundle_bytes
        self.retain_versions = retain_versions
        self.gc_interval_s = gc_interval_s
        self.body_timeout_s = body_timeout_s
        self._changed = asyncio.Event()
        routes = [
            Route("/v1/health", self.health, methods=["GET"]),
            Route("/v1/openapi.json", self.openapi, methods=["GET"]),
            Route("/v1/bundles", self.upload_bundle, methods=["POST"]),
            Route("/v1/bundles/{sha}", self.download_bundle, methods=["GET"]),
            Route("/v1/functions", self.list_functions, methods=["GET"]),
            Route("/v1/functions/{name}", self.get_function, methods=["GET"]),
            Route("/v1/functions/{name}", self.deploy, methods=["PUT"]),
            Route("/v1/functions/{name}", self.delete_function, methods=["DELETE"]),
            Route("/v1/functions/{name}/versions", self.list_versions, methods=["GET"]),
            Route("/v1/functions/{name}/aliases/{alias}", self.set_alias, methods=["PUT"]),
            Route("/v1/functions/{name}/aliases/{alias}", self.delete_alias, methods=["DELETE"]),
            Route("/v1/changes", self.changes, methods=["GET"]),
            Route("/v1/admin/gc", self.gc, methods=["POST"]),
        ]
        self.asgi = Starlette(
            routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=self._lifespan
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(self._collect_forever())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _collect_forever(self) -> None:
        while True:
            await asyncio.sleep(self.gc_interval_s)
            try:
                self.collect()
            except Exception:
                log.exception("collecting versions failed")

    def collect(self) -> dict[str, object]:
        """Remove collectable versions, then the bundles nothing refers to any more.

        Synchronous on the event loop: a deploy cannot register a version of a
        bundle between the check that nothing refers to it and its removal."""
        removed, unused = self.registry.collect(self.retain_versions)
        for sha in sorted(unused):
            self.bundles.delete(sha)
        if removed:
            self._notify()
        return {
            "versions": [{"function": f, "version": v} for f, v in removed],
            "bundles": sorted(unused),
        }

    async def gc(self, request: Request) -> Response:
        check_bearer(request, self.token)
        return json_response(self.collect())

    def _notify(self) -> None:
        """Wake every long-poll waiting on the change feed."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def health(self, request: Request) -> Response:
        return json_response(
            {"status": "ok", "role": "control", "revision": self.registry.revision()}
        )

    async def openapi(self, request: Request) -> Response:
        return json_response(openapi_document())

    async def upload_bundle(self, request: Request) -> Response:
        check_bearer(request, self.token)
        data = await read_body(request, MAX_UPLOAD_BYTES, self.body_timeout_s)
        await asyncio.to_thread(verify_bundle, data, max_uncompressed=self.max_bundle_bytes)
        sha = await asyncio.to_thread(self.bundles.put, data)
        return json_response({"sha256": sha, "size": len(data)}, 201)

    async def download_bundle(self, request: Request) -> Response:
        check_bearer(request, self.token)
        sha = request.path_params["sha"]
        if not SHA256_RE.match(sha):
            raise bad_request(f"{sha!r} is not a sha256 hex digest")
        data = await asyncio.to_thread(self.bundles.get, sha)
        if data is None:
            raise not_found(f"no bundle {sha}")
        return Response(data, media_type="application/zip", headers={"x-edgerun-sha256": sha})

    async def list_functions(self, request: Request) -> Response:
        check_bearer(request, self.token)
        limit = query_int(request.query_params, "limit", 100, lo=1, hi=1000)
        after = request.query_params.get("after", "")
        page = self.registry.list_functions(after=after, limit=limit + 1)
        more = len(page) > limit
        page = page[:limit]
        return json_response({"functions": page, "next": page[-1].name if more and page else None})

    def _function(self, name: str) -> FunctionRecord:
        record = self.registry.get(name)
        if record is None:
            raise not_found(f"function {name!r} does not exist")
        return record

    async def get_function(self, request: Request) -> Response:
        check_bearer(request, self.token)
        return json_response(self._function(request.path_params["name"]))

    async def deploy(self, request: Request) -> Response:
        check_bearer(request, self.token)
        name = validate_name(request.path_params["name"])
        body: DeployRequest = decode_json(
            await read_body(request, 1 << 20, self.body_timeout_s), DeployRequest
        )
        validate_config(body.config)
        sha = body.bundle_sha256
        if not SHA256_RE.match(sha):
            raise bad_request(f"bundle_sha256 {sha!r} is not a sha256 hex digest")
        if not self.bundles.has(sha):
            raise bad_request(f"bundle {sha} has not been uploaded; POST it to /v1/bundles first")
        size = self.bundles.path(sha).stat().st_size
        record, created = self.registry.deploy(name, body.config, sha, size)
        self._notify()
        return json_response(record, 201 if created else 200)

    async def delete_function(self, request: Request) -> Response:
        check_bearer(request, self.token)
        name = request.path_params["name"]
        before = self.registry.get(name)
        record = self.registry.delete(name)
        self._notify()
        # A deleted function's code goes at once (unless another function shares it).
        bundles = {v.bundle_sha256 for v in before.versions.values()} if before else set()
        for sha in sorted(self.registry.unreferenced(bundles)):
            self.bundles.delete(sha)
        return json_response({"deleted": record.name, "revision": record.revision})

    async def list_versions(self, request: Request) -> Response:
        check_bearer(request, self.token)
        record = self._function(request.path_params["name"])
        by_version: dict[str, list[str]] = {}
        for alias, sha in record.aliases.items():
            by_version.setdefault(sha, []).append(alias)
        why = retention(record, self.retain_versions)
        versions = [
            {
                **msgspec.structs.asdict(v),
                "aliases": sorted(by_version.get(v.sha256, [])),
                "retained": why[v.sha256],
            }
            for v in sorted(record.versions.values(), key=lambda v: v.created_at)
        ]
        return json_response(
            {"name": record.name, "retain_versions": self.retain_versions, "versions": versions}
        )

    async def set_alias(self, request: Request) -> Response:
        check_bearer(request, self.token)
        name, alias = request.path_params["name"], request.path_params["alias"]
        body: AliasRequest = decode_json(
            await read_body(request, 4096, self.body_timeout_s), AliasRequest
        )
        record = self._function(name)
        try:
            sha = resolve_qualifier(record, body.version)
        except UnknownQualifier as exc:
            raise not_found(str(exc)) from None
        updated = self.registry.set_alias(name, alias, sha)
        self._notify()
        return json_response(updated)

    async def delete_alias(self, request: Request) -> Response:
        check_bearer(request, self.token)
        updated = self.registry.delete_alias(
            request.path_params["name"], request.path_params["alias"]
        )
        self._notify()
        return json_response(updated)

    async def changes(self, request: Request) -> Response:
        """Long-poll: answer at once if anything changed after ``since``, else wait."""
        check_bearer(request, self.token)
        since = query_int(request.query_params, "since", 0, lo=0, hi=MAX_REVISION)
        wait = min(query_int(request.query_params, "wait", 0, lo=0, hi=3600), MAX_FEED_WAIT_S)
        revision, records = self.registry.changes(since)
        if not records and wait > 0:
            waiter = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.wait(), wait)
            revision, records = self.registry.changes(since)
        return json_response({"revision": revision, "functions": records})


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """Return the admin token stored at ``path``, creating it on first start."""
    if path.exists():
        return path.read_text().strip(), False
    path.parent.mkdir(parents=True, exist_ok=True)
    token = "er_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w") as f:
        f.write(token + "\n")
    return token, True
