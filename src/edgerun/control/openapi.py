"""The OpenAPI 3.1 document of the control API (``GET /v1/openapi.json``).

It lists every route of :meth:`edgerun.control.app.ControlApp.api_routes` (a
unit test keeps the two sets equal, so a new route cannot go undocumented).
Request bodies are the JSON Schemas of the msgspec structs the handlers
decode; answers are described by the structs below, which mirror what each
handler sends. They are closed (no other fields), so the fuzz tests, which
check every answer against this document, notice a field added to an answer
and not here, and a key's digest or secret showing where it must not.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

import msgspec

from edgerun.auth import KeyEntry
from edgerun.auth.scopes import _PATTERN_RE as _SCOPE_PATTERN_RE
from edgerun.auth.scopes import TENANT_RE
from edgerun.control.accounts import MAX_JOIN_TTL_S, NODE_NAME_CHARS
from edgerun.models import (
    ALIAS_RE,
    ENV_KEY_RE,
    FUNCTION_RE,
    HANDLER_RE,
    MAX_MEMORY_MB,
    MAX_TIMEOUT_S,
    RESERVED_ENV_PREFIXES,
    SHA256_RE,
    AliasRequest,
    DeployRequest,
    FunctionRecord,
    Heartbeat,
)
from edgerun.openapi import (
    Paths,
    document,
    ecma,
    flag_param,
    int_param,
    json_content,
    string_param,
    struct_schemas,
)

_MAX_REVISION = 2**63 - 1


class _Closed(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An answer's shape: every field required, no other field allowed."""


class Health(_Closed):
    status: Literal["ok"]
    role: Literal["control"]
    revision: int


class BundleStored(_Closed):
    sha256: str
    size: int


class FunctionPage(_Closed):
    functions: list[FunctionRecord]
    next: str | None
    """The cursor of the next page (pass it as ``after``); null on the last."""


class ScheduleView(_Closed):
    name: str
    schedule: str
    next_fire: str | None
    """The next tick (ISO 8601, UTC); null when the schedule has none left."""
    next_fire_in_s: float | None
    """Real seconds until then."""
    last_fired: str | None
    """The last tick a region queued; null before the first."""


class SchedulePage(_Closed):
    schedules: list[ScheduleView]
    next: str | None
    """The cursor of the next page (pass it as ``after``); null on the last."""


class FunctionDeleted(_Closed):
    deleted: str
    revision: int


class VersionView(_Closed):
    sha256: str
    handler: str
    size: int
    created_at: float
    bundle_sha256: str
    aliases: list[str]
    retained: list[str]
    """Why it is kept (its aliases, ``newest N``); empty when it is collectable."""


class Versions(_Closed):
    name: str
    retain_versions: int
    versions: list[VersionView]


class SecretNames(_Closed):
    """Names only: no answer carries a secret's value but the node's own."""

    function: str
    names: list[str]
    version: int


class NodeSecrets(_Closed):
    values: dict[str, str]


class Changes(_Closed):
    revision: int
    """Pass it back as ``since``: the last change this page holds."""
    head: int
    """The registry's revision: the page is the last one once ``revision`` reaches it."""
    functions: list[FunctionRecord]
    keys: list[KeyEntry]


class CollectedVersion(_Closed):
    function: str
    version: str


class Collected(_Closed):
    versions: list[CollectedVersion]
    bundles: list[str]


class Tenant(_Closed):
    name: str
    created_at: float
    keys: int
    """Live keys of the tenant."""


class Tenants(_Closed):
    tenants: list[Tenant]


class TenantDeleted(_Closed):
    deleted: str
    revoked: list[str]


class KeyView(_Closed):
    """A key as the API shows it: never its secret nor its digest."""

    id: str
    tenant: str
    scopes: list[str]
    name: str
    created_at: float
    revoked: bool
    rate_per_s: float | None
    max_concurrency: int | None


class NewKey(KeyView):
    secret: str
    """Shown once, here; only its digest is stored."""


class Keys(_Closed):
    keys: list[KeyView]


class NodeView(_Closed):
    """A node credential and its liveness; a key other than the cluster admin's sees
    only name, role, url and state (of live credentials with a known URL)."""

    name: str
    role: str | None
    url: str | None
    state: Literal["up", "down", "unknown"]
    id: str = ""
    tenant: str = ""
    scopes: list[str] = msgspec.field(default_factory=list)
    created_at: float = 0.0
    revoked: bool = False
    rate_per_s: float | None = None
    max_concurrency: int | None = None
    last_seen: float | None = None
    last_seen_s: float = 0.0
    revision: int = 0
    synced: bool = False
    workers: int = 1
    load: float = 0.0
    started_at: float = 0.0


