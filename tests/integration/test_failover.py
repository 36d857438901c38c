"""Failures of the nodes around a POP: control plane down, regions down, no capacity."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgerun.client import Client
from edgerun.cluster import LocalCluster
from tests.conftest import FUNCTIONS
from tests.integration.conftest import deploy_folder, invoke, node_knows, start_cluster, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[tuple[LocalCluster, Client]]:
    """A cluster of its own, since these tests kill its nodes."""
    # Two 128 MB sandboxes, and room for the zygotes they fork from (charged too).
    cluster = start_cluster(tmp_path / "c", pop_capacity_mb=256 + 32)
    client = Client(cluster.control_url, cluster.token)
    try:
        yield cluster, client
    finally:
        client.close()
        cluster.stop()


def _deploy(cluster: LocalCluster, client: Client, name: str, **config: object) -> str:
    sha = deploy_folder(client, name, FUNCTIONS / name, handler="main.handler", **config)
    for node in ("pop-1", "region-1", "region-2"):
        wait_for(node_knows(cluster, node, name, sha), what=f"{node} to learn {name}")
    return sha


def test_pop_serves_when_the_control_plane_is_down(fresh) -> None:
    cluster, client = fresh
    _deploy(cluster, client, "echo")
    cluster.kill("control")
    pop = cluster.url("pop-1")
    assert invoke(pop, "echo", {"n": 1}).json()["event"] == {"n": 1}
    cluster.kill("pop-1")
    cluster.start_node("pop-1")
    cluster.wait_healthy(["pop-1"])
    assert invoke(pop, "echo", {"n": 2}).json()["event"] == {"n": 2}


def test_pop_forwards_to_the_second_region_when_the_first_is_dead(fresh) -> None:
    cluster, client = fresh
    _deploy(cluster, client, "echo", placement="region")
    pop = cluster.url("pop-1")
    first = invoke(pop, "echo", {})
    assert first.placement == "forwarded:region-1", (first.status, first.content)
    cluster.kill("region-1")
    result = invoke(pop, "echo", {})
    assert result.status == 200
    assert result.placement == "forwarded:region-2"


def test_all_regions_down_runs_at_the_pop_when_it_fits(fresh) -> None:
    cluster, client = fresh
    _deploy(cluster, client, "echo")
    _deploy(cluster, client, "sleeper", timeout_s=10.0)
    cluster.kill("region-1")
    cluster.kill("region-2")
    pop = cluster.url("pop-1")
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        futures = [ex.submit(invoke, pop, "sleeper", {"seconds": 0.5}) for _ in range(3)]
        results = [f.result() for f in futures]
    assert [r.status for r in results] == [200, 200, 200], [
        (r.status, r.placement, r.reason, r.content[:300]) for r in results
    ]
    assert all(r.placement.startswith("local") for r in results)


def test_region_only_function_is_503_when_all_regions_are_down(fresh) -> None:
    cluster, client = fresh
    _deploy(cluster, client, "echo", placement="region")
    cluster.kill("region-1")
    cluster.kill("region-2")
    wait_for(
        lambda: invoke(cluster.url("pop-1"), "echo", {}).status == 503,
        what="POP to see regions down",
    )
    resp = httpx.post(
        f"{cluster.url('pop-1')}/v1/functions/echo/invocations",
        json={},
        headers={"authorization": f"Bearer {cluster.token}"},
    )
    assert resp.json()["error"]["type"] == "Unavailable"


def test_full_pop_forwards_with_reason_no_capacity(fresh) -> None:
    cluster, client = fresh
    _deploy(cluster, client, "sleeper", timeout_s=10.0)
    pop = cluster.url("pop-1")
    wait_for(lambda: invoke(pop, "sleeper", {}).placement == "local-warm", what="warm at POP")
    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        futures = [ex.submit(invoke, pop, "sleeper", {"seconds": 1.5}) for _ in range(3)]
        results = [f.result() for f in futures]
    assert all(r.status == 200 for r in results)
    # One warm, one started beside it, and no room for a third: forwarded.
    placements = sorted(r.placement for r in results)
    assert [p.partition(":")[0] for p in placements] == ["forwarded", "local-cold", "local-warm"]
    assert [r.reason for r in results if r.placement.startswith("forwarded")] == ["no-capacity"]
