"""The node's registry copy on disk: O(changes) writes, restarts, migration."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from pathlib import Path

import anyio
import httpx
import msgspec
import pytest

from edgerun.auth import KeyEntry, Keyring
from edgerun.models import FunctionConfig, FunctionRecord, Version
from edgerun.node.catalog import Catalog, follow


def record(
    name: str, revision: int = 1, deleted: bool = False, bundle: str = "b" * 64
) -> FunctionRecord:
    v = Version(
        sha256="a" * 64, handler="main.handler", size=1, created_at=0.0, bundle_sha256=bundle
    )
    return FunctionRecord(
        name=name, config=FunctionConfig(), versions={v.sha256: v},
        aliases={"latest": v.sha256}, created_at=0.0, updated_at=0.0, revision=revision,
        deleted=deleted,
    )  # fmt: skip


def key(key_id: str) -> KeyEntry:
    return KeyEntry(id=key_id, tenant="default", scopes=["invoke"], digest="d" * 64, name="k")


def open_catalog(path: Path, **kw: int) -> Catalog:
    return Catalog(path / "registry.db", Keyring(b"k" * 32), **kw)


def names(catalog: Catalog) -> set[str]:
    return set(catalog.names(limit=1000))


def test_functions_keys_and_revision_survive_a_restart(tmp_path: Path) -> None:
    first = open_catalog(tmp_path)
    first.apply(7, [record("a"), record("b")], [key("k1")])
    first.apply(8, [record("b", deleted=True)])
    first.close()

    again = open_catalog(tmp_path)
    assert names(again) == {"a"} and again.get("b") is None
    assert again.get("a") == record("a")
    assert again.revision == 8
    assert again.keyring.get("k1") is not None


def test_one_change_writes_one_row_however_many_functions(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path)
    catalog.apply(1, [record(f"f{i}") for i in range(2000)])
    before = catalog._db.total_changes
    catalog.apply(2, [record("f7", revision=2)])
    assert catalog._db.total_changes - before == 2  # the record and the revision (same code)


def test_a_json_copy_of_an_earlier_release_is_migrated_once(tmp_path: Path) -> None:
    snapshot = {"revision": 5, "functions": {"old": msgspec.to_builtins(record("old"))}}
    (tmp_path / "registry.json").write_bytes(msgspec.json.encode(snapshot))

    catalog = open_catalog(tmp_path)
    assert names(catalog) == {"old"} and catalog.revision == 5
    assert catalog.referenced({"b" * 64}) == {"b" * 64}
    assert not (tmp_path / "registry.json").exists()


@pytest.mark.anyio
async def test_an_unreadable_row_makes_the_node_follow_the_feed_from_zero(tmp_path: Path) -> None:
    first = open_catalog(tmp_path)
    first.apply(9, [record("a"), record("b")])
    first.close()
    with sqlite3.connect(tmp_path / "registry.db") as db:
        db.execute("UPDATE functions SET record = x'00ff' WHERE name = 'b'")

    again = open_catalog(tmp_path)
    assert again.revision == 9 and again.get("a") is not None
    generation = again.generation
    assert again.get("b") is None
    assert again.revision == 0 and again.generation > generation  # so every record comes again
    await again.repair()
    again.close()
    third = open_catalog(tmp_path)
    assert third.revision == 0 and names(third) == {"a"}  # and after a restart too


@pytest.mark.anyio
async def test_a_batch_in_flight_when_a_record_turns_out_unreadable_keeps_revision_zero(
    tmp_path: Path,
) -> None:
    catalog = open_catalog(tmp_path)
    catalog.apply(3, [record("a")])
    catalog._lock.acquire()  # the commit waits in its thread
    applying = asyncio.ensure_future(catalog.apply_async(4, [record("b", revision=4)]))
    await asyncio.sleep(0)
    catalog.unreadable(["a"])
    catalog._lock.release()
    await applying

    assert catalog.revision == 0


def test_the_file_is_for_the_node_only(tmp_path: Path) -> None:
    open_catalog(tmp_path)
    assert (tmp_path / "registry.db").stat().st_mode & 0o077 == 0


def test_a_restart_reads_no_record_until_asked(tmp_path: Path) -> None:
    first = open_catalog(tmp_path)
    first.apply(3, [record(f"f{i}") for i in range(50)])
    first.close()

    again = open_catalog(tmp_path)
    assert len(again._cache) == 0 and again.count() == 50
    assert again.get("f7") == record("f7")


def test_memory_holds_only_the_most_recently_used_records(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path, cache_records=3)
    catalog.apply(1, [record(f"f{i}") for i in range(10)])
    for i in range(10):
        assert catalog.get(f"f{i}") == record(f"f{i}")
    catalog.get("f7")
    assert list(catalog._cache) == ["f8", "f9", "f7"]


def test_a_change_replaces_the_cached_record(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path)
    catalog.apply(1, [record("a", bundle="1" * 64)])
    assert catalog.get("a") is not None
    catalog.apply(2, [record("a", revision=2, bundle="2" * 64)])
    got = catalog.get("a")
    assert got is not None and got.revision == 2
    catalog.apply(3, [record("a", revision=3, deleted=True)])
    assert catalog.get("a") is None


def test_a_bundle_is_unreferenced_once_no_function_runs_it(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path)
    x, y = "1" * 64, "2" * 64
    assert catalog.apply(1, [record("a", bundle=x), record("b", bundle=x)]) == set()
    assert catalog.apply(2, [record("a", revision=2, deleted=True)]) == set()
    assert catalog.referenced({x, y}) == {x}
    assert catalog.apply(3, [record("b", revision=3, bundle=y)]) == {x}
    assert catalog.referenced({x, y}) == {y}


@pytest.mark.anyio
async def test_applying_off_the_loop_gives_the_same_copy(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path)
    catalog.get("a")
    gone = await catalog.apply_async(4, [record("a"), record("b")], [key("k1")])
    assert gone == set() and catalog.revision == 4
    assert catalog.get("a") == record("a") and catalog.keyring.get("k1") is not None
    assert await catalog.apply_async(5, [record("a", 5, deleted=True), record("b", 5, True)]) == {
        "b" * 64
    }
    assert catalog.get("a") is None and names(catalog) == set()


def test_names_follow_one_tenant_or_all(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path)
    catalog.apply(1, [record(n) for n in ("a", "b", "t.x", "t.y", "t.z", "t0", "u.a")])
    assert catalog.names(tenant_prefix="t.", limit=2) == ["t.x", "t.y"]
    assert catalog.names(tenant_prefix="t.", after="t.y") == ["t.z"]
    assert catalog.names(tenant_prefix="") == ["a", "b", "t0"]  # the default tenant's
    assert catalog.names(after="t.z") == ["t0", "u.a"]


def test_many_records_are_read_at_once_and_unreadable_ones_named(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path)
    catalog.apply(1, [record(f"f{i:04d}") for i in range(1200)])
    with sqlite3.connect(tmp_path / "registry.db") as db:
        db.execute("UPDATE functions SET record = x'00ff' WHERE name = 'f0700'")
    wanted = [f"f{i:04d}" for i in range(0, 1200, 2)] + ["missing"]

    records, broken = catalog.read_many(wanted)

    assert [r.name for r in records] == [n for n in wanted[:-1] if n != "f0700"]
    assert broken == ["f0700"] and len(catalog._cache) == 0


def test_a_copy_from_before_the_bundle_index_is_indexed_once(tmp_path: Path) -> None:
    first = open_catalog(tmp_path)
    first.apply(2, [record("a", bundle="3" * 64)])
    first.close()
    with sqlite3.connect(tmp_path / "registry.db") as db:
        db.execute("DELETE FROM bundles")
        db.execute("DELETE FROM meta WHERE name = 'schema'")

    again = open_catalog(tmp_path)
    assert again.referenced({"3" * 64}) == {"3" * 64}


@pytest.mark.anyio
async def test_an_empty_copy_asks_for_a_snapshot_then_pages_up_to_the_head(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path)
    asked: list[dict[str, str]] = []
    answers = [
        {"revision": 5, "head": 6, "functions": [msgspec.to_builtins(record("a", 5))], "keys": []},
        {"revision": 6, "head": 6, "functions": [msgspec.to_builtins(record("b", 6))], "keys": []},
    ]
    caught_up: list[bool] = []

    def feed(request: httpx.Request) -> httpx.Response:
        asked.append(dict(request.url.params))
        if len(asked) > len(answers):
            raise httpx.ConnectError("done")
        return httpx.Response(200, json=answers[len(asked) - 1])

    applied = anyio.Event()

    async def on_change(records: list[FunctionRecord], gone: set[str]) -> None:
        caught_up.append(catalog.caught_up)
        if catalog.revision == 6:
            applied.set()

    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(feed)) as client,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(
            functools.partial(
                follow,
                catalog,
                client,
                "http://control",
                wait_s=1,
                on_change=on_change,
                batch_window_s=0,
            )
        )
        with anyio.fail_after(5):
            await applied.wait()
        tg.cancel_scope.cancel()

    assert asked[0]["fresh"] == "true" and asked[0]["since"] == "0"
    assert "fresh" not in asked[1] and asked[1]["since"] == "5"
    assert names(catalog) == {"a", "b"}
    assert caught_up == [False, True], "a page short of the head is not everything"


def test_a_copy_holding_anything_is_not_empty(tmp_path: Path) -> None:
    catalog = open_catalog(tmp_path)
    assert catalog.empty()
    catalog.apply(0, [], [key("k1")])
    assert not catalog.empty()
