"""The node's status listing: a page of what a key may read, and nothing else."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from edgerun.auth import Keyring, Principal
from edgerun.auth.scopes import parse_scope
from edgerun.models import FunctionConfig, FunctionRecord
from edgerun.node.admin import _readable_names
from edgerun.node.catalog import Catalog


def record(name: str) -> FunctionRecord:
    return FunctionRecord(
        name=name, config=FunctionConfig(), versions={}, aliases={}, created_at=0.0,
        updated_at=0.0, revision=1,
    )  # fmt: skip


def node_with(tmp_path: Path, names: list[str]) -> Any:
    catalog = Catalog(tmp_path / "registry.db", Keyring(b"k" * 32))
    catalog.apply(1, [record(n) for n in names])
    return SimpleNamespace(catalog=catalog)


def key(tenant: str, *scopes: str) -> Principal:
    return Principal("EK1", tenant, tuple(parse_scope(s, node=True) for s in scopes))


def pages(node: Any, principal: Principal, limit: int) -> list[list[str]]:
    out, after = [], ""
    while True:
        records, broken, after_next = _readable_names(node, principal, after, limit)
        assert broken == []
        out.append([r.name for r in records])
        if after_next is None:
            return out
        after = after_next


def test_pages_of_a_narrow_key_hold_and_point_only_at_names_it_may_read(tmp_path: Path) -> None:
    others = [f"acme.api-{i:05d}" for i in range(5000)] + [f"zeta.x{i}" for i in range(50)]
    mine = ["api-a", "api-b", "api-c", "web-a"]
    node = node_with(tmp_path, [*others, *mine, *(f"secret-{i:05d}" for i in range(4000))])

    seen = pages(node, key("default", "invoke:api-*", "read:api-*"), limit=2)

    assert seen == [["api-a", "api-b"], ["api-c"]]


def test_a_cursor_between_pages_is_a_name_the_key_may_read(tmp_path: Path) -> None:
    node = node_with(tmp_path, [*(f"hidden-{i:05d}" for i in range(5000)), "read-a", "read-b"])
    principal = key("default", "read:read-*")

    records, _broken, after = _readable_names(node, principal, "", 1)

    assert [r.name for r in records] == ["read-a"] and after == "read-a"


def test_a_tenant_key_never_sees_another_tenants_names(tmp_path: Path) -> None:
    node = node_with(tmp_path, ["acme.a", "acme.b", "acmf.c", "beta.a", "plain"])

    seen = pages(node, key("acme", "admin"), limit=1)

    assert seen == [["acme.a"], ["acme.b"]]


def test_the_observer_pages_through_every_function(tmp_path: Path) -> None:
    names = [f"f{i:04d}" for i in range(2500)] + ["acme.a"]
    node = node_with(tmp_path, names)

    seen = pages(node, key("default", "observe"), limit=1000)

    assert [len(p) for p in seen] == [1000, 1000, 501]
    assert [n for p in seen for n in p] == sorted(names)
