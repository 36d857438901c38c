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
import re
import secrets
import ssl
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from edgerun.auth import DEFAULT_TENANT, KeyEntry, Kind, Principal, sigv4, tenant_of
from edgerun.auth.guard import ApiRoute, Need, principal_of, route
from edgerun.auth.scopes import tenant_prefix
from edgerun.control.accounts import Accounts
from edgerun.control.bundles import BundleStore, verify_bundle
from edgerun.control.fleet import Fleet, check_heartbeat, url_points_at
from edgerun.control.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edgerun.control.metrics import ControlMetrics
from edgerun.control.openapi import openapi_document
from edgerun.control.registry import Registry, retention
from edgerun.control.scheduler import SCHEDULER_NAME, Scheduler, ScheduleStore, mint_credential
from edgerun.control.secrets import SecretCorrupt, SecretStore
from edgerun.control.ui import Ui
from edgerun.errors import ApiError, bad_request, forbidden, not_found
from edgerun.files import write_new
from edgerun.http import (
    BODY_TIMEOUT_S,
    EXCEPTION_HANDLERS,
    decode_json,
    json_response,
    query_flag,
    query_int,
    read_body,
)
from edgerun.models import (
    SHA256_RE,
    AliasRequest,
    DeployRequest,
    FunctionRecord,
    Heartbeat,
    UnknownQualifier,
    resolve_qualifier,
    validate_config,
    validate_function_name,
)

log = logging.getLogger("edgerun.control")

MAX_UPLOAD_BYTES = 100 * 1024 * 1024
MAX_FEED_WAIT_S = 60.0
MAX_REVISION = 2**63 - 1
"""Revisions are SQLite integers."""
_LIST_BATCH = 200
FEED_PAGE = 1000
"""Records per answer of the change feed: what a node far behind holds in memory."""


class SecretRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    value: str


class SecretsRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    secrets: dict[str, str]


class TenantRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str


class KeyRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    scopes: list[str]
    tenant: str = ""
    """The caller's own tenant when empty."""
    name: str = ""
    rate_per_s: float | None = None
    max_concurrency: int | None = None


class JoinTokenRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    role: str
    name: str
    ttl_s: float = 3600.0


class JoinRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    token: str


def key_view(entry: KeyEntry) -> dict[str, object]:
    """A key as the API shows it: never its secret nor its digest."""
    return {
        "id": entry.id,
        "tenant": entry.tenant,
        "scopes": entry.scopes,
        "name": entry.name,
        "created_at": entry.created_at,
        "revoked": entry.revoked,
        "rate_per_s": entry.rate_per_s,
        "max_concurrency": entry.max_concurrency,
    }


