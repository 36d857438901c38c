"""Every route of the control plane and of a node, called without credentials, with
another tenant's key and with a key of the wrong scope (issue 10, part 6).

The tables walked here are the ones the apps serve (``ControlApp.api_routes``,
``edgerun.node.admin.ROUTES``), and a unit test checks that nothing is served
outside them, so a new route is in this test the day it is added: if its
guard or its handler's scope check is missing, one of these calls succeeds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgerun.auth.guard import Need
from edgerun.build import build_bundle
from edgerun.client import Client
from edgerun.cluster import LocalCluster
from edgerun.control.accounts import Accounts
from edgerun.control.app import ControlApp
from edgerun.control.bundles import BundleStore
from edgerun.control.registry import SqliteRegistry
from edgerun.control.secrets import SecretBox, SecretStore
from edgerun.control.ui import UI_ROUTES
from edgerun.node import admin
from tests.conftest import FUNCTIONS
from tests.integration.conftest import deploy_folder, node_knows, wait_for

pytestmark = pytest.mark.integration

TENANT = "guarded"
FN = f"{TENANT}.fn"
INVOCATIONS = [
    ("GET", "/fn/{name}/"),
    ("POST", "/fn/{name}/"),
    ("POST", "/v1/functions/{name}/invocations"),
]
TENANT_FREE = {("POST", "/v1/bundles")}
"""Routes any deploy-capable key may use whoever else exists (bundles are content-addressed)."""
LISTINGS = {
    ("GET", "/v1/functions"),
    ("GET", "/v1/keys"),
    ("GET", "/v1/status"),
    ("GET", "/v1/nodes"),  # names, roles and URLs of live nodes only
    ("GET", "/v1/schedules"),
}
"""Routes that answer any key with what it may see (filtered), not a refusal."""


def control_routes(tmp: Path) -> list[tuple[str, str, Need]]:
    registry = SqliteRegistry(tmp / "registry.db")
    app = ControlApp(
        registry,
        BundleStore(tmp / "bundles"),
        Accounts(registry, b"k" * 32),
        SecretStore(tmp / "secrets.db", SecretBox(b"m" * 32)),
    )
    return [(r.method, r.path, r.need) for r in app.api_routes()]


@pytest.fixture(scope="module")
def world(cluster: LocalCluster, client: Client) -> Iterator[dict[str, Any]]:
    """A tenant with one key-protected function, its keys, and another tenant's admin."""
    client.create_tenant(TENANT)
    client.create_tenant("intruder")
    deployer = client.create_key(["deploy"], tenant=TENANT)["secret"]
    with Client(cluster.control_url, deployer) as own:
        sha = deploy_folder(own, FN, FUNCTIONS / "echo", handler="main.handler", auth="key")
    for node in ("pop-1", "region-1"):
        wait_for(node_knows(cluster, node, FN, sha), what=f"{node} to learn {FN}")
    record = client.get(FN)
    invoker = client.create_key(["invoke"], tenant=TENANT)
    reader = client.create_key(["read"], tenant=TENANT)
    intruder = client.create_key(["admin"], tenant="intruder")
    for node in ("pop-1", "region-1"):
        for key in (invoker, reader, intruder):
            wait_for(
                lambda node=node, key=key: (
                    httpx.get(
                        f"{cluster.url(node)}/v1/status",
                        headers={"authorization": f"Bearer {key['secret']}"},
                    ).status_code
                    == 200
                ),
                what=f"{node} to learn the test keys",
            )
    yield {
        "params": {
            "name": FN,
            "alias": "prod",
            "sha": record.versions[record.aliases["latest"]].bundle_sha256,
            "key_id": invoker["id"],
            "tenant": TENANT,
            "key": "TOKEN",
            "event_id": "ev-not-there",
        },
        "invoker": invoker["secret"],
        "reader": reader["secret"],
        "intruder": intruder["secret"],
        "bundle": build_bundle(FUNCTIONS / "echo"),
    }


