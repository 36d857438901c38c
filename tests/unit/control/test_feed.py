"""The control plane's change feed over HTTP: fresh nodes, exact paging with keys,
and pages read off the event loop."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from edgerun.control.accounts import Accounts
from edgerun.control.app import ControlApp
from edgerun.control.bundles import BundleStore
from edgerun.control.registry import SqliteRegistry
from edgerun.control.secrets import SecretBox, SecretStore
from edgerun.models import FunctionConfig

ADMIN = "er_feed-test-admin-secret"


@pytest.fixture
def app(tmp_path: Path) -> ControlApp:
    registry = SqliteRegistry(tmp_path / "registry.db")
    accounts = Accounts(registry, b"k" * 32)
    accounts.ensure_bootstrap_admin(ADMIN)
    return ControlApp(
        registry,
        BundleStore(tmp_path / "bundles"),
        accounts,
        SecretStore(tmp_path / "secrets.db", SecretBox(b"m" * 32)),
    )


@pytest.fixture
async def api(app: ControlApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app.asgi)
    headers = {"authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://c", headers=headers) as c:
        yield c


def deploy(app: ControlApp, name: str) -> None:
    app.registry.deploy(name, FunctionConfig(), "a" * 64, 1)


async def feed(api: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    resp = await api.get("/v1/changes", params=params)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


@pytest.mark.anyio
async def test_a_fresh_node_is_sent_no_deleted_function_nor_revoked_key(
    app: ControlApp, api: httpx.AsyncClient
) -> None:
    deploy(app, "kept")
    deploy(app, "gone")
    live, _ = app.accounts.create_key("default", ["invoke"])
    dead, _ = app.accounts.create_key("default", ["invoke"])
    since = app.registry.revision()
    app.registry.delete("gone")
    app.accounts.revoke(dead.id)

    fresh = await feed(api, since=0, fresh="true")
    assert [f["name"] for f in fresh["functions"]] == ["kept"]
    assert dead.id not in [k["id"] for k in fresh["keys"]]
    assert live.id in [k["id"] for k in fresh["keys"]]
    assert fresh["revision"] == app.registry.revision()

    full = await feed(api, since=0)  # a node that holds something needs them
    assert [(f["name"], f["deleted"]) for f in full["functions"]] == [
        ("kept", False),
        ("gone", True),
    ]
    assert {"id": dead.id, "revoked": True}.items() <= next(
        k for k in full["keys"] if k["id"] == dead.id
    ).items()
    later = await feed(api, since=since, fresh="true")  # past 0, fresh means nothing
    assert [(f["name"], f["deleted"]) for f in later["functions"]] == [("gone", True)]
    assert [(k["id"], k["revoked"]) for k in later["keys"]] == [(dead.id, True)]


@pytest.mark.anyio
async def test_paging_functions_and_keys_reaches_the_registry(
    app: ControlApp, api: httpx.AsyncClient
) -> None:
    """Pages of 3 over functions and keys interleaved, changing between pages:
    the node's copy ends equal to the registry's live functions and keys."""
    app.feed_page = 3
    keys = []
    for i in range(8):
        deploy(app, f"f{i}")
        keys.append(app.accounts.create_key("default", ["invoke"])[0])
    app.registry.delete("f2")
    app.accounts.revoke(keys[1].id)
    functions: dict[str, dict[str, Any]] = {}
    held: dict[str, dict[str, Any]] = {}
    since, pages = 0, 0
    while True:
        page = await feed(api, since=since, fresh=str(since == 0).lower())
        if pages == 1:  # the registry moves on while the node catches up
            app.registry.delete("f0")
            app.accounts.revoke(keys[0].id)
            deploy(app, "f9")
        for f in page["functions"]:
            if f["deleted"]:
                functions.pop(f["name"], None)
            else:
                functions[f["name"]] = f
        for k in page["keys"]:
            held[k["id"]] = k
        pages += 1
        if page["revision"] == since:
            break
        since = page["revision"]
    assert pages > 4
    live = {r.name: r.revision for r in app.registry.list_functions(limit=1000)}
    assert {n: f["revision"] for n, f in functions.items()} == live
    known = {k.id: k.revoked for k in app.accounts.keyring.entries()}
    assert {i: k["revoked"] for i, k in held.items() if not k["revoked"]} == {
        i: False for i, revoked in known.items() if not revoked
    }
    assert held[keys[0].id]["revoked"] is True  # revoked after it was sent: sent again


@pytest.mark.anyio
async def test_health_answers_while_a_feed_page_is_read(
    app: ControlApp, api: httpx.AsyncClient
) -> None:
    deploy(app, "f")
    reading, release = threading.Event(), threading.Event()
    changes = app.registry.changes

    def slow_changes(*args: Any, **kwargs: Any) -> Any:
        reading.set()
        release.wait(5)  # a slow page; on the event loop it would stall everything
        return changes(*args, **kwargs)

    app.registry.changes = slow_changes  # type: ignore[method-assign]
    done: dict[str, float] = {}

    async def poll() -> None:
        await feed(api, since=0)
        done["feed"] = time.monotonic()

    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        await anyio.to_thread.run_sync(reading.wait, 5)
        resp = await api.get("/v1/health")
        done["health"] = time.monotonic()
        release.set()
    assert resp.status_code == 200
    assert done["health"] < done["feed"]


@pytest.mark.anyio
async def test_a_change_during_the_read_ends_the_long_poll_at_once(
    app: ControlApp, api: httpx.AsyncClient
) -> None:
    """The long-poll must not sleep through a deploy made while its page was read."""
    deploy(app, "f")
    head = app.registry.revision()
    reading, release = threading.Event(), threading.Event()
    changes = app.registry.changes
    calls = []

    def racing_changes(*args: Any, **kwargs: Any) -> Any:
        answer = changes(*args, **kwargs)  # the snapshot is taken first ...
        calls.append(answer)
        if len(calls) == 1:
            reading.set()
            release.wait(5)  # ... and a deploy lands before the answer is back
        return answer

    app.registry.changes = racing_changes  # type: ignore[method-assign]
    result: dict[str, Any] = {}

    async def poll() -> None:
        started = time.monotonic()
        result["body"] = await feed(api, since=head, wait=20)
        result["took"] = time.monotonic() - started

    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        await anyio.to_thread.run_sync(reading.wait, 5)
        deploy(app, "g")
        app._notify()
        release.set()
    assert [f["name"] for f in result["body"]["functions"]] == ["g"]
    assert result["took"] < 5


@pytest.mark.anyio
async def test_every_page_says_where_the_registry_is(
    app: ControlApp, api: httpx.AsyncClient
) -> None:
    app.feed_page = 2
    for i in range(5):
        deploy(app, f"f{i}")
    head = app.registry.revision()

    first = await feed(api, since=0)
    last = first
    while last["revision"] < last["head"]:
        last = await feed(api, since=last["revision"])

    assert first["revision"] < first["head"] == head
    assert last["revision"] == last["head"] == head
