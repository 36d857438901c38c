"""The keyring every node verifies callers against, fed from the change feed."""

from __future__ import annotations

import pytest

from edgerun.auth import KeyEntry, Keyring, digest, new_key_id, new_secret
from edgerun.errors import ApiError

HASH_KEY = b"h" * 32


def entry(secret: str, *, scopes: list[str] | None = None, revoked: bool = False) -> KeyEntry:
    return KeyEntry(
        id="EK1",
        tenant="acme",
        scopes=scopes or ["invoke"],
        digest=digest(HASH_KEY, secret),
        revoked=revoked,
        rate_per_s=5.0,
    )


def test_a_live_key_authenticates_with_its_scopes_and_limits() -> None:
    ring = Keyring(HASH_KEY)
    ring.apply([entry("ers_a")])
    p = ring.authenticate("Bearer ers_a")
    assert p is not None and p.tenant == "acme" and p.rate_per_s == 5.0


def test_no_header_is_anonymous_and_anything_else_unverified_is_401() -> None:
    ring = Keyring(HASH_KEY)
    ring.apply([entry("ers_a")])
    assert ring.authenticate(None) is None
    for header in ("Bearer ers_b", "Basic ers_a", "Bearer ", "Bearer " + "x" * 300):
        with pytest.raises(ApiError) as exc:
            ring.authenticate(header)
        assert exc.value.status == 401, header


def test_revoking_a_key_removes_it() -> None:
    ring = Keyring(HASH_KEY)
    ring.apply([entry("ers_a")])
    ring.apply([entry("ers_a", revoked=True)])
    assert ring.principal("ers_a") is None
    assert len(ring) == 0


def test_a_rotated_key_record_drops_its_old_digest() -> None:
    ring = Keyring(HASH_KEY)
    ring.apply([entry("ers_old")])
    ring.apply([entry("ers_new")])
    assert ring.principal("ers_old") is None
    assert ring.principal("ers_new") is not None


def test_digests_depend_on_the_clusters_hash_key() -> None:
    ring = Keyring(b"x" * 32)
    ring.apply([entry("ers_a")])
    assert ring.principal("ers_a") is None


def test_only_node_credentials_count_as_nodes() -> None:
    ring = Keyring(HASH_KEY)
    ring.apply([entry("ers_user"), KeyEntry(id="EK2", tenant="system", scopes=["node"],
                                            digest=digest(HASH_KEY, "ers_node"))])  # fmt: skip
    assert ring.node("ers_node") is not None
    assert ring.node("ers_user") is None
    assert ring.node(None) is None


def test_new_ids_and_secrets_are_distinct_and_shaped() -> None:
    ids = {new_key_id() for _ in range(100)}
    secrets = {new_secret() for _ in range(100)}
    assert len(ids) == len(secrets) == 100
    assert all(i.startswith("EK") and len(i) == 20 for i in ids)
    assert all(s.startswith("ers_") and len(s) > 40 for s in secrets)