def _body(method: str, path: str, world: dict[str, Any]) -> dict[str, Any]:
    """A well-formed request for each route, so the answer is the guard's, not the parser's."""
    p = world["params"]
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/v1/bundles"): {"content": world["bundle"]},
        ("PUT", "/v1/functions/{name}"): {"json": {"bundle_sha256": p["sha"]}},
        ("PUT", "/v1/functions/{name}/aliases/{alias}"): {"json": {"version": "latest"}},
        ("POST", "/v1/tenants"): {"json": {"name": "made-by-guard-test"}},
        ("POST", "/v1/keys"): {"json": {"scopes": ["admin"], "tenant": TENANT}},
        ("POST", "/v1/join-tokens"): {"json": {"role": "pop", "name": "x"}},
        ("POST", "/v1/nodes/join"): {"json": {"token": "erj_bogus"}},
        ("PUT", "/v1/functions/{name}/secrets/{key}"): {"json": {"value": "v"}},
        ("POST", "/v1/functions/{name}/secrets"): {"json": {"secrets": {"TOKEN": "v"}}},
        ("POST", "/v1/admin/prewarm"): {"json": {"function": FN}},
        ("POST", "/v1/functions/{name}/invocations"): {"json": {}},
        ("POST", "/v1/dlq/replay"): {"json": {"function": FN}},
    }
    with_function = ("/v1/logs", "/v1/placement/explain", "/v1/dlq")
    params = {"function": FN} if path in with_function else {}
    if path == "/v1/keys" and method == "GET":
        params = {"tenant": TENANT}
    return {**bodies.get((method, path), {}), "params": params}


def _call(
    url: str, method: str, path: str, world: dict[str, Any], secret: str | None
) -> httpx.Response:
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    return httpx.request(
        method,
        url + path.format(**world["params"]),
        headers=headers,
        timeout=10.0,
        **_body(method, path, world),
    )


def _wrong_scope(method: str, path: str, world: dict[str, Any]) -> str:
    """The closest key that must still be refused: a reader for anything that changes or
    runs something, an invoker for reads."""
    if method != "GET" or (method, path) in INVOCATIONS:
        return str(world["reader"])
    return str(world["invoker"])


def _json_error(resp: httpx.Response, *statuses: int) -> None:
    assert resp.status_code in statuses, (resp.request.method, resp.request.url, resp.text)
    assert resp.headers["content-type"] == "application/json"
    assert set(resp.json()["error"]) >= {"type", "message"}


def _refused_or_filtered(resp: httpx.Response, method: str, path: str, *statuses: int) -> None:
    if (method, path) in LISTINGS and resp.status_code == 200:
        assert FN not in resp.text, (method, path, resp.text[:300])
        return
    _json_error(resp, *statuses)


def node_routes() -> list[tuple[str, str, Need]]:
    return [(m, p, n) for m, p, n, _ in admin.ROUTES] + [(m, p, Need.KEY) for m, p in INVOCATIONS]


def _control_cases() -> list[tuple[str, str, Need]]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return control_routes(Path(tmp))


CONTROL = _control_cases()
NODE = node_routes()


def _id(case: tuple[str, str, Need]) -> str:
    return f"{case[0]} {case[1]}"


@pytest.mark.parametrize("case", CONTROL, ids=_id)
def test_control_route_refuses_a_caller_without_a_key(
    cluster: LocalCluster, world: dict[str, Any], case: tuple[str, str, Need]
) -> None:
    method, path, need = case
    resp = _call(cluster.control_url, method, path, world, None)
    if need is Need.PUBLIC:
        assert resp.status_code != 500
        return
    _json_error(resp, 401)
    assert resp.json()["error"]["type"] == "Unauthorized"


@pytest.mark.parametrize("case", CONTROL, ids=_id)
def test_control_route_refuses_another_tenants_key(
    cluster: LocalCluster, world: dict[str, Any], case: tuple[str, str, Need]
) -> None:
    method, path, need = case
    if need is Need.PUBLIC:
        return
    resp = _call(cluster.control_url, method, path, world, world["intruder"])
    if (method, path) in TENANT_FREE:
        assert resp.status_code < 300, resp.text
        return
    if need in (Need.NODE, Need.CLUSTER_ADMIN):
        expected: tuple[int, ...] = (403,)
    elif "{name}" in path or "{key_id}" in path:
        expected = (404,)  # as for a missing function or key: nothing about the other tenant
    else:
        expected = (403, 404)
    _refused_or_filtered(resp, method, path, *expected)


