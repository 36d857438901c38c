"""The registry's records, shared by the control plane, nodes and the SDK.

A *function* is a name plus a configuration; a *version* is an immutable
pair of a bundle (identified by the sha256 of its bytes) and the handler that
was deployed with it. Runtime settings (memory, timeout, env, placement) live
on the function, so changing them does not mint a new code version, while a
rollback (moving an alias) brings back the code *and* its handler.

A version's id (``Version.sha256``, what aliases point at and what
``x-edgerun-version`` reports) is :func:`version_id`: the sha256 of the
bundle's hash and the handler, so everything that decides what runs is in
the name and a version never changes once created. Deploying the same bundle
with another handler creates another version. Nodes locate code by
``Version.bundle_sha256`` (code is stored and fetched per bundle, shared by
the versions that use it).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Literal

import msgspec

from edgerun import schedule
from edgerun.errors import bad_request

Placement = Literal["auto", "edge", "region"]

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")
FUNCTION_RE = re.compile(
    r"^([a-z0-9]([a-z0-9-]{0,29}[a-z0-9])?\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z"
)
"""A function's full name: ``name`` in the default tenant, ``tenant.name`` in another."""
ALIAS_RE = NAME_RE
HANDLER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+\Z")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")

LATEST = "latest"
MAX_MEMORY_MB = 10_240
MAX_TIMEOUT_S = 900.0
RESERVED_ENV_PREFIXES = ("EDGERUN_", "AWS_LAMBDA_")


class AsyncConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Asynchronous invocations of a function (``[async]`` in edgerun.toml)."""

    max_retries: int = 2
    """Attempts after the first when the handler raises or edgerun cannot run it (0-2)."""
    max_event_age_s: float = 21600.0
    """An event not run successfully within this long goes to its failure destination."""
    on_failure: str = "dlq"
    """``dlq``: the node's dead-letter store; or a function (of the same tenant) that
    gets a Lambda-shaped invocation record as its event."""
    max_concurrency: int = 10
    """Events of this function each node runs at once."""


class FunctionConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a user sets when deploying; validated by :func:`validate_config`."""

    handler: str = "handler.handler"
    memory_mb: int = 128
    timeout_s: float = 3.0
    env: dict[str, str] = msgspec.field(default_factory=dict)
    placement: Placement = "auto"
    network: bool = False
    idempotent: bool = False
    latency_sensitive: bool = False
    auth: Literal["public", "key"] = "key"
    """Who may call the HTTP trigger: anyone (``public``) or keys with ``invoke`` scope.
    The direct invoke API always needs a key."""
    secrets: list[str] = msgspec.field(default_factory=list)
    """Names of the secrets the function needs: a deploy fails while one is missing."""
    rate_per_s: float | None = None
    """Requests per second each node admits (a token bucket); more get 429."""
    max_concurrency: int | None = None
    """Calls each node runs or forwards at once (reserved concurrency); more get 429."""
    async_: AsyncConfig = msgspec.field(default_factory=AsyncConfig, name="async")
    schedule: str = ""
    """``rate(5 minutes)`` or a cron expression: the control plane fires an async
    invocation with an EventBridge-shaped scheduled event at each tick."""


def version_id(bundle_sha256: str, handler: str) -> str:
    """The id of the version running ``handler`` from bundle ``bundle_sha256``."""
    return hashlib.sha256(f"edgerun-version\0{bundle_sha256}\0{handler}".encode()).hexdigest()


class Version(msgspec.Struct, kw_only=True):
    sha256: str
    """The version id: :func:`version_id` of its bundle and handler."""
    handler: str
    size: int
    created_at: float
    bundle_sha256: str = ""
    """The code: sha256 of the bundle's zip. Records written before versions had
    ids of their own lack it: their id was the bundle's hash."""

    def __post_init__(self) -> None:
        if not self.bundle_sha256:
            self.bundle_sha256 = self.sha256


class FunctionRecord(msgspec.Struct, kw_only=True):
    """A function as nodes see it through the change feed."""

    name: str
    config: FunctionConfig
    versions: dict[str, Version]
    aliases: dict[str, str]
    created_at: float
    updated_at: float
    revision: int
    deleted: bool = False

    def resolve(self, qualifier: str | None) -> Version:
        """Map an alias, a full hash or a unique hash prefix to a version."""
        return self.versions[resolve_qualifier(self, qualifier)]


class DeployRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``PUT /v1/functions/{name}``: an uploaded bundle plus config."""

    bundle_sha256: str
    config: FunctionConfig = msgspec.field(default_factory=FunctionConfig)


class AliasRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``PUT /v1/functions/{name}/aliases/{alias}``: a hash or prefix."""

    version: str


class UnknownQualifier(LookupError):
    pass


def resolve_qualifier(fn: FunctionRecord, qualifier: str | None) -> str:
    q = qualifier or LATEST
    if q in fn.aliases:
        return fn.aliases[q]
    if q in fn.versions:
        return q
    if len(q) >= 8 and all(c in "0123456789abcdef" for c in q):
        hits = [sha for sha in fn.versions if sha.startswith(q)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise UnknownQualifier(f"version prefix {q!r} of {fn.name!r} is ambiguous")
    raise UnknownQualifier(f"function {fn.name!r} has no alias or version {q!r}")


def validate_name(name: str, what: str = "function name") -> str:
    if not NAME_RE.match(name):
        raise bad_request(
            f"invalid {what} {name!r}: use 1-63 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return name


def validate_function_name(name: str) -> str:
    if not FUNCTION_RE.match(name):
        raise bad_request(
            f"invalid function name {name[:100]!r}: use 1-63 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit, after 'TENANT.' outside the default tenant"
        )
    return name


def validate_config(cfg: FunctionConfig) -> FunctionConfig:
    if not HANDLER_RE.match(cfg.handler):
        raise bad_request(
            f"invalid handler {cfg.handler!r}: expected 'module.function' (e.g. 'app.handler')"
        )
    if not 16 <= cfg.memory_mb <= MAX_MEMORY_MB:
        raise bad_request(f"memory_mb must be between 16 and {MAX_MEMORY_MB}, got {cfg.memory_mb}")
    if not 0 < cfg.timeout_s <= MAX_TIMEOUT_S:
        raise bad_request(f"timeout_s must be in (0, {MAX_TIMEOUT_S:g}], got {cfg.timeout_s}")
    for key in cfg.env:
        if not ENV_KEY_RE.match(key):
            raise bad_request(f"invalid environment variable name {key!r}")
        if key.startswith(RESERVED_ENV_PREFIXES):
            raise bad_request(f"environment variable {key!r} uses a reserved prefix")
    if len(cfg.secrets) > 100 or len(set(cfg.secrets)) != len(cfg.secrets):
        raise bad_request("secrets lists at most 100 distinct names")
    for key in cfg.secrets:
        if not ENV_KEY_RE.match(key) or key.startswith(RESERVED_ENV_PREFIXES):
            raise bad_request(f"invalid secret name {key[:80]!r}")
        if key in cfg.env:
            raise bad_request(f"{key!r} is both an environment variable and a secret")
    if cfg.rate_per_s is not None and not 0 < cfg.rate_per_s <= 1e6:
        raise bad_request("rate_per_s must be in (0, 1000000]")
    if cfg.max_concurrency is not None and not 1 <= cfg.max_concurrency <= 100_000:
        raise bad_request("max_concurrency must be between 1 and 100000")
    a = cfg.async_
    if not 0 <= a.max_retries <= 2:
        raise bad_request("async.max_retries must be between 0 and 2")
    if not 60 <= a.max_event_age_s <= 21600:
        raise bad_request("async.max_event_age_s must be between 60 and 21600")
    if not 1 <= a.max_concurrency <= 1000:
        raise bad_request("async.max_concurrency must be between 1 and 1000")
    if a.on_failure != "dlq":
        validate_function_name(a.on_failure)
    if cfg.schedule:
        try:
            schedule.check(cfg.schedule, datetime.now(UTC))
        except ValueError as exc:
            raise bad_request(str(exc)) from None
    return cfg


class Heartbeat(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a node says of itself (``POST /v1/nodes/heartbeat``)."""

    url: str
    role: str
    revision: int = 0
    synced: bool = False
    workers: int = 1
    load: float = 0.0
    started_at: float = 0.0
    interval_s: float = 5.0