class Nodes(_Closed):
    nodes: list[NodeView]


class SigningKey(_Closed):
    signing_key: str


class JoinToken(_Closed):
    token: str
    expires_at: float


class Joined(_Closed):
    key_id: str
    secret: str
    hash_key: str


def _inner(pattern: str) -> str:
    return pattern.removeprefix("^").removesuffix(r"\Z")


def _limits(components: dict[str, Any]) -> None:
    """The request bodies' limits that the handlers' validators enforce (400 past them),
    written into the schemas msgspec derives from the structs, which know only types:
    clients see them, and the fuzzer's well-formed cases get past the validators."""
    scope = rf"^(admin|(deploy|invoke|read)(:{_inner(_SCOPE_PATTERN_RE.pattern)})?)$"
    reserved = {"not": {"pattern": "^(" + "|".join(RESERVED_ENV_PREFIXES) + ")"}}
    env_name = {"pattern": ecma(ENV_KEY_RE.pattern), **reserved}
    refine: dict[str, dict[str, dict[str, Any]]] = {
        "TenantRequest": {"name": {"pattern": ecma(TENANT_RE.pattern)}},
        "KeyRequest": {
            "scopes": {
                "minItems": 1,
                "maxItems": 32,
                "items": {"type": "string", "pattern": scope},
            },
            "tenant": {"pattern": f"^({_inner(TENANT_RE.pattern)})?$"},
            "name": {"maxLength": 200},
        },
        "JoinTokenRequest": {
            "role": {"enum": ["pop", "region"]},
            "name": {"minLength": 1, "maxLength": NODE_NAME_CHARS},
            "ttl_s": {"exclusiveMinimum": 0, "maximum": MAX_JOIN_TTL_S},
        },
        "DeployRequest": {"bundle_sha256": {"pattern": ecma(SHA256_RE.pattern)}},
        "FunctionConfig": {
            "handler": {"pattern": ecma(HANDLER_RE.pattern)},
            "memory_mb": {"minimum": 16, "maximum": MAX_MEMORY_MB},
            "timeout_s": {"exclusiveMinimum": 0, "maximum": MAX_TIMEOUT_S},
            "env": {"propertyNames": env_name},
            "secrets": {
                "maxItems": 100,
                "uniqueItems": True,
                "items": {"type": "string", **env_name},
            },
        },
        "SecretsRequest": {"secrets": {"propertyNames": env_name}},
    }
    for name, fields in refine.items():
        properties = components[name]["properties"]
        for field, limits in fields.items():
            properties[field] = {**properties[field], **limits}
    for name in ("KeyRequest", "FunctionConfig"):  # a number, or null for none
        properties = components[name]["properties"]
        properties["rate_per_s"] = {
            "anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": 1e6}, {"type": "null"}]
        }
        properties["max_concurrency"] = {
            "anyOf": [{"type": "integer", "minimum": 1, "maximum": 100_000}, {"type": "null"}]
        }


