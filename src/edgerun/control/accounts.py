"""Tenants, API keys and node join tokens, in the registry's database.

Keys share the registry's revision counter, so the change feed carries a
revoked key to every node in the same long-poll that carries a deploy: a
revocation reaches every POP as fast as a deploy does. Only digests are
stored (see :mod:`edgerun.auth.keys`); a join token is single-use and
expires, and what it is exchanged for is a node credential of its own.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time

from edgerun.auth import (
    DEFAULT_TENANT,
    KeyEntry,
    Keyring,
    digest,
    new_key_id,
    new_secret,
    parse_scope,
    validate_tenant,
)
from edgerun.auth.scopes import SYSTEM_TENANT
from edgerun.control.registry import SqliteRegistry
from edgerun.errors import ApiError, bad_request, not_found, unauthorized

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    scopes TEXT NOT NULL,
    digest TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    revision BIGINT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    rate_per_s DOUBLE PRECISION,
    max_concurrency INTEGER
);
CREATE INDEX IF NOT EXISTS api_keys_revision ON api_keys (revision);
CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys (tenant);
CREATE TABLE IF NOT EXISTS join_tokens (
    digest TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    used INTEGER NOT NULL DEFAULT 0
);
"""
_KEY_COLUMNS = (
    "id, tenant, scopes, digest, name, created_at, revision, revoked, rate_per_s, max_concurrency"
)
MAX_KEYS_PER_TENANT = 1000
MAX_TENANTS = 10_000
MAX_JOIN_TTL_S = 7 * 24 * 3600.0
NODE_NAME_CHARS = 63


def _entry(row: tuple[object, ...]) -> KeyEntry:
    kid, tenant, scopes, dig, name, created, rev, revoked, rate, conc = row
    return KeyEntry(
        id=str(kid),
        tenant=str(tenant),
        scopes=list(json.loads(str(scopes))),
        digest=str(dig),
        name=str(name),
        created_at=float(created),  # type: ignore[arg-type]
        revision=int(rev),  # type: ignore[call-overload]
        revoked=bool(revoked),
        rate_per_s=None if rate is None else float(rate),  # type: ignore[arg-type]
        max_concurrency=None if conc is None else int(conc),  # type: ignore[call-overload]
    )


OBSERVER_NAME = "dashboard observer"


