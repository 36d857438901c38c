"""Where a POP runs what, on a cluster of its own (so no other test's
measurements steer its estimates): the cost comparison, background warming,
the explain endpoint, and the Lambda event on both paths."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from edgerun.client import Client
from edgerun.cluster import LocalCluster
from edgerun.placement import Reason
from tests.conftest import FUNCTIONS
from tests.integration.conftest import (
    admin,
    deploy_folder,
    invoke,
    node_knows,
    node_status,
    start_cluster,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Client]]:
    cluster = start_cluster(tmp_path_factory.mktemp("placement"), pop_capacity_mb=1024)
    client = Client(cluster.control_url, cluster.token)
    try:
        yield cluster, client
    finally:
        client.close()
        cluster.stop()


@pytest.fixture
def cluster(own: tuple[LocalCluster, Client]) -> LocalCluster:
    return own[0]


@pytest.fixture
def client(own: tuple[LocalCluster, Client]) -> Client:
    return own[1]


@pytest.fixture
def pop(cluster: LocalCluster) -> str:
    return cluster.url("pop-1")


@pytest.fixture(scope="module")
def deployed(own: tuple[LocalCluster, Client]) -> dict[str, str]:
    cluster, client = own
    sha = deploy_folder(client, "echo", FUNCTIONS / "echo", handler="main.handler")
    for node in ("pop-1", "region-1", "region-2"):
        wait_for(node_knows(cluster, node, "echo", sha), what=f"{node} to learn echo")
    return {"echo": sha}


def test_a_first_call_starts_at_the_pop_when_its_code_is_here_and_no_region_is_warm(
    pop: str, client: Client, cluster: LocalCluster, tmp_path
) -> None:
    (tmp_path / "main.py").write_text("def handler(event, context):\n    return 'hi'\n")
    # The same code, already run at this POP by another function: no fetch to pay.
    deploy_folder(client, "ran-here", tmp_path, handler="main.handler", placement="edge")
    assert invoke(pop, "ran-here", {}).placement == "local-cold"
    sha = deploy_folder(client, "starts-here", tmp_path, handler="main.handler")
    wait_for(node_knows(cluster, "pop-1", "starts-here", sha), what="pop-1 to learn it")
    first = invoke(pop, "starts-here", {})
    # Every region would pay the same start, plus the trip: starting here is cheaper.
    assert (first.placement, first.reason) == ("local-cold", "cold-start-cheaper")
    assert float(first.headers["x-edgerun-start-ms"]) > 0
    second = invoke(pop, "starts-here", {})
    assert (second.placement, second.reason) == ("local-warm", "warm")


def test_code_not_at_the_pop_counts_its_fetch_until_it_runs_there(
    pop: str, client: Client, cluster: LocalCluster, tmp_path
) -> None:
    (tmp_path / "main.py").write_text("def handler(event, context):\n    return 'far'\n")
    sha = deploy_folder(client, "code-elsewhere", tmp_path, handler="main.handler")
    wait_for(node_knows(cluster, "pop-1", "code-elsewhere", sha), what="pop-1 to learn it")

    def explain() -> dict[str, Any]:
        return httpx.get(  # type: ignore[no-any-return]
            f"{pop}/v1/placement/explain",
            params={"function": "code-elsewhere"},
            headers=admin(cluster),
        ).json()

    before = explain()
    costs = before["inputs"]["costs_ms"]
    assert costs["fetch_ms"] > 0
    assert before["estimates_ms"]["here_cold"] >= costs["start_ms"] + costs["fetch_ms"]

    first = invoke(pop, "code-elsewhere", {})

    assert first.status == 200 and first.json() == "far"
    cached = node_status(cluster, "pop-1")["functions"]["code-elsewhere"]["code_cached"]
    after = explain()["inputs"]["costs_ms"]["fetch_ms"]
    if first.placement.startswith("forwarded:"):
        assert cached == [] and after > 0, "forwarded: the POP fetched nothing"
    else:
        assert cached == [sha] and after == 0, "ran here: its code is here now"


def test_the_lambda_event_names_the_client_and_host_wherever_it_ran(
    pop: str, client: Client, cluster: LocalCluster, deployed: dict[str, str]
) -> None:
    far = deploy_folder(
        client, "echo-far", FUNCTIONS / "echo", handler="main.handler", placement="region"
    )
    for node in ("pop-1", "region-1", "region-2"):
        wait_for(node_knows(cluster, node, "echo-far", far), what=f"{node} to learn echo-far")
    # The client speaks from 127.0.0.2, so its address differs from the POP's.
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    contexts = {}
    with httpx.Client(transport=transport) as http:
        for name in ("echo", "echo-far"):
            resp = http.get(f"{pop}/fn/{name}/x", headers={"host": "api.example.com"})
            assert resp.status_code == 200
            contexts[resp.headers["x-edgerun-placement"].partition(":")[0]] = resp.json()["event"][
                "requestContext"
            ]
    assert len(contexts) == 2 and "forwarded" in contexts
    for ctx in contexts.values():
        assert ctx["domainName"] == "api.example.com"
        assert ctx["http"]["sourceIp"] == "127.0.0.2"


def test_a_function_warm_in_a_region_is_forwarded_while_the_pop_warms_it(
    pop: str, client: Client, cluster: LocalCluster, tmp_path
) -> None:
    (tmp_path / "main.py").write_text(
        "import time\ntime.sleep(0.3)\n\ndef handler(event, context):\n    return 'hi'\n"
    )
    sha = deploy_folder(client, "warm-there", tmp_path, handler="main.handler")
    for node in ("pop-1", "region-1"):
        wait_for(node_knows(cluster, node, "warm-there", sha), what=f"{node} to learn it")
    assert invoke(cluster.url("region-1"), "warm-there", {}).status == 200

    def region_warm() -> bool:
        resp = httpx.get(
            f"{pop}/v1/placement/explain",
            params={"function": "warm-there"},
            headers=admin(cluster),
        )
        return any(r["warm"] for r in resp.json()["inputs"]["regions"])

    wait_for(region_warm, what="the POP to learn region-1 holds it warm")
    first = invoke(pop, "warm-there", {})
    assert (first.placement, first.reason) == ("forwarded:region-1", "trip-cheaper")
    assert first.headers["x-edgerun-region-placement"] == "local-warm"
    wait_for(lambda: invoke(pop, "warm-there", {}).placement == "local-warm", what="warm at POP")


def test_explain_shows_the_estimates_behind_a_decision(
    pop: str, cluster: LocalCluster, deployed: dict
) -> None:
    resp = httpx.get(
        f"{pop}/v1/placement/explain", params={"function": "echo"}, headers=admin(cluster)
    )
    assert resp.status_code == 200
    body = resp.json()
    assert body["decision"]["reason"] in {r.value for r in Reason}
    assert set(body["estimates_ms"]["forward"]) <= {"region-1", "region-2"}
    assert body["inputs"]["costs_ms"]["start_ms"] > 0


def test_explain_needs_the_cluster_token(pop: str, deployed: dict) -> None:
    resp = httpx.get(f"{pop}/v1/placement/explain", params={"function": "echo"})
    assert resp.status_code == 401
    assert resp.json()["error"]["type"]


def test_explain_without_a_function_is_a_400_saying_what_to_pass(
    pop: str, cluster: LocalCluster
) -> None:
    resp = httpx.get(f"{pop}/v1/placement/explain", headers=admin(cluster))
    assert resp.status_code == 400
    assert "function=NAME" in resp.json()["error"]["message"]


def test_explain_of_an_unknown_function_is_a_404(pop: str, cluster: LocalCluster) -> None:
    resp = httpx.get(
        f"{pop}/v1/placement/explain", params={"function": "nope"}, headers=admin(cluster)
    )
    assert resp.status_code == 404
    assert "nope" in resp.json()["error"]["message"]


def test_explain_is_only_on_pops(cluster: LocalCluster, deployed: dict[str, str]) -> None:
    resp = httpx.get(
        f"{cluster.url('region-1')}/v1/placement/explain",
        params={"function": "echo"},
        headers=admin(cluster),
    )
    assert resp.status_code == 404
    assert resp.json()["error"]["type"] == "NotFound"
