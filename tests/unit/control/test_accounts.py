"""Tenants, keys and join tokens in the registry's database."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgerun.control.accounts import Accounts
from edgerun.control.registry import SqliteRegistry
from edgerun.errors import ApiError
from edgerun.models import FunctionConfig


@pytest.fixture
def accounts(tmp_path: Path) -> Accounts:
    return Accounts(SqliteRegistry(tmp_path / "registry.db"), b"k" * 32)


def status(fn: object, *args: object, **kw: object) -> int:
    with pytest.raises(ApiError) as exc:
        fn(*args, **kw)  # type: ignore[operator]
    return exc.value.status


def test_keys_travel_on_the_functions_revision_counter(accounts: Accounts) -> None:
    before = accounts.registry.revision()
    entry, _ = accounts.create_key("default", ["invoke"])
    assert entry.revision == before + 1
    revoked = accounts.revoke(entry.id)
    assert revoked.revoked and revoked.revision == before + 2
    assert [e.id for e in accounts.changes(before, accounts.registry.revision())] == [entry.id]


def test_only_the_digest_is_stored(accounts: Accounts, tmp_path: Path) -> None:
    _, secret = accounts.create_key("default", ["invoke"])
    assert secret.encode() not in (tmp_path / "registry.db").read_bytes()
    assert accounts.keyring.principal(secret) is not None


def test_the_bootstrap_admin_is_created_once_and_stays_revoked(accounts: Accounts) -> None:
    accounts.ensure_bootstrap_admin("er_token")
    accounts.revoke("admin")
    accounts.ensure_bootstrap_admin("er_token")
    assert accounts.keyring.principal("er_token") is None


def test_a_join_token_works_once_and_not_after_it_expires(accounts: Accounts) -> None:
    token, _ = accounts.create_join_token("pop", "pop-1", 60)
    entry, secret = accounts.join(token)
    assert entry.scopes == ["node"] and accounts.keyring.node(secret) is not None
    assert status(accounts.join, token) == 401
    expired, _ = accounts.create_join_token("pop", "pop-2", 1e-9)
    assert status(accounts.join, expired) == 401


def test_removing_a_tenant_revokes_its_keys_and_needs_it_empty(accounts: Accounts) -> None:
    accounts.create_tenant("acme")
    _, secret = accounts.create_key("acme", ["admin"])
    accounts.registry.deploy("acme.fn", FunctionConfig(), "a" * 64, 1)
    assert status(accounts.delete_tenant, "acme") == 409
    accounts.registry.delete("acme.fn")
    revoked = accounts.delete_tenant("acme")
    assert [e.revoked for e in revoked] == [True]
    assert accounts.keyring.principal(secret) is None
    assert status(accounts.create_key, "acme", ["invoke"]) == 404


def test_reserved_and_duplicate_tenants_are_refused(accounts: Accounts) -> None:
    assert status(accounts.create_tenant, "default") == 409
    assert status(accounts.create_tenant, "system") == 409
    accounts.create_tenant("acme")
    assert status(accounts.create_tenant, "acme") == 409
    assert status(accounts.create_tenant, "Bad Name") == 400


def test_a_reloaded_store_knows_its_keys(tmp_path: Path) -> None:
    first = Accounts(SqliteRegistry(tmp_path / "r.db"), b"k" * 32)
    _, secret = first.create_key("default", ["read"])
    again = Accounts(SqliteRegistry(tmp_path / "r.db"), b"k" * 32)
    assert again.keyring.principal(secret) is not None
