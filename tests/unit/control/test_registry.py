"""SqliteRegistry: functions, versions, aliases, the revision counter and the change feed."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerun.control import registry as registry_module
from edgerun.control.registry import SqliteRegistry, retention
from edgerun.errors import ApiError
from edgerun.models import FunctionConfig, FunctionRecord, Version, version_id

BUNDLE_A = "a" * 64
BUNDLE_B = "b" * 64
BUNDLE_C = "c" * 64
HANDLER = FunctionConfig().handler
V_A = version_id(BUNDLE_A, HANDLER)
V_B = version_id(BUNDLE_B, HANDLER)
V_C = version_id(BUNDLE_C, HANDLER)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "registry.db"


@pytest.fixture
def registry(db_path: Path) -> Iterator[SqliteRegistry]:
    reg = SqliteRegistry(db_path)
    yield reg
    reg.close()


def deploy(reg: SqliteRegistry, name: str = "hello", bundle: str = BUNDLE_A, **config: object):
    return reg.deploy(name, FunctionConfig(**config), bundle, 100)  # type: ignore[arg-type]


# --- deploy -------------------------------------------------------------------


def test_deploy_creates_function_with_one_version_and_latest_alias(registry):
    record, created = deploy(registry, handler="app.main")

    vid = version_id(BUNDLE_A, "app.main")
    assert created is True
    assert record.name == "hello"
    assert record.deleted is False
    assert list(record.versions) == [vid]
    assert record.versions[vid].handler == "app.main"
    assert record.versions[vid].bundle_sha256 == BUNDLE_A
    assert record.versions[vid].size == 100
    assert record.aliases == {"latest": vid}
    assert registry.get("hello") == record


def test_deploy_of_existing_function_is_not_reported_as_created(registry):
    deploy(registry)

    _, created = deploy(registry, bundle=BUNDLE_B)

    assert created is False


def test_redeploying_the_same_bundle_does_not_duplicate_the_version(registry):
    deploy(registry)

    record, _ = deploy(registry)

    assert list(record.versions) == [V_A]
    assert record.aliases == {"latest": V_A}


def test_redeploying_the_same_bundle_with_another_handler_is_a_new_version(registry):
    first, _ = deploy(registry, handler="app.one")
    v1 = first.aliases["latest"]
    registry.set_alias("hello", "prod", v1)

    record, _ = deploy(registry, handler="app.two")

    v2 = record.aliases["latest"]
    assert v2 != v1
    assert record.versions[v1].handler == "app.one"
    assert record.versions[v2].handler == "app.two"
    assert record.versions[v1].bundle_sha256 == record.versions[v2].bundle_sha256 == BUNDLE_A
    assert record.aliases["prod"] == v1


def test_redeploying_the_same_bundle_and_handler_moves_latest_back_to_that_version(registry):
    one, _ = deploy(registry, handler="app.one")
    deploy(registry, handler="app.two")

    record, _ = deploy(registry, handler="app.one")

    assert len(record.versions) == 2
    assert record.aliases["latest"] == one.aliases["latest"]


def test_a_registry_from_before_version_ids_keeps_its_versions(db_path):
    import sqlite3

    db = sqlite3.connect(db_path)
    db.executescript(
        "CREATE TABLE versions (function TEXT NOT NULL, sha256 TEXT NOT NULL,"
        " handler TEXT NOT NULL, size BIGINT NOT NULL,"
        " created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (function, sha256));"
        f"INSERT INTO versions VALUES ('hello', '{BUNDLE_A}', 'app.old', 1, 1.0);"
    )
    db.close()
    reg = SqliteRegistry(db_path)
    try:
        record, _ = deploy(reg, handler="app.old")
    finally:
        reg.close()

    assert list(record.versions) == [BUNDLE_A]
    assert record.versions[BUNDLE_A].bundle_sha256 == BUNDLE_A


def test_deploying_a_new_bundle_adds_a_version_and_moves_latest(registry):
    deploy(registry)

    record, _ = deploy(registry, bundle=BUNDLE_B)

    assert set(record.versions) == {V_A, V_B}
    assert record.aliases["latest"] == V_B


def test_deploy_stores_the_config_on_the_function(registry):
    record, _ = deploy(registry, memory_mb=512, env={"MODE": "prod"})

    assert record.config.memory_mb == 512
    assert registry.get("hello").config.env == {"MODE": "prod"}


@pytest.mark.parametrize("name", ["Hello", "-hello", "hello-", "he_llo", "", "a" * 64])
def test_deploy_with_invalid_name_is_a_400(registry, name):
    with pytest.raises(ApiError) as exc:
        deploy(registry, name=name)

    assert exc.value.status == 400
    assert registry.revision() == 0


# --- revision -----------------------------------------------------------------


def test_new_registry_starts_at_revision_zero(registry):
    assert registry.revision() == 0


def test_revision_increases_with_every_mutation(registry):
    seen = [registry.revision()]
    seen.append(deploy(registry)[0].revision)
    seen.append(deploy(registry, bundle=BUNDLE_B)[0].revision)
    seen.append(registry.set_alias("hello", "prod", V_A).revision)
    seen.append(registry.delete_alias("hello", "prod").revision)
    seen.append(registry.delete("hello").revision)

    assert seen == sorted(set(seen))
    assert registry.revision() == seen[-1]


def test_mutation_stamps_the_current_revision_on_the_function(registry):
    record, _ = deploy(registry)

    assert record.revision == registry.revision()


def test_failed_mutation_does_not_bump_the_revision(registry):
    deploy(registry)
    before = registry.revision()

    with pytest.raises(ApiError):
        registry.set_alias("hello", "prod", V_C)

    assert registry.revision() == before


# --- change feed --------------------------------------------------------------


def test_changes_returns_only_functions_changed_after_since(registry):
    deploy(registry, name="one")
    since = registry.revision()
    deploy(registry, name="two")
    deploy(registry, name="three")

    head, records = registry.changes(since)

    assert [r.name for r in records] == ["two", "three"]
    assert head == registry.revision()


def test_changes_since_head_is_empty(registry):
    deploy(registry)
    head = registry.revision()

    assert registry.changes(head) == (head, [])


def test_changes_reports_a_function_once_at_its_latest_revision(registry):
    deploy(registry, name="one")
    deploy(registry, name="two")
    deploy(registry, name="one", bundle=BUNDLE_B)

    _, records = registry.changes(0)

    assert [r.name for r in records] == ["two", "one"]


def test_changes_includes_a_deleted_function_as_a_tombstone(registry):
    deploy(registry)
    since = registry.revision()
    registry.delete("hello")

    _, records = registry.changes(since)

    assert len(records) == 1
    tombstone = records[0]
    assert tombstone.name == "hello"
    assert tombstone.deleted is True
    assert tombstone.versions == {}
    assert tombstone.aliases == {}


def test_changes_with_limit_returns_the_revision_of_the_last_record_included(registry):
    for name in ("one", "two", "three"):
        deploy(registry, name=name)

    head, records = registry.changes(0, limit=2)

    assert [r.name for r in records] == ["one", "two"]
    assert head == records[-1].revision
    _, rest = registry.changes(head, limit=2)
    assert [r.name for r in rest] == ["three"]


# --- reads --------------------------------------------------------------------


def test_get_unknown_function_returns_none(registry):
    assert registry.get("nope") is None


def test_get_deleted_function_returns_none(registry):
    deploy(registry)
    registry.delete("hello")

    assert registry.get("hello") is None


def test_list_functions_is_sorted_by_name(registry):
    for name in ("charlie", "alpha", "bravo"):
        deploy(registry, name=name)

    assert [r.name for r in registry.list_functions()] == ["alpha", "bravo", "charlie"]


def test_list_functions_pages_with_after_and_limit(registry):
    for name in ("a1", "a2", "a3", "a4", "a5"):
        deploy(registry, name=name)

    first = registry.list_functions(limit=2)
    second = registry.list_functions(after=first[-1].name, limit=2)
    third = registry.list_functions(after=second[-1].name, limit=2)

    assert [r.name for r in first] == ["a1", "a2"]
    assert [r.name for r in second] == ["a3", "a4"]
    assert [r.name for r in third] == ["a5"]


def test_list_functions_skips_deleted_functions(registry):
    deploy(registry, name="keep")
    deploy(registry, name="gone")
    registry.delete("gone")

    assert [r.name for r in registry.list_functions()] == ["keep"]


# --- aliases ------------------------------------------------------------------


def test_set_alias_points_the_alias_at_a_version(registry):
    deploy(registry)
    deploy(registry, bundle=BUNDLE_B)

    record = registry.set_alias("hello", "prod", V_A)

    assert record.aliases == {"latest": V_B, "prod": V_A}


def test_set_alias_to_an_unknown_version_is_a_404(registry):
    deploy(registry)

    with pytest.raises(ApiError) as exc:
        registry.set_alias("hello", "prod", V_C)

    assert exc.value.status == 404


def test_set_alias_on_an_unknown_function_is_a_404(registry):
    with pytest.raises(ApiError) as exc:
        registry.set_alias("nope", "prod", V_A)

    assert exc.value.status == 404


def test_set_alias_latest_is_a_400(registry):
    deploy(registry)

    with pytest.raises(ApiError) as exc:
        registry.set_alias("hello", "latest", V_A)

    assert exc.value.status == 400


def test_set_alias_with_an_invalid_alias_name_is_a_400(registry):
    deploy(registry)

    with pytest.raises(ApiError) as exc:
        registry.set_alias("hello", "Prod", V_A)

    assert exc.value.status == 400


def test_delete_alias_removes_it(registry):
    deploy(registry)
    registry.set_alias("hello", "prod", V_A)

    record = registry.delete_alias("hello", "prod")

    assert record.aliases == {"latest": V_A}


def test_delete_alias_latest_is_a_400(registry):
    deploy(registry)

    with pytest.raises(ApiError) as exc:
        registry.delete_alias("hello", "latest")

    assert exc.value.status == 400


def test_delete_unknown_alias_is_a_404(registry):
    deploy(registry)

    with pytest.raises(ApiError) as exc:
        registry.delete_alias("hello", "prod")

    assert exc.value.status == 404


# --- delete and revive --------------------------------------------------------


def test_delete_unknown_function_is_a_404(registry):
    with pytest.raises(ApiError) as exc:
        registry.delete("nope")

    assert exc.value.status == 404


def test_deleting_twice_is_a_404(registry):
    deploy(registry)
    registry.delete("hello")

    with pytest.raises(ApiError) as exc:
        registry.delete("hello")

    assert exc.value.status == 404


def test_redeploy_after_delete_revives_the_function_with_only_the_new_version(registry):
    deploy(registry)
    registry.delete("hello")

    record, created = deploy(registry, bundle=BUNDLE_B)

    assert created is True
    assert record.deleted is False
    assert list(record.versions) == [V_B]
    assert record.aliases == {"latest": V_B}
    assert registry.get("hello") == record


# --- persistence --------------------------------------------------------------


def test_data_persists_across_reopening_the_database_file(db_path):
    reg = SqliteRegistry(db_path)
    deploy(reg)
    reg.set_alias("hello", "prod", V_A)
    record, revision = reg.get("hello"), reg.revision()
    reg.close()

    reopened = SqliteRegistry(db_path)
    try:
        assert reopened.get("hello") == record
        assert reopened.revision() == revision
    finally:
        reopened.close()


# --- retention and collection -----------------------------------------------------


def test_collect_keeps_the_newest_n_and_aliased_versions(registry):
    bundles = [c * 64 for c in "0123456"]
    ids = [deploy(registry, bundle=b)[0].aliases["latest"] for b in bundles]
    registry.set_alias("hello", "prod", ids[0])

    why = retention(registry.get("hello"), 3)
    assert why[ids[0]] == ["alias prod"]
    assert why[ids[6]] == ["alias latest", "newest 3"]
    assert why[ids[4]] == ["newest 3"]
    assert why[ids[1]] == []

    revision = registry.revision()
    removed, unused = registry.collect(3)

    assert sorted(removed) == sorted(("hello", vid) for vid in ids[1:4])
    assert unused == set(bundles[1:4])
    record = registry.get("hello")
    assert set(record.versions) == {ids[0], *ids[4:]}
    assert record.revision > revision, "nodes learn of the collection through the feed"
    assert registry.collect(3) == ([], set())


def test_a_bundle_another_function_uses_is_not_unreferenced(registry):
    deploy(registry, name="one", bundle=BUNDLE_A)
    deploy(registry, name="two", bundle=BUNDLE_A)

    registry.delete("one")

    assert registry.unreferenced({BUNDLE_A, BUNDLE_B}) == {BUNDLE_B}


# --- the feed at scale: fresh nodes, exact paging, bulk loading ------------------


def test_a_fresh_node_gets_no_tombstones_but_a_node_past_zero_does(registry):
    deploy(registry, name="kept")
    deploy(registry, name="gone")
    since = registry.revision()
    registry.delete("gone")

    head, fresh = registry.changes(0, live_only=True)
    assert [r.name for r in fresh] == ["kept"]
    assert head == registry.revision()  # past the tombstone: nothing to redo
    _, everything = registry.changes(0)
    assert [(r.name, r.deleted) for r in everything] == [("kept", False), ("gone", True)]
    _, later = registry.changes(since, live_only=False)
    assert [(r.name, r.deleted) for r in later] == [("gone", True)]


def test_a_full_fresh_page_stops_at_its_last_live_record(registry):
    for name in ("one", "two", "three"):
        deploy(registry, name=name)
    registry.delete("one")
    deploy(registry, name="four")

    head, page = registry.changes(0, limit=2, live_only=True)

    assert [r.name for r in page] == ["two", "three"]
    assert head == page[-1].revision  # not the head: "four" is still to come
    _, rest = registry.changes(head)
    assert [r.name for r in rest] == ["one", "four"]


_names = st.sampled_from(["a", "b", "c", "d", "e", "f"])
_ops = st.lists(
    st.tuples(st.sampled_from(["deploy", "delete", "alias", "unalias", "touch"]), _names,
              st.sampled_from([BUNDLE_A, BUNDLE_B, BUNDLE_C])),
    max_size=25,
)  # fmt: skip


def _run(reg: SqliteRegistry, ops: list[tuple[str, str, str]]) -> None:
    """Apply ``ops``, skipping those that do not apply (a 404 is not the point here)."""
    for op, name, bundle in ops:
        try:
            if op == "deploy":
                deploy(reg, name=name, bundle=bundle)
            elif op == "delete":
                reg.delete(name)
            elif op == "alias":
                reg.set_alias(name, "prod", version_id(bundle, HANDLER))
            elif op == "unalias":
                reg.delete_alias(name, "prod")
            else:
                reg.touch(name)
        except ApiError:
            pass


@settings(max_examples=60, deadline=None)
@given(
    before=_ops,
    during=st.lists(_ops, max_size=4),
    limit=st.integers(1, 4),
)
def test_paging_from_zero_ends_at_the_live_registry(before, during, limit):
    """A node paging from 0 (fresh on its first page) while the registry keeps
    changing ends with exactly the live functions, each as the registry has it."""
    with tempfile.TemporaryDirectory() as tmp:
        reg = SqliteRegistry(Path(tmp) / "registry.db")
        try:
            _run(reg, before)
            node: dict[str, FunctionRecord] = {}
            since, pages = 0, 0
            static_live: list[str] = []
            while True:
                head, page = reg.changes(since, limit, live_only=since == 0)
                assert all(r.revision > since for r in page)
                assert head >= since
                if pages < len(during):
                    _run(reg, during[pages])
                elif not during:
                    static_live += [r.name for r in page if not r.deleted]
                for r in page:
                    if r.deleted:
                        node.pop(r.name, None)
                    else:
                        node[r.name] = r
                since, pages = head, pages + 1
                if len(page) < limit and pages > len(during):
                    break
            live = {r.name: r for r in reg.list_functions(limit=1000)}
            assert node == live
            if not during:  # nothing changed meanwhile: each live function sent once
                assert sorted(static_live) == sorted(live)
        finally:
            reg.close()


def _per_record(reg: SqliteRegistry, name: str) -> FunctionRecord:
    """A record as the registry read it before bulk loading: queries of its own."""
    with reg.read() as cur:
        name, config, created, updated, revision, deleted = cur.execute(
            "SELECT name, config, created_at, updated_at, revision, deleted FROM functions"
            " WHERE name = ?",
            (name,),
        ).fetchone()
        versions = {
            vid: Version(sha256=vid, bundle_sha256=b, handler=h, size=s, created_at=c)
            for vid, b, h, s, c in cur.execute(
                "SELECT sha256, bundle_sha256, handler, size, created_at FROM versions"
                " WHERE function = ? ORDER BY created_at, sha256",
                (name,),
            ).fetchall()
        }
        aliases = dict(
            cur.execute(
                "SELECT alias, sha256 FROM aliases WHERE function = ? ORDER BY alias", (name,)
            ).fetchall()
        )
    return FunctionRecord(
        name=name, config=msgspec.json.decode(config, type=FunctionConfig), versions=versions,
        aliases=aliases, created_at=created, updated_at=updated, revision=revision,
        deleted=bool(deleted),
    )  # fmt: skip


def test_bulk_loading_reads_the_records_per_record_queries_read(registry, monkeypatch):
    monkeypatch.setattr(registry_module, "IN_CHUNK", 2)  # several chunks, one short
    clock = iter(float(t // 2) for t in range(1000, 0, -1))  # going back, in ties
    monkeypatch.setattr(registry_module.time, "time", lambda: next(clock))
    names = ["e", "b", "d", "a", "c"]
    for i, name in enumerate(names):
        for bundle in (BUNDLE_C, BUNDLE_A, BUNDLE_B)[: 1 + i % 3]:
            deploy(registry, name=name, bundle=bundle)
        if i % 2:
            registry.set_alias(name, "zeta", V_C)
            registry.set_alias(name, "alpha", V_C)
    registry.delete("e")

    _, feed = registry.changes(0)
    listed = registry.list_functions()

    assert len(feed) == 5 and len(listed) == 4
    assert list(registry.get("d").versions) == [V_B, V_A, V_C]  # by time, ties by id
    for record in feed + listed:
        expected = _per_record(registry, record.name)
        assert record == expected
        assert list(record.versions) == list(expected.versions)  # order, not just content
        assert list(record.aliases) == list(expected.aliases)
    assert list(registry.get("b").aliases) == ["alpha", "latest", "zeta"]


def test_a_later_pass_collects_what_changed_since_the_last(registry):
    for bundle in (BUNDLE_A, BUNDLE_B, BUNDLE_C):
        deploy(registry, bundle=bundle)
    registry.set_alias("hello", "prod", V_A)
    assert registry.collect(1)[0] == [("hello", V_B)]

    registry.delete_alias("hello", "prod")  # V_A is no longer kept by anything
    assert registry.collect(1)[0] == [("hello", V_A)]
    assert registry.collect(1)[0] == []


def test_a_pass_with_another_retain_looks_at_every_function(registry):
    for bundle in (BUNDLE_A, BUNDLE_B, BUNDLE_C):
        deploy(registry, bundle=bundle)
    assert registry.collect(3)[0] == []

    assert registry.collect(1)[0] == [("hello", V_A), ("hello", V_B)]