@cache
def openapi_document() -> dict[str, Any]:
    # The request structs live with their handlers, and app imports this module.
    from edgerun.control.app import (
        JoinRequest,
        JoinTokenRequest,
        KeyRequest,
        SecretRequest,
        SecretsRequest,
        TenantRequest,
    )

    refs, components = struct_schemas(
        # requests
        DeployRequest,
        AliasRequest,
        TenantRequest,
        KeyRequest,
        JoinTokenRequest,
        JoinRequest,
        SecretRequest,
        SecretsRequest,
        Heartbeat,
        # answers
        Health,
        BundleStored,
        FunctionPage,
        FunctionRecord,
        FunctionDeleted,
        Versions,
        SecretNames,
        NodeSecrets,
        Changes,
        Collected,
        Tenants,
        Tenant,
        TenantDeleted,
        Keys,
        NewKey,
        KeyView,
        JoinToken,
        Joined,
        Nodes,
        SigningKey,
        SchedulePage,
    )
    _limits(components)
    (
        deploy,
        alias_req,
        tenant_req,
        key_req,
        join_token_req,
        join_req,
        secret_req,
        secrets_req,
        heartbeat,
        health,
        stored,
        page,
        record,
        fn_deleted,
        versions,
        secret_names,
        node_secrets,
        changes,
        collected,
        tenants,
        tenant,
        tenant_deleted,
        keys,
        new_key,
        key_view,
        join_token,
        joined,
        nodes,
        signing_key,
        schedule_page,
    ) = refs

    def body(schema: dict[str, Any]) -> dict[str, Any]:
        return {"application/json": {"schema": schema}}

    name = string_param("name", "path", pattern=ecma(FUNCTION_RE.pattern), maxLength=94)
    name.update(description="`name` in the default tenant, `tenant.name` in another")
    alias = string_param("alias", "path", pattern=ecma(ALIAS_RE.pattern))
    sha = string_param("sha", "path", pattern=ecma(SHA256_RE.pattern))
    secret_key = string_param("key", "path", pattern=ecma(ENV_KEY_RE.pattern), maxLength=200)
    tenant_param = string_param("tenant", "path", pattern=ecma(TENANT_RE.pattern))
    key_id = string_param("key_id", "path", maxLength=64)
    fn = "/v1/functions/{name}"

    p = Paths()
    p.add(
        "GET",
        "/v1/health",
        "Liveness and the registry's revision",
        {"200": json_content(health, "OK")},
        public=True,
    )
    p.add_self()
    p.add(
        "POST",
        "/v1/bundles",
        "Upload a bundle (a zip); answers its sha256. Needs deploy scope on some function",
        {"201": json_content(stored, "Stored")},
        errors=[403],
        body={"application/zip": {"schema": {"type": "string", "format": "binary"}}},
    )
    p.add(
        "GET",
        "/v1/bundles/{sha}",
        "Download a bundle by its hash (nodes)",
        {
            "200": {
                "description": "The zip",
                "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
        errors=[400, 403, 404],
        params=[sha],
    )
    p.add(
        "GET",
        "/v1/functions",
        "The caller's functions (those its scopes let it read), paginated by name",
        {"200": json_content(page, "A page of functions and the cursor of the next")},
        errors=[400],
        params=[
            int_param("limit", 1, 1000, "page size (default 100)"),
            string_param("after", "query", description="cursor: the last name seen"),
        ],
    )
    p.add(
        "GET",
        "/v1/schedules",
        "The caller's scheduled functions with their next fire time and last fired tick",
        {"200": json_content(schedule_page, "A page of schedules and the cursor of the next")},
        errors=[400],
        params=[
            int_param("limit", 1, 1000, "page size (default 100)"),
            string_param("after", "query", description="cursor: the last name seen"),
        ],
    )
    p.add(
        "GET",
        fn,
        "Get a function",
        {"200": json_content(record, "The function")},
        errors=[403, 404],
        params=[name],
    )
    p.add(
        "PUT",
        fn,
        "Create or update a function from an uploaded bundle and a config",
        {"200": json_content(record, "Updated"), "201": json_content(record, "Created")},
        errors=[403, 404],
        params=[name],
        body=body(deploy),
    )
    p.add(
        "DELETE",
        fn,
        "Delete a function (and its secrets)",
        {"200": json_content(fn_deleted, "Deleted")},
        errors=[403, 404],
        params=[name],
    )
    p.add(
        "GET",
        fn + "/versions",
        "A function's versions, their aliases and why each is retained",
        {"200": json_content(versions, "Versions")},
        errors=[403, 404],
        params=[name],
    )
    p.add(
        "PUT",
        fn + "/aliases/{alias}",
        "Point an alias at a version: a hash, a unique prefix or another alias (rollback)",
        {"200": json_content(record, "The function")},
        errors=[403, 404],
        params=[name, alias],
        body=body(alias_req),
    )
    p.add(
        "DELETE",
        fn + "/aliases/{alias}",
        "Delete an alias ('latest' cannot be)",
        {"200": json_content(record, "The function")},
        errors=[400, 403, 404],
        params=[name, alias],
    )
    p.add(
        "GET",
        fn + "/secrets",
        "The names of a function's secrets (never their values)",
        {"200": json_content(secret_names, "Names and the secrets' version")},
        errors=[400, 403, 404],
        params=[name],
    )
    p.add(
        "POST",
        fn + "/secrets",
        "Set several secrets at once (all or none); may precede the first deploy",
        {"200": json_content(secret_names, "Names and the secrets' new version")},
        errors=[403, 404],
        params=[name],
        body=body(secrets_req),
    )
    p.add(
        "PUT",
        fn + "/secrets/{key}",
        "Set one secret",
        {"200": json_content(secret_names, "Names and the secrets' new version")},
        errors=[403, 404],
        params=[name, secret_key],
        body=body(secret_req),
    )
    p.add(
        "DELETE",
        fn + "/secrets/{key}",
        "Remove one secret",
        {"200": json_content(secret_names, "Names and the secrets' new version")},
        errors=[400, 403, 404],
        params=[name, secret_key],
    )
    p.add(
        "GET",
        "/v1/node/secrets/{name}",
        "The values of the secrets a function declares (nodes, before running it)",
        {"200": json_content(node_secrets, "The values")},
        errors=[403, 404, 500],
        params=[name],
    )
    p.add(
        "GET",
        "/v1/node/sigv4/{key_id}",
        "A key's SigV4 signing key for one day and region (nodes, checking the Invoke API)",
        {"200": json_content(signing_key, "kSigning, hex")},
        errors=[400, 403, 404],
        params=[
            string_param("key_id", "path", maxLength=128),
            string_param("date", "query", pattern="^[0-9]{8}$"),
            string_param("region", "query", pattern="^[a-z0-9-]{1,32}$"),
        ],
    )
    p.add(
        "GET",
        "/v1/changes",
        "Change feed (nodes): functions and keys changed after a revision; long-polls",
        {"200": json_content(changes, "The new revision and what changed up to it")},
        errors=[400, 403],
        params=[
            int_param("since", 0, _MAX_REVISION, "the last revision seen"),
            int_param("wait", 0, 3600, "seconds to wait for a change (at most 60 are waited)"),
            flag_param(
                "fresh",
                "true with since=0 from a node that holds nothing yet: deleted functions "
                "and revoked keys are left out",
            ),
        ],
    )
    p.add(
        "POST",
        "/v1/admin/gc",
        "Collect now: versions neither aliased nor among the newest N, and their bundles "
        "once nothing refers to them",
        {"200": json_content(collected, "The removed versions and bundles")},
        errors=[403],
    )
    p.add(
        "GET",
        "/v1/tenants",
        "Every tenant (cluster admin)",
        {"200": json_content(tenants, "The tenants")},
        errors=[403],
    )
    p.add(
        "POST",
        "/v1/tenants",
        "Create a tenant (cluster admin)",
        {"201": json_content(tenant, "Created")},
        errors=[403, 409],
        body=body(tenant_req),
    )
    p.add(
        "DELETE",
        "/v1/tenants/{tenant}",
        "Remove a tenant without functions, revoking its keys (cluster admin)",
        {"200": json_content(tenant_deleted, "Removed, and the keys revoked")},
        errors=[403, 404, 409],
        params=[tenant_param],
    )
    p.add(
        "GET",
        "/v1/keys",
        "A tenant's keys: the caller's own tenant unless ?tenant= (its admin or the cluster's)",
        {"200": json_content(keys, "The keys")},
        errors=[403, 404],
        params=[string_param("tenant", "query", description="default: the caller's tenant")],
    )
    p.add(
        "POST",
        "/v1/keys",
        "Create a key; its secret is in this answer only",
        {"201": json_content(new_key, "The key and its secret")},
        errors=[403, 404, 409],
        body=body(key_req),
    )
    p.add(
        "DELETE",
        "/v1/keys/{key_id}",
        "Revoke a key (its tenant's admin or the cluster's); nodes learn it on the feed",
        {"200": json_content(key_view, "The revoked key")},
        errors=[403, 404],
        params=[key_id],
    )
    p.add(
        "POST",
        "/v1/join-tokens",
        "A single-use token a new node trades for its credential (cluster admin)",
        {"201": json_content(join_token, "The token and when it expires")},
        errors=[403],
        body=body(join_token_req),
    )
    p.add(
        "POST",
        "/v1/nodes/join",
        "Trade a join token for a node credential and the key-hashing key",
        {"201": json_content(joined, "The node's credential")},
        public=True,
        body=body(join_req),
    )
    p.add(
        "GET",
        "/v1/nodes",
        "The nodes, live or not, and where they are (details for the cluster admin)",
        {"200": json_content(nodes, "The nodes")},
    )
    p.add(
        "POST",
        "/v1/nodes/heartbeat",
        "A node says where it is and that it is alive (node credentials)",
        {"204": {"description": "Recorded"}},
        errors=[403],
        body=body(heartbeat),
    )
    p.add(
        "DELETE",
        "/v1/nodes/{key_id}",
        "Revoke a node's credential (cluster admin)",
        {"200": json_content(key_view, "The revoked credential")},
        errors=[403, 404],
        params=[key_id],
    )
    p.add(
        "GET",
        "/metrics",
        "Prometheus metrics: revision, registry changes, change-feed waiters (cluster "
        "admin; send the key as a bearer token)",
        {
            "200": {
                "description": "The Prometheus text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
        errors=[403],
    )
    return document("edgerun control plane", p, components)
