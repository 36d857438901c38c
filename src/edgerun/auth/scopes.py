"""Tenants, scopes and the one decision: may this principal do this to that function?

A function's full name carries its tenant: ``acme.resize`` belongs to
tenant ``acme``; a name without a dot belongs to the default tenant, so the
single-user flow (``hello``) is unchanged. Keys are scoped to a kind of
action and, optionally, a glob over the short name (``invoke:api-*``).

A refusal never tells a tenant whether another tenant's function exists:
acting on a name outside one's tenant is answered exactly as a missing
function is (404), while a name inside it that the key's scopes do not cover
is a 403.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase

from edgerun.errors import bad_request, forbidden, not_found

DEFAULT_TENANT = "default"
SYSTEM_TENANT = "system"
"""Owner of node credentials; no function belongs to it."""
TENANT_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,29}[a-z0-9])?\Z")
_MAX_DECISIONS = 4096
_MAX_CACHED_NAME = 96
"""The longest full function name (``tenant.`` 32 + name 63 characters): longer
names are never functions and are decided without being remembered."""
_PATTERN_RE = re.compile(r"^[a-z0-9*?\[\]!-]{1,63}\Z")


class Kind(StrEnum):
    ADMIN = "admin"
    """Everything within the tenant, keys included; in the default tenant, the cluster."""
    DEPLOY = "deploy"
    """Deploy, delete, aliases, prewarm (and read what it deploys)."""
    INVOKE = "invoke"
    READ = "read"
    """Get, list, versions, logs, status."""
    NODE = "node"
    """A node's credential: follow the feed, fetch bundles and secrets, forward calls."""
    OBSERVE = "observe"
    """The control plane's own key for its dashboard: read every node's status and logs,
    nothing else (so the admin's key never leaves the control plane)."""


_USER_KINDS = (Kind.ADMIN, Kind.DEPLOY, Kind.INVOKE, Kind.READ)


@dataclass(frozen=True, slots=True)
class Scope:
    kind: Kind
    pattern: str = "*"

    def __str__(self) -> str:
        return self.kind.value if self.pattern == "*" else f"{self.kind.value}:{self.pattern}"

    def covers(self, kind: Kind, short: str) -> bool:
        if self.kind is Kind.ADMIN:
            return kind is not Kind.NODE
        if self.kind is kind or (self.kind is Kind.DEPLOY and kind is Kind.READ):
            return fnmatchcase(short, self.pattern)
        return False


def parse_scope(text: str, *, node: bool = False) -> Scope:
    """``invoke``, ``invoke:api-*``, ``admin``...; a 400 saying what is wrong otherwise."""
    kind_text, sep, pattern = text.partition(":")
    allowed = (*_USER_KINDS, Kind.NODE, Kind.OBSERVE) if node else _USER_KINDS
    try:
        kind = Kind(kind_text)
    except ValueError:
        kind = None
    if kind not in allowed:
        names = ", ".join(k.value for k in _USER_KINDS)
        raise bad_request(f"unknown scope {text[:80]!r}: use one of {names}, optionally ':PATTERN'")
    assert kind is not None
    if not sep:
        return Scope(kind)
    if kind in (Kind.ADMIN, Kind.NODE, Kind.OBSERVE):
        raise bad_request(f"scope {kind.value!r} takes no function pattern")
    if not _PATTERN_RE.match(pattern):
        raise bad_request(
            f"invalid function pattern {pattern[:80]!r}: a glob of lowercase letters, digits, '-'"
            " and * ? [ ] !"
        )
    return Scope(kind, pattern)


def validate_tenant(name: str) -> str:
    if not TENANT_RE.match(name):
        raise bad_request(
            f"invalid tenant name {name[:80]!r}: use 1-31 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return name


def tenant_of(function: str) -> str:
    tenant, sep, _ = function.partition(".")
    return tenant if sep else DEFAULT_TENANT


def tenant_prefix(tenant: str) -> str:
    """What the names of ``tenant``'s functions start with ("" for the default
    tenant, whose names have no dot; so its listings also pass other tenants')."""
    return "" if tenant == DEFAULT_TENANT else tenant + "."


def short_name(function: str) -> str:
    _, sep, short = function.partition(".")
    return short if sep else function


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request comes from, once its key is verified.

    Built once per key (the keyring keeps it), so what a key may do to a name is
    worked out once and remembered: the invoke path pays a dict lookup."""

    key_id: str
    tenant: str
    scopes: tuple[Scope, ...]
    rate_per_s: float | None = None
    max_concurrency: int | None = None
    """The key's own limits, enforced at each node."""
    is_node: bool = field(init=False)
    is_observer: bool = field(init=False)
    """Sees every function's status and logs on nodes (the dashboard), acts on none."""
    is_admin: bool = field(init=False)
    """Admin of its tenant."""
    is_cluster_admin: bool = field(init=False)
    _decided: dict[tuple[Kind, str], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        admin = any(s.kind is Kind.ADMIN for s in self.scopes)
        object.__setattr__(self, "is_node", any(s.kind is Kind.NODE for s in self.scopes))
        object.__setattr__(self, "is_observer", any(s.kind is Kind.OBSERVE for s in self.scopes))
        object.__setattr__(self, "is_admin", admin)
        object.__setattr__(self, "is_cluster_admin", admin and self.tenant == DEFAULT_TENANT)
        object.__setattr__(self, "_decided", {})

    def owns(self, function: str) -> bool:
        return self.is_cluster_admin or tenant_of(function) == self.tenant

    def allows(self, kind: Kind, function: str) -> bool:
        """:meth:`may`, worked out and not remembered: for listings that pass many
        names once, which would only push the invoke path's decisions out."""
        short = short_name(function)
        return self.owns(function) and any(s.covers(kind, short) for s in self.scopes)

    def may(self, kind: Kind, function: str) -> bool:
        decided = self._decided.get((kind, function))
        if decided is None:
            decided = self.allows(kind, function)
            if len(function) <= _MAX_CACHED_NAME:  # a caller picks the name: keep it small
                if len(self._decided) >= _MAX_DECISIONS:
                    self._decided.clear()
                self._decided[(kind, function)] = decided
        return decided

    def may_any(self, kind: Kind) -> bool:
        """Whether some function could be allowed (listings are filtered afterwards)."""
        return any(
            s.kind is Kind.ADMIN or s.kind is kind or (kind is Kind.READ and s.kind is Kind.DEPLOY)
            for s in self.scopes
        )

    def check(self, kind: Kind, function: str) -> None:
        """Raise unless allowed: 404 (as for a missing function) outside the tenant, 403 inside."""
        if self.may(kind, function):
            return
        if not self.owns(function):
            raise not_found(f"function {function!r} does not exist")
        raise forbidden(f"this key may not {kind.value} function {function!r}")

    def check_tenant(self, tenant: str, *, admin: bool = True) -> None:
        """Managing a tenant's keys: its own admin, or the cluster admin."""
        if self.is_cluster_admin or (self.tenant == tenant and (self.is_admin or not admin)):
            return
        if self.tenant != tenant:
            raise not_found(f"tenant {tenant!r} does not exist")
        raise forbidden("managing keys needs an admin key")