@pytest.mark.parametrize("case", CONTROL, ids=_id)
def test_control_route_refuses_a_key_of_the_wrong_scope(
    cluster: LocalCluster, world: dict[str, Any], case: tuple[str, str, Need]
) -> None:
    method, path, need = case
    if need is Need.PUBLIC:
        return
    resp = _call(cluster.control_url, method, path, world, _wrong_scope(method, path, world))
    _refused_or_filtered(resp, method, path, 403)


@pytest.mark.parametrize("node", ["pop-1", "region-1"])
@pytest.mark.parametrize("case", NODE, ids=_id)
def test_node_route_refuses_a_caller_without_a_key(
    cluster: LocalCluster, world: dict[str, Any], case: tuple[str, str, Need], node: str
) -> None:
    method, path, need = case
    resp = _call(cluster.url(node), method, path, world, None)
    if need is Need.PUBLIC:
        assert resp.status_code == 200
        return
    _json_error(resp, 401)


@pytest.mark.parametrize("node", ["pop-1", "region-1"])
@pytest.mark.parametrize("case", NODE, ids=_id)
def test_node_route_refuses_another_tenants_key(
    cluster: LocalCluster, world: dict[str, Any], case: tuple[str, str, Need], node: str
) -> None:
    method, path, need = case
    if need is Need.PUBLIC:
        return
    resp = _call(cluster.url(node), method, path, world, world["intruder"])
    on_function = (
        "/v1/logs", "/v1/placement/explain", "/v1/admin/prewarm",
        "/v1/dlq", "/v1/dlq/replay", "/v1/dlq/{event_id}",
    )  # fmt: skip
    expected = (404,) if "{name}" in path or path in on_function else (403,)
    _refused_or_filtered(resp, method, path, *expected)


@pytest.mark.parametrize("node", ["pop-1", "region-1"])
@pytest.mark.parametrize("case", NODE, ids=_id)
def test_node_route_refuses_a_key_of_the_wrong_scope(
    cluster: LocalCluster, world: dict[str, Any], case: tuple[str, str, Need], node: str
) -> None:
    method, path, need = case
    if need is Need.PUBLIC:
        return
    resp = _call(cluster.url(node), method, path, world, _wrong_scope(method, path, world))
    # A dead letter named by id: which function it was for is not known before it is found.
    _refused_or_filtered(resp, method, path, *((403, 404) if "{event_id}" in path else (403,)))


def test_the_tables_cover_every_route_served(tmp_path: Path) -> None:
    """Nothing is served beside the tables the guards were built from."""
    registry = SqliteRegistry(tmp_path / "registry.db")
    app = ControlApp(
        registry,
        BundleStore(tmp_path / "bundles"),
        Accounts(registry, b"k" * 32),
        SecretStore(tmp_path / "secrets.db", SecretBox(b"m" * 32)),
    )
    routes = app.asgi.routes  # type: ignore[attr-defined]
    served = {(m, r.path) for r in routes for m in (r.methods or ()) if m != "HEAD"}
    (tmp_path / "again").mkdir()
    api = {(m, p) for m, p, _ in control_routes(tmp_path / "again")}
    ui = {(m, p) for m, p, _, _ in UI_ROUTES}
    assert served == api | ui
    guards = {(m, r.path): r.endpoint.__qualname__ for r in routes for m in r.methods or ()}
    assert {guards[route] for route in api} == {"route.<locals>.guarded"}
    # The dashboard's: a cookie session of the cluster admin (control/ui.py), except
    # the login itself and the static files every page loads.
    sessions = {(m, p) for m, p, session, _ in UI_ROUTES if session}
    assert {guards[route] for route in sessions} == {"Ui._guarded.<locals>.guarded"}
    assert ui - sessions == {
        ("GET", "/ui/login"),
        ("POST", "/ui/login"),
        ("POST", "/ui/logout"),
        ("GET", "/ui/static/{name}"),
    }


def test_only_the_known_routes_are_public() -> None:
    """A route declared public skips every check above: each one must be meant to be."""
    public = {(m, p) for m, p, need in CONTROL + NODE if need is Need.PUBLIC}
    assert public == {
        ("GET", "/v1/health"),
        ("GET", "/v1/openapi.json"),
        ("POST", "/v1/nodes/join"),
    }