class Accounts:
    """Tenants, keys and join tokens; ``keyring`` is the control plane's live view of the keys."""

    def __init__(self, registry: SqliteRegistry, hash_key: bytes) -> None:
        self.registry = registry
        self.hash_key = hash_key
        with registry.transaction() as cur:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    cur.execute(statement)
            cur.execute(
                "INSERT INTO tenants (name, created_at) VALUES (?, ?)"
                " ON CONFLICT (name) DO NOTHING",
                (DEFAULT_TENANT, time.time()),
            )
        self.keyring = Keyring(hash_key)
        with registry.read() as cur:
            rows = cur.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys").fetchall()
        self.keyring.apply([_entry(r) for r in rows])

    # --- tenants -------------------------------------------------------------
    def tenants(self) -> list[dict[str, object]]:
        with self.registry.read() as cur:
            rows = cur.execute(
                "SELECT t.name, t.created_at,"
                " (SELECT COUNT(*) FROM api_keys k WHERE k.tenant = t.name AND k.revoked = 0)"
                " FROM tenants t ORDER BY t.name"
            ).fetchall()
        return [{"name": n, "created_at": c, "keys": k} for n, c, k in rows]

    def has_tenant(self, name: str) -> bool:
        with self.registry.read() as cur:
            row = cur.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone()
        return row is not None

    def create_tenant(self, name: str) -> dict[str, object]:
        validate_tenant(name)
        if name in (DEFAULT_TENANT, SYSTEM_TENANT):
            raise ApiError(409, "Conflict", f"tenant {name!r} is reserved")
        now = time.time()
        with self.registry.transaction() as cur:
            if cur.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone():
                raise ApiError(409, "Conflict", f"tenant {name!r} already exists")
            if cur.execute("SELECT COUNT(*) FROM tenants").fetchone()[0] >= MAX_TENANTS:
                raise ApiError(409, "Conflict", f"the cluster holds its limit of {MAX_TENANTS}")
            cur.execute("INSERT INTO tenants (name, created_at) VALUES (?, ?)", (name, now))
        return {"name": name, "created_at": now, "keys": 0}

    def delete_tenant(self, name: str) -> list[KeyEntry]:
        """Remove an empty tenant and revoke its keys (returned, for the keyring)."""
        if name == DEFAULT_TENANT:
            raise ApiError(409, "Conflict", "the default tenant cannot be removed")
        with self.registry.transaction() as cur:
            if not cur.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone():
                raise not_found(f"tenant {name!r} does not exist")
            left = cur.execute(
                "SELECT COUNT(*) FROM functions WHERE deleted = 0 AND name LIKE ?",
                (name + ".%",),
            ).fetchone()[0]
            if left:
                raise ApiError(
                    409,
                    "Conflict",
                    f"tenant {name!r} still has {left} function(s); delete them first",
                )
            revoked = self._revoke_where(cur, "tenant = ? AND revoked = 0", (name,))
            cur.execute("DELETE FROM tenants WHERE name = ?", (name,))
        self.keyring.apply(revoked)  # once committed: a rollback must not revoke in memory
        return revoked

    # --- keys ----------------------------------------------------------------
    def create_key(
        self,
        tenant: str,
        scopes: list[str],
        *,
        name: str = "",
        rate_per_s: float | None = None,
        max_concurrency: int | None = None,
        node: bool = False,
        secret: str | None = None,
        key_id: str | None = None,
    ) -> tuple[KeyEntry, str]:
        """A new key and its secret (shown once, never stored)."""
        if not scopes:
            raise bad_request("a key needs at least one scope")
        if len(scopes) > 32:
            raise bad_request("a key may have at most 32 scopes")
        parsed = [str(parse_scope(s, node=node)) for s in scopes]
        if len(name) > 200:
            raise bad_request("a key's name is at most 200 characters")
        if rate_per_s is not None and not 0 < rate_per_s <= 1e6:
            raise bad_request("rate_per_s must be in (0, 1000000]")
        if max_concurrency is not None and not 1 <= max_concurrency <= 100_000:
            raise bad_request("max_concurrency must be between 1 and 100000")
        secret = secret or new_secret()
        now = time.time()
        with self.registry.transaction() as cur:
            if (
                not node
                and not cur.execute("SELECT 1 FROM tenants WHERE name = ?", (tenant,)).fetchone()
            ):
                raise not_found(f"tenant {tenant!r} does not exist")
            live = cur.execute(
                "SELECT COUNT(*) FROM api_keys WHERE tenant = ? AND revoked = 0", (tenant,)
            ).fetchone()[0]
            if live >= MAX_KEYS_PER_TENANT:
                raise ApiError(409, "Conflict", f"tenant {tenant!r} holds its limit of keys")
            rev = self.registry.bump(cur)
            entry = KeyEntry(
                id=key_id or new_key_id(),
                tenant=tenant,
                scopes=parsed,
                digest=digest(self.hash_key, secret),
                name=name,
                created_at=now,
                revision=rev,
                rate_per_s=rate_per_s,
                max_concurrency=max_concurrency,
            )
            cur.execute(
                f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                (
                    entry.id,
                    tenant,
                    json.dumps(parsed),
                    entry.digest,
                    name,
                    now,
                    rev,
                    rate_per_s,
                    max_concurrency,
                ),
            )
        self.keyring.apply([entry])
        return entry, secret

    def ensure_bootstrap_admin(self, secret: str) -> None:
        """The admin token ``edgerun up`` writes is the default tenant's first admin key
        (created once: once revoked, it stays revoked)."""
        with self.registry.read() as cur:
            known = cur.execute("SELECT 1 FROM api_keys WHERE id = 'admin'").fetchone()
        if not known:
            self.create_key(
                DEFAULT_TENANT,
                ["admin"],
                name="bootstrap admin token",
                secret=secret,
                key_id="admin",
            )

    def new_observer(self) -> str:
        """A fresh key for the dashboard to read nodes with (``observe`` scope), revoking
        the ones earlier starts made; its secret lives only in this process."""
        for entry in self.keys(SYSTEM_TENANT):
            if entry.name == OBSERVER_NAME and not entry.revoked:
                self.revoke(entry.id)
        _, secret = self.create_key(SYSTEM_TENANT, ["observe"], name=OBSERVER_NAME, node=True)
        return secret

    def keys(self, tenant: str | None = None, *, nodes: bool = False) -> list[KeyEntry]:
        where, args = ("tenant = ?", (tenant,)) if tenant else ("1 = 1", ())
        with self.registry.read() as cur:
            rows = cur.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE {where} ORDER BY created_at, id", args
            ).fetchall()
        entries = [_entry(r) for r in rows]
        return [e for e in entries if e.is_node == nodes]

    def key(self, key_id: str) -> KeyEntry | None:
        with self.registry.read() as cur:
            row = cur.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
        return None if row is None else _entry(row)

    def revoke(self, key_id: str) -> KeyEntry:
        with self.registry.transaction() as cur:
            if not cur.execute("SELECT 1 FROM api_keys WHERE id = ?", (key_id,)).fetchone():
                raise not_found(f"key {key_id[:40]!r} does not exist")
            revoked = self._revoke_where(cur, "id = ? AND revoked = 0", (key_id,))
            row = cur.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
        self.keyring.apply(revoked)
        return _entry(row)

    def _revoke_where(
        self, cur: sqlite3.Cursor, where: str, args: tuple[object, ...]
    ) -> list[KeyEntry]:
        ids = [str(r[0]) for r in cur.execute(f"SELECT id FROM api_keys WHERE {where}", args)]
        revoked = []
        for kid in ids:
            rev = self.registry.bump(cur)
            cur.execute("UPDATE api_keys SET revoked = 1, revision = ? WHERE id = ?", (rev, kid))
            row = cur.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (kid,)
            ).fetchone()
            revoked.append(_entry(row))
        return revoked

    def changes(
        self, since: int, upto: int, limit: int = 1000, *, live_only: bool = False
    ) -> list[KeyEntry]:
        """Keys changed in ``(since, upto]``, oldest first, at most ``limit``.

        ``live_only`` leaves revoked keys out, for a node that holds no keys: its
        keyring refuses a key it does not know, so it needs no revocation."""
        with self.registry.snapshot() as cur:
            rows = cur.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE revision > ? AND revision <= ?"
                + (" AND revoked = 0" if live_only else "")
                + " ORDER BY revision LIMIT ?",
                (since, upto, limit),
            ).fetchall()
        return [_entry(r) for r in rows]

    # --- nodes ---------------------------------------------------------------
    def create_join_token(self, role: str, name: str, ttl_s: float) -> tuple[str, float]:
        if role not in ("pop", "region"):
            raise bad_request("role must be 'pop' or 'region'")
        if not name or len(name) > NODE_NAME_CHARS or not name.isprintable():
            raise bad_request(f"a node name is 1-{NODE_NAME_CHARS} printable characters")
        if not 0 < ttl_s <= MAX_JOIN_TTL_S:
            raise bad_request(f"ttl_s must be in (0, {MAX_JOIN_TTL_S:g}]")
        token = "erj_" + secrets.token_urlsafe(32)
        now = time.time()
        with self.registry.transaction() as cur:
            cur.execute(
                "INSERT INTO join_tokens (digest, role, name, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (digest(self.hash_key, token), role, name, now, now + ttl_s),
            )
        return token, now + ttl_s

    def join(self, token: str) -> tuple[KeyEntry, str]:
        """Exchange a join token (once, before it expires) for a node credential."""
        dig = digest(self.hash_key, token[:256])
        with self.registry.transaction() as cur:
            row = cur.execute(
                "SELECT role, name, expires_at, used FROM join_tokens WHERE digest = ?", (dig,)
            ).fetchone()
            if row is None or row[3] or row[2] < time.time():
                raise unauthorized("the join token is unknown, used or expired")
            cur.execute("UPDATE join_tokens SET used = 1 WHERE digest = ?", (dig,))
            cur.execute("DELETE FROM join_tokens WHERE expires_at < ?", (time.time() - 86400,))
        role, name = str(row[0]), str(row[1])
        return self.create_key(SYSTEM_TENANT, ["node"], name=f"{role}:{name}", node=True)