class ControlApp:
    """State and handlers of the control plane; ``.asgi`` is the app to serve."""

    def __init__(
        self,
        registry: Registry,
        bundles: BundleStore,
        accounts: Accounts,
        secrets: SecretStore,
        *,
        max_bundle_bytes: int = 250 * 1024 * 1024,
        retain_versions: int = 3,
        gc_interval_s: float = 60.0,
        body_timeout_s: float = BODY_TIMEOUT_S,
        node_verify: ssl.SSLContext | bool = True,
        schedules_db: Path | str = ":memory:",
        schedule_time_scale: float = 1.0,
    ) -> None:
        """Each function keeps its newest ``retain_versions`` versions and every
        aliased one; the others are collected every ``gc_interval_s`` (and on
        ``POST /v1/admin/gc``), their bundles with them once nothing refers to them."""
        self.registry = registry
        self.bundles = bundles
        self.accounts = accounts
        self.secrets = secrets
        self.max_bundle_bytes = max_bundle_bytes
        self.retain_versions = retain_versions
        self.gc_interval_s = gc_interval_s
        self.body_timeout_s = body_timeout_s
        self.fleet = Fleet()
        self.feed_page = FEED_PAGE
        self._feed_reader = ThreadPoolExecutor(1, thread_name_prefix="edgerun-feed")
        """Feed pages are read and encoded here, off the event loop; one thread, as
        reads share one connection, and none taken from the pool bundles go through."""
        self._changed = asyncio.Event()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.node_verify = node_verify
        """What nodes' certificates must chain to, when the dashboard calls them."""
        self.observer_secret = accounts.new_observer()
        """The dashboard reads nodes with this key (observe scope), never the admin's."""
        self.ui = Ui(self)
        self.scheduler = Scheduler(
            registry,
            ScheduleStore(schedules_db),
            self.node_views,
            mint_credential(accounts),
            verify=node_verify,
            time_scale=schedule_time_scale,
        )
        """Fires scheduled functions' ticks (see control/scheduler.py)."""
        self.metrics = ControlMetrics(registry.revision)
        self.routes = self.api_routes()
        routes = [route(api, lambda: accounts.keyring) for api in self.routes]
        routes += self.ui.routes()  # cookie sessions of the cluster admin: see control/ui.py
        self.asgi = Starlette(
            routes=routes, exception_handlers=EXCEPTION_HANDLERS, lifespan=self._lifespan
        )

    def api_routes(self) -> list[ApiRoute]:
        """Every route and what it needs; the guard test walks this same table."""
        public, key, node, admin = Need.PUBLIC, Need.KEY, Need.NODE, Need.CLUSTER_ADMIN
        fn = "/v1/functions/{name}"
        return [
            ApiRoute("GET", "/v1/health", public, self.health),
            ApiRoute("GET", "/v1/openapi.json", public, self.openapi),
            ApiRoute("POST", "/v1/bundles", key, self.upload_bundle),
            ApiRoute("GET", "/v1/bundles/{sha}", node, self.download_bundle),
            ApiRoute("GET", "/v1/functions", key, self.list_functions),
            ApiRoute("GET", "/v1/schedules", key, self.list_schedules),
            ApiRoute("GET", fn, key, self.get_function),
            ApiRoute("PUT", fn, key, self.deploy),
            ApiRoute("DELETE", fn, key, self.delete_function),
            ApiRoute("GET", fn + "/versions", key, self.list_versions),
            ApiRoute("PUT", fn + "/aliases/{alias}", key, self.set_alias),
            ApiRoute("DELETE", fn + "/aliases/{alias}", key, self.delete_alias),
            ApiRoute("GET", fn + "/secrets", key, self.list_secrets),
            ApiRoute("POST", fn + "/secrets", key, self.put_secrets),
            ApiRoute("PUT", fn + "/secrets/{key}", key, self.put_secret),
            ApiRoute("DELETE", fn + "/secrets/{key}", key, self.delete_secret),
            ApiRoute("GET", "/v1/node/secrets/{name}", node, self.node_secrets),
            ApiRoute("GET", "/v1/node/sigv4/{key_id}", node, self.node_signing_key),
            ApiRoute("GET", "/v1/changes", node, self.changes),
            ApiRoute("POST", "/v1/admin/gc", admin, self.gc),
            ApiRoute("GET", "/v1/tenants", admin, self.list_tenants),
            ApiRoute("POST", "/v1/tenants", admin, self.create_tenant),
            ApiRoute("DELETE", "/v1/tenants/{tenant}", admin, self.delete_tenant),
            ApiRoute("GET", "/v1/keys", key, self.list_keys),
            ApiRoute("POST", "/v1/keys", key, self.create_key),
            ApiRoute("DELETE", "/v1/keys/{key_id}", key, self.revoke_key),
            ApiRoute("POST", "/v1/join-tokens", admin, self.create_join_token),
            ApiRoute("POST", "/v1/nodes/join", public, self.join),
            ApiRoute("GET", "/v1/nodes", key, self.list_nodes),
            ApiRoute("POST", "/v1/nodes/heartbeat", node, self.heartbeat),
            ApiRoute("DELETE", "/v1/nodes/{key_id}", admin, self.revoke_node),
            ApiRoute("GET", "/metrics", admin, self.scrape),
        ]

    def stopping(self) -> None:
        """The server was told to stop (any thread, a signal handler included): every
        long-poll answers now instead of holding the shutdown up, and new ones do
        not wait."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._stop_feed)

    def _stop_feed(self) -> None:
        self._stopping = True
        self.ui.stop.set()
        self._notify()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        tasks = [
            asyncio.create_task(self._collect_forever()),
            asyncio.create_task(self.scheduler.run_forever()),
        ]
        self.ui.client = httpx.AsyncClient(verify=self.node_verify)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.ui.client.aclose()
            self._feed_reader.shutdown(wait=False, cancel_futures=True)

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

    async def scrape(self, request: Request) -> Response:
        """Prometheus metrics (see :mod:`edgerun.control.metrics`)."""
        return Response(self.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    async def upload_bundle(self, request: Request) -> Response:
        if not principal_of(request).may_any(Kind.DEPLOY):
            raise forbidden("uploading code needs a key with deploy scope")
        data = await read_body(request, MAX_UPLOAD_BYTES, self.body_timeout_s)
        await asyncio.to_thread(verify_bundle, data, max_uncompressed=self.max_bundle_bytes)
        sha = await asyncio.to_thread(self.bundles.put, data)
        return json_response({"sha256": sha, "size": len(data)}, 201)

    async def download_bundle(self, request: Request) -> Response:
        sha = request.path_params["sha"]
        if not SHA256_RE.match(sha):
            raise bad_request(f"{sha!r} is not a sha256 hex digest")
        data = await asyncio.to_thread(self.bundles.get, sha)
        if data is None:
            raise not_found(f"no bundle {sha}")
        return Response(data, media_type="application/zip", headers={"x-edgerun-sha256": sha})

    async def list_functions(self, request: Request) -> Response:
        """The caller's functions: its tenant's that its scopes let it read. The scan
        runs in a thread: a key that may read few names can pass many."""
        principal = principal_of(request)
        limit = query_int(request.query_params, "limit", 100, lo=1, hi=1000)
        after = request.query_params.get("after", "")
        page, more = await asyncio.to_thread(self._readable_functions, principal, after, limit)
        return json_response({"functions": page, "next": page[-1].name if more and page else None})

    def _readable_functions(
        self, principal: Principal, after: str, limit: int
    ) -> tuple[list[FunctionRecord], bool]:
        prefix = "" if principal.is_cluster_admin else tenant_prefix(principal.tenant)
        page: list[FunctionRecord] = []
        cursor = max(after, prefix)
        while len(page) <= limit:
            batch = self.registry.list_functions(after=cursor, limit=_LIST_BATCH)
            for record in batch:
                if prefix and not record.name.startswith(prefix):
                    batch = []  # past the tenant's names
                    break
                if principal.allows(Kind.READ, record.name):
                    page.append(record)
                    if len(page) > limit:
                        break
            if len(batch) < _LIST_BATCH:
                break
            cursor = batch[-1].name
        return page[:limit], len(page) > limit

    async def list_schedules(self, request: Request) -> Response:
        """The caller's scheduled functions (as :meth:`list_functions` filters them),
        with their next fire time and last fired tick."""
        principal = principal_of(request)
        limit = query_int(request.query_params, "limit", 100, lo=1, hi=1000)
        after = request.query_params.get("after", "")
        prefix = "" if principal.is_cluster_admin else tenant_prefix(principal.tenant)
        await self.scheduler.catch_up()
        names = sorted(
            n
            for n in self.scheduler.entries
            if n > after and n.startswith(prefix) and principal.may(Kind.READ, n)
        )
        page = [self.scheduler.view(self.scheduler.entries[n]) for n in names[:limit]]
        more = len(names) > limit
        return json_response({"schedules": page, "next": page[-1]["name"] if more else None})

    def _function(self, request: Request, kind: Kind) -> FunctionRecord:
        name = request.path_params["name"]
        principal_of(request).check(kind, name)
        record = self.registry.get(name)
        if record is None:
            raise not_found(f"function {name!r} does not exist")
        return record

    async def get_function(self, request: Request) -> Response:
        return json_response(self._function(request, Kind.READ))

    async def deploy(self, request: Request) -> Response:
        name = validate_function_name(request.path_params["name"])
        principal_of(request).check(Kind.DEPLOY, name)
        self._require_tenant(name)
        body: DeployRequest = decode_json(
            await read_body(request, 1 << 20, self.body_timeout_s), DeployRequest
        )
        # Again after the body: the tenant may have been deleted while it arrived, and
        # nothing below awaits before the registry write.
        self._require_tenant(name)
        validate_config(body.config)
        on_failure = body.config.async_.on_failure
        if on_failure == name:
            raise bad_request("async.on_failure may not be the function itself")
        if on_failure != "dlq" and tenant_of(on_failure) != tenant_of(name):
            raise bad_request("async.on_failure must be a function of the same tenant")
        sha = body.bundle_sha256
        if not SHA256_RE.match(sha):
            raise bad_request(f"bundle_sha256 {sha!r} is not a sha256 hex digest")
        if not self.bundles.has(sha):
            raise bad_request(f"bundle {sha} has not been uploaded; POST it to /v1/bundles first")
        missing = sorted(set(body.config.secrets) - set(self.secrets.names(name)))
        if missing:
            raise bad_request(
                f"function {name!r} needs secrets that are not set: {', '.join(missing)} "
                f"(set them with `edgerun secret put {name} KEY`)"
            )
        size = self.bundles.path(sha).stat().st_size
        record, created = self.registry.deploy(name, body.config, sha, size)
        self.metrics.changed("deploy")
        self._notify()
        return json_response(record, 201 if created else 200)

    async def delete_function(self, request: Request) -> Response:
        name = request.path_params["name"]
        principal_of(request).check(Kind.DEPLOY, name)
        before = self.registry.get(name)
        record = self.registry.delete(name)
        self.secrets.remove_function(name)
        self.metrics.changed("delete")
        self._notify()
        # A deleted function's code goes at once (unless another function shares it).
        bundles = {v.bundle_sha256 for v in before.versions.values()} if before else set()
        for sha in sorted(self.registry.unreferenced(bundles)):
            self.bundles.delete(sha)
        return json_response({"deleted": record.name, "revision": record.revision})

    async def list_versions(self, request: Request) -> Response:
        record = self._function(request, Kind.READ)
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
        name, alias = request.path_params["name"], request.path_params["alias"]
        record = self._function(request, Kind.DEPLOY)
        body: AliasRequest = decode_json(
            await read_body(request, 4096, self.body_timeout_s), AliasRequest
        )
        try:
            sha = resolve_qualifier(record, body.version)
        except UnknownQualifier as exc:
            raise not_found(str(exc)) from None
        updated = self.registry.set_alias(name, alias, sha)
        self.metrics.changed("alias")
        self._notify()
        return json_response(updated)

    async def delete_alias(self, request: Request) -> Response:
        principal_of(request).check(Kind.DEPLOY, request.path_params["name"])
        updated = self.registry.delete_alias(
            request.path_params["name"], request.path_params["alias"]
        )
        self.metrics.changed("alias")
        self._notify()
        return json_response(updated)

    def _require_tenant(self, name: str) -> None:
        tenant = tenant_of(name)
        if tenant != DEFAULT_TENANT and not self.accounts.has_tenant(tenant):
            raise not_found(f"tenant {tenant!r} does not exist")

    # --- secrets -----------------------------------------------------------------
    def _secret_target(self, request: Request, kind: Kind) -> str:
        """Secrets may be set before the function's first deploy (which needs them)."""
        name = validate_function_name(request.path_params["name"])
        principal_of(request).check(kind, name)
        return name

    def _secrets_changed(self, name: str, version: int) -> Response:
        if self.registry.touch(name):
            self._notify()
        return json_response(
            {"function": name, "names": self.secrets.names(name), "version": version}
        )

    async def list_secrets(self, request: Request) -> Response:
        """Names only: no answer ever carries a secret's value but the node's own."""
        name = self._secret_target(request, Kind.READ)
        return json_response(
            {
                "function": name,
                "names": self.secrets.names(name),
                "version": self.secrets.version(name),
            }
        )

    async def put_secret(self, request: Request) -> Response:
        name = self._secret_target(request, Kind.DEPLOY)
        body: SecretRequest = decode_json(
            await read_body(request, 128 * 1024, self.body_timeout_s), SecretRequest
        )
        self._require_tenant(name)
        return self._secrets_changed(
            name, self.secrets.put(name, request.path_params["key"], body.value)
        )

    async def put_secrets(self, request: Request) -> Response:
        name = self._secret_target(request, Kind.DEPLOY)
        body: SecretsRequest = decode_json(
            await read_body(request, 512 * 1024, self.body_timeout_s), SecretsRequest
        )
        self._require_tenant(name)
        return self._secrets_changed(name, self.secrets.put_many(name, body.secrets))

    async def delete_secret(self, request: Request) -> Response:
        name = self._secret_target(request, Kind.DEPLOY)
        return self._secrets_changed(name, self.secrets.remove(name, request.path_params["key"]))

    async def node_secrets(self, request: Request) -> Response:
        """The values of the secrets a function declares, for a node about to run it
        (to nodes only: no answer to a user's key, the cluster admin's included, holds one)."""
        if not principal_of(request).is_node:
            raise forbidden("secret values are served to nodes of the cluster only")
        name = request.path_params["name"]
        record = self.registry.get(name)
        if record is None:
            raise not_found(f"function {name!r} does not exist")
        try:
            values = self.secrets.values(name)
        except SecretCorrupt:
            log.error("the secrets of %s do not decrypt (wrong master key?)", name)
            raise ApiError(
                500, "SecretsCorrupt", f"the secrets of {name!r} do not decrypt"
            ) from None
        wanted = {k: values[k] for k in record.config.secrets if k in values}
        return json_response({"values": wanted})

    async def node_signing_key(self, request: Request) -> Response:
        """A key's SigV4 signing key for one day and region (service ``lambda``), for a
        node checking Invoke API signatures: it verifies that day's requests, and
        reveals neither the secret nor other days' keys. Nodes only."""
        if not principal_of(request).is_node:
            raise forbidden("signing keys are served to nodes of the cluster only")
        key_id = request.path_params["key_id"]
        date = request.query_params.get("date", "")
        region = request.query_params.get("region", "")
        if not re.fullmatch(r"\d{8}", date) or not re.fullmatch(r"[a-z0-9-]{1,32}", region):
            raise bad_request("pass date=YYYYMMDD and region (lowercase letters, digits, '-')")
        today = datetime.now(UTC).date()
        try:
            day = datetime.strptime(date, "%Y%m%d").date()
        except ValueError:
            raise bad_request(f"date {date!r} is not a day") from None
        if abs((day - today).days) > 1:
            raise bad_request("signing keys are served for yesterday, today and tomorrow only")
        entry = self.accounts.key(key_id)
        secret = None
        if entry is not None and not entry.revoked and not entry.is_node:
            try:
                secret = self.secrets.key_secret(key_id)
            except SecretCorrupt:
                log.error("the secret of key %s does not decrypt (wrong master key?)", key_id)
        if secret is None:
            raise not_found(
                f"key {key_id[:40]!r} cannot sign requests (unknown, revoked, or made before "
                "edgerun kept secrets for SigV4: create a new key)"
            )
        return json_response({"signing_key": sigv4.signing_key(secret, date, region).hex()})

    async def changes(self, request: Request) -> Response:
        """Long-poll: answer at once if anything changed after ``since``, else wait.

        Functions and keys share one revision counter, so one answer carries both,
        and a revoked key reaches a node as fast as a deploy. ``fresh=true`` from 0
        (the caller holds nothing) leaves out deleted functions and revoked keys.
        Pages are read and encoded off the event loop, so health checks and deploys
        stay fast while nodes catch up."""
        since = query_int(request.query_params, "since", 0, lo=0, hi=MAX_REVISION)
        wait = min(query_int(request.query_params, "wait", 0, lo=0, hi=3600), MAX_FEED_WAIT_S)
        fresh = query_flag(request.query_params, "fresh", False) and since == 0
        # Taken before the read: a change committed while it runs sets this event.
        waiter = self._changed
        changed, body = await self._read_feed(since, fresh)
        if not changed and wait > 0 and not self._stopping:
            self.metrics.feed_waiters += 1
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wait(), wait)
            finally:
                self.metrics.feed_waiters -= 1
            changed, body = await self._read_feed(since, fresh)
        self.metrics.feed_answers += 1
        return Response(body, media_type="application/json")

    async def _read_feed(self, since: int, fresh: bool) -> tuple[bool, bytes]:
        """Whether the registry moved past ``since``, and the page as JSON."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._feed_reader, self._encoded_changes, since, fresh)

    def _encoded_changes(self, since: int, fresh: bool) -> tuple[bool, bytes]:
        body = self._changes(since, self.feed_page, fresh=fresh)
        # The revision, not the records: a fresh page may have none (all deleted)
        # yet move the node on. Never "moved" for a node ahead of this registry,
        # which would otherwise poll in a loop.
        return body["revision"] > since, msgspec.json.encode(body)

    def _changes(
        self, since: int, limit: int = FEED_PAGE, *, fresh: bool = False
    ) -> dict[str, Any]:
        """One page; any thread. The keys are read after the functions, up to the
        revision of the functions' page: later changes have higher revisions, so
        they are the next page's, never lost between the two reads."""
        head = self.registry.head()
        revision, records = self.registry.changes(since, limit, live_only=fresh)
        keys = self.accounts.changes(since, revision, limit, live_only=fresh)
        if len(keys) == limit:
            revision = keys[-1].revision
            records = [r for r in records if r.revision <= revision]
        # ``head``: where the registry is, so a node paging through knows how far it
        # has to go (and does not act as if it held everything before it does).
        return {
            "revision": revision,
            "head": max(head, revision),
            "functions": records,
            "keys": keys,
        }

    # --- tenants, keys, nodes ----------------------------------------------------
    async def list_tenants(self, request: Request) -> Response:
        return json_response({"tenants": self.accounts.tenants()})

    async def create_tenant(self, request: Request) -> Response:
        body: TenantRequest = decode_json(
            await read_body(request, 4096, self.body_timeout_s), TenantRequest
        )
        return json_response(self.accounts.create_tenant(body.name), 201)

    async def delete_tenant(self, request: Request) -> Response:
        revoked = self.accounts.delete_tenant(request.path_params["tenant"])
        # Secrets set for functions never deployed (or set after their delete) go too:
        # a tenant created later under the same name must not inherit them.
        self.secrets.remove_tenant(request.path_params["tenant"])
        self._notify()
        return json_response(
            {"deleted": request.path_params["tenant"], "revoked": [k.id for k in revoked]}
        )

    async def list_keys(self, request: Request) -> Response:
        principal = principal_of(request)
        tenant = request.query_params.get("tenant") or principal.tenant
        principal.check_tenant(tenant)
        return json_response({"keys": [key_view(k) for k in self.accounts.keys(tenant)]})

    async def create_key(self, request: Request) -> Response:
        principal = principal_of(request)
        body: KeyRequest = decode_json(
            await read_body(request, 16 * 1024, self.body_timeout_s), KeyRequest
        )
        tenant = body.tenant or principal.tenant
        principal.check_tenant(tenant)
        entry, secret = self.accounts.create_key(
            tenant,
            body.scopes,
            name=body.name,
            rate_per_s=body.rate_per_s,
            max_concurrency=body.max_concurrency,
        )
        self.secrets.put_key_secret(entry.id, secret)  # for SigV4 (the Lambda Invoke API)
        self._notify()
        return json_response({**key_view(entry), "secret": secret}, 201)

    async def revoke_key(self, request: Request) -> Response:
        principal = principal_of(request)
        key_id = request.path_params["key_id"]
        entry = self.accounts.key(key_id)
        if (
            entry is None
            or entry.is_node
            or not (principal.is_cluster_admin or entry.tenant == principal.tenant)
        ):  # another tenant's key is answered as a missing one, its tenant unnamed
            raise not_found(f"key {key_id[:40]!r} does not exist")
        principal.check_tenant(entry.tenant)
        revoked = self.accounts.revoke(key_id)
        self.fleet.forget(key_id)
        self._notify()
        return json_response(key_view(revoked))

    async def create_join_token(self, request: Request) -> Response:
        body: JoinTokenRequest = decode_json(
            await read_body(request, 4096, self.body_timeout_s), JoinTokenRequest
        )
        token, expires = self.accounts.create_join_token(body.role, body.name, body.ttl_s)
        return json_response({"token": token, "expires_at": expires}, 201)

    async def join(self, request: Request) -> Response:
        """A node trades its join token for its own credential (and the hash key it
        verifies callers' keys with)."""
        body: JoinRequest = decode_json(
            await read_body(request, 4096, self.body_timeout_s), JoinRequest
        )
        entry, secret = self.accounts.join(body.token)
        self._notify()
        return json_response(
            {"key_id": entry.id, "secret": secret, "hash_key": self.accounts.hash_key.hex()}, 201
        )

    def node_views(self) -> list[dict[str, Any]]:
        """Every node credential with its liveness and URL."""
        return [
            _node_view(k, self.fleet.view(k.id))
            for k in self.accounts.keys(nodes=True)
            if k.name != SCHEDULER_NAME  # the control plane's own, not a node
        ]

    async def list_nodes(self, request: Request) -> Response:
        """Every node credential with its liveness and URL; a key other than the cluster
        admin's sees the live nodes' names, roles and URLs only (to reach them)."""
        nodes = self.node_views()
        if not principal_of(request).is_cluster_admin:
            nodes = [
                {"name": n["name"], "role": n["role"], "url": n["url"], "state": n["state"]}
                for n in nodes
                if not n["revoked"] and n["url"]
            ]
        return json_response({"nodes": nodes})

    async def heartbeat(self, request: Request) -> Response:
        principal = principal_of(request)
        if not principal.is_node:
            raise forbidden("only a node credential beats for a node")
        hb: Heartbeat = decode_json(await read_body(request, 8192, self.body_timeout_s), Heartbeat)
        check_heartbeat(hb)
        peer = request.client.host if request.client else ""
        if not await url_points_at(hb.url, peer):
            raise bad_request(
                f"url {hb.url[:200]!r} does not point at this node's own address {peer}: "
                "a node advertises itself, nothing else"
            )
        self.fleet.beat(principal.key_id, hb)
        return Response(status_code=204)

    async def revoke_node(self, request: Request) -> Response:
        key_id = request.path_params["key_id"]
        entry = self.accounts.key(key_id)
        if entry is None or not entry.is_node:
            raise not_found(f"node credential {key_id[:40]!r} does not exist")
        revoked = self.accounts.revoke(key_id)
        self.fleet.forget(key_id)
        self._notify()
        return json_response(key_view(revoked))


def _node_view(entry: KeyEntry, alive: dict[str, object]) -> dict[str, Any]:
    """A node credential (named ``role:name`` when it joined) and its liveness."""
    role, sep, name = entry.name.partition(":")
    view = key_view(entry) | alive
    view["name"] = name if sep else entry.name
    if view.get("role") is None and sep:
        view["role"] = role
    return view


def load_or_create_token(path: Path) -> tuple[str, bool]:
    """Return the admin token stored at ``path``, creating it on first start."""
    return _load_or_create(path, lambda: "er_" + secrets.token_urlsafe(32))


def load_or_create_hash_key(path: Path) -> bytes:
    """The key API keys are hashed under (32 random bytes, created on first start)."""
    text, _ = _load_or_create(path, lambda: secrets.token_bytes(32).hex())
    return bytes.fromhex(text)


def _load_or_create(path: Path, make: Callable[[], str]) -> tuple[str, bool]:
    """The text stored at ``path`` and whether this call created it (owner-only)."""
    if path.exists():
        return path.read_text().strip(), False
    text = make()
    if not write_new(path, (text + "\n").encode()):
        return path.read_text().strip(), False
    return text, True
