"""API keys as the cluster stores them and every node verifies them.

A key is an id (``EK...``, what a SigV4 client sends as its access key id)
and a secret (``ers_...``, sent as ``Authorization: Bearer <secret>``).
Only an HMAC-SHA256 of the secret under the cluster's hash key is stored,
and only that travels on the change feed. Not a slow KDF: secrets are 256
random bits, so no guess can succeed either way, while a slow KDF would
cost milliseconds on every request at every POP. The hash key (kept by the
control plane and handed to nodes when they join) means a copy of the
registry alone cannot even confirm a guessed secret.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import msgspec

from edgerun.auth.scopes import Principal, Scope, parse_scope
from edgerun.errors import unauthorized

KEY_ID_PREFIX = "EK"
SECRET_PREFIX = "ers_"
MAX_SECRET_CHARS = 256
_MAX_SEEN = 10_000


class KeyEntry(msgspec.Struct, kw_only=True):
    """A key as the registry keeps it and the change feed carries it (no secret)."""

    id: str
    tenant: str
    scopes: list[str]
    digest: str
    revoked: bool = False
    name: str = ""
    """A label; for a node credential, the node's name."""
    created_at: float = 0.0
    revision: int = 0
    rate_per_s: float | None = None
    max_concurrency: int | None = None

    @property
    def is_node(self) -> bool:
        return "node" in self.scopes


class NodeCredential(msgspec.Struct, kw_only=True):
    """What a node holds after joining: its own key and the hash key to verify others'."""

    key_id: str
    secret: str
    hash_key: str
    """Hex of the cluster's key-hashing key."""


def new_key_id() -> str:
    return KEY_ID_PREFIX + secrets.token_hex(9).upper()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def digest(hash_key: bytes, secret: str) -> str:
    return hmac.new(hash_key, secret.encode(), hashlib.sha256).hexdigest()


def bearer(authorization: str | None) -> str | None:
    """The secret of an ``Authorization: Bearer`` header; None when there is none."""
    if not authorization:
        return None
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return given.strip() or None


class Keyring:
    """Live keys by digest, fed with :class:`KeyEntry` changes; revoked keys drop out."""

    def __init__(self, hash_key: bytes) -> None:
        self.hash_key = hash_key
        self._by_id: dict[str, KeyEntry] = {}
        self._principals: dict[str, tuple[KeyEntry, Principal]] = {}
        self._seen: dict[str, tuple[KeyEntry, Principal]] = {}
        """Secrets already hashed -> what they verified as: a caller's next request
        skips the HMAC. Cleared whenever a key changes, so a revocation is never missed."""

    def __len__(self) -> int:
        return len(self._principals)

    def entries(self) -> list[KeyEntry]:
        return list(self._by_id.values())

    def get(self, key_id: str) -> KeyEntry | None:
        return self._by_id.get(key_id)

    def apply(self, entries: list[KeyEntry]) -> None:
        if entries:
            self._seen.clear()
        for entry in entries:
            old = self._by_id.pop(entry.id, None)
            if old is not None:
                self._principals.pop(old.digest, None)
            self._by_id[entry.id] = entry
            if not entry.revoked:
                scopes = tuple(parse_scope(s, node=True) for s in entry.scopes)
                principal = Principal(
                    entry.id, entry.tenant, scopes, entry.rate_per_s, entry.max_concurrency
                )
                self._principals[entry.digest] = (entry, principal)

    def lookup(self, secret: str) -> tuple[KeyEntry, Principal] | None:
        if len(secret) > MAX_SECRET_CHARS:
            return None
        try:
            return self._seen[secret]
        except KeyError:
            pass
        found = self._principals.get(digest(self.hash_key, secret))
        if found is not None:  # unknown secrets are not remembered: a flood of them
            if len(self._seen) >= _MAX_SEEN:  # would only push out the real ones
                self._seen.clear()
            self._seen[secret] = found
        return found

    def principal_of_id(self, key_id: str) -> Principal | None:
        """The principal of a live key by its id (a SigV4 request names its key by id
        and proves it holds the secret by its signature)."""
        entry = self._by_id.get(key_id)
        if entry is None or entry.revoked:
            return None
        found = self._principals.get(entry.digest)
        return None if found is None else found[1]

    def principal(self, secret: str | None) -> Principal | None:
        """The principal of a live key's secret; None for anything else."""
        if not secret:
            return None
        found = self.lookup(secret)
        return None if found is None else found[1]

    def authenticate(self, authorization: str | None) -> Principal | None:
        """None without credentials; 401 for a bearer secret that is not a live key."""
        secret = bearer(authorization)
        if secret is None:
            if authorization:
                raise unauthorized("use 'Authorization: Bearer <key secret>'")
            return None
        principal = self.principal(secret)
        if principal is None:
            raise unauthorized("the key is not valid (unknown or revoked)")
        return principal

    def require(self, authorization: str | None) -> Principal:
        principal = self.authenticate(authorization)
        if principal is None:
            raise unauthorized("this call needs a key: send 'Authorization: Bearer <key secret>'")
        return principal

    def node(self, secret: str | None) -> Principal | None:
        """The node a live node credential belongs to; None for anything else."""
        principal = self.principal(secret)
        return principal if principal is not None and principal.is_node else None


def scopes_text(scopes: tuple[Scope, ...]) -> list[str]:
    return [str(s) for s in scopes]
