"""The node's registry copy on disk: O(changes) writes, restarts, migration."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec

from edgerun.auth import KeyEntry, Keyring
from edgerun.models import FunctionConfig, FunctionRecord, Version
from edgerun.node.catalog import Catalog


def record(name: str, revision: int = 1, deleted: bool = False) -> FunctionRecord:
    v = Version(sha256="a" * 64, handler="main.handler", size=1, created_at=0.0)
    return FunctionRecord(
        name=name, config=FunctionConfig(), versions={v.sha256: v},
        aliases={"latest": v.sha256}, created_at=0.0, updated_at=0.0, revision=revision,
        deleted=deleted,
    )  # fmt: skip


def key(key_id: str) -> KeyEntry:
    return KeyEntry(id=key_id, tenant="default", scopes=["invoke"], digest="d" * 64, name="k")


def open_catalog(path: Path) -> Catalog:
    return Catalog(path / "registry.db", Keyring(b"k" * 32))


def test_functions_keys_and_revision_survive_a_restart(tmp_path: Path) -> None:
    first = open_catalog(tmp_path)
    first.apply(7, [record("a"), record("b")], [key("k1")])
    first.apply(8, [record("b", deleted=True)])
    first.close()

    again = open_catalog(tmp_path)
    assert set(again.functions) == {"a"}
    assert again.revision == 8
    assert again.keyring.get("k1") is not None


def test_one_change_writes_one_row_however_many_functions(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path)
    catalog.apply(1, [record(f"f{i}") for i in range(2000)])
    before = catalog._db.total_changes
    catalog.apply(2, [record("f7", revision=2)])
    assert catalog._db.total_changes - before == 2  # the record and the revision


def test_a_json_copy_of_an_earlier_release_is_migrated_once(tmp_path: Path) -> None:
    snapshot = {"revision": 5, "functions": {"old": msgspec.to_builtins(record("old"))}}
    (tmp_path / "registry.json").write_bytes(msgspec.json.encode(snapshot))

    catalog = open_catalog(tmp_path)
    assert set(catalog.functions) == {"old"} and catalog.revision == 5
    assert not (tmp_path / "registry.json").exists()


def test_an_unreadable_row_makes_the_node_follow_the_feed_from_zero(tmp_path: Path) -> None:
    first = open_catalog(tmp_path)
    first.apply(9, [record("a"), record("b")])
    first.close()
    with sqlite3.connect(tmp_path / "registry.db") as db:
        db.execute("UPDATE functions SET record = x'00ff' WHERE name = 'b'")

    again = open_catalog(tmp_path)
    assert again.revision == 0  # so every record comes again
    assert set(again.functions) == {"a"}


def test_the_file_is_for_the_node_only(tmp_path: Path) -> None:
    open_catalog(tmp_path)
    assert (tmp_path / "registry.db").stat().st_mode & 0o077 == 0
