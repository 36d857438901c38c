"""Asynchronous invocations on real processes: durable queue, retries, dead letters,
and the faults the issue names (a node killed with 1,000 events queued, the control
plane down, a function that always fails, a region dying mid-event)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from edgerun.client import Client
from edgerun.cluster import LocalCluster, free_port
from edgerun.config import ControlSpec, PopSpec, RegionSpec, Topology
from edgerun.models import AsyncConfig
from tests.conftest import FUNCTIONS
from tests.integration.conftest import admin, deploy_everywhere, remember_admin_key, wait_for

pytestmark = pytest.mark.integration

NODES = ("pop-1", "region-1", "region-2")


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    fast = {"async_retry_base_s": 0.2, "async_slots": 8}
    topology = Topology(
        control=ControlSpec(port=free_port(), settings={"gc_interval_s": 3600}),
        region=[
            RegionSpec(name=r, port=free_port(), settings=fast) for r in ("region-1", "region-2")
        ],
        pop=[PopSpec(name="pop-1", port=free_port(), regions=["region-1", "region-2"],
                     settings=fast)],
    )  # fmt: skip
    cluster = LocalCluster(topology, tmp_path_factory.mktemp("async"))
    try:
        cluster.start()
        remember_admin_key(cluster)
        with Client(cluster.control_url, cluster.token) as client:
            deploy_everywhere(cluster, client, "q-edge", FUNCTIONS / "counter", NODES,
                              placement="edge", timeout_s=10)  # fmt: skip
            deploy_everywhere(cluster, client, "q-far", FUNCTIONS / "counter", NODES,
                              placement="region", timeout_s=10, idempotent=False)  # fmt: skip
            deploy_everywhere(cluster, client, "q-fail", FUNCTIONS / "counter", NODES,
                              placement="edge", async_=AsyncConfig(max_retries=2))  # fmt: skip
        yield cluster
    finally:
        cluster.stop()


def enqueue(cluster: LocalCluster, node: str, name: str, event: dict[str, Any]) -> str:
    resp = httpx.post(
        f"{cluster.url(node)}/v1/functions/{name}/invocations",
        json=event,
        headers={**admin(cluster), "x-edgerun-invocation-type": "Event"},
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["event_id"])


def runs(cluster: LocalCluster, name: str) -> Counter[str]:
    """Successful runs per event id, from every node's invocation log."""
    done: Counter[str] = Counter()
    for node in NODES:
        resp = httpx.get(
            f"{cluster.url(node)}/v1/logs",
            params={"function": name, "limit": "1000", "since": "0", "settled": "false"},
            headers=admin(cluster),
            timeout=30,
        )
        for e in resp.json()["logs"]:
            if e["status"] == 200 and e["placement"].startswith("local-"):
                done[e["request_id"].rsplit(".", 1)[0]] += 1
    return done


def async_stats(cluster: LocalCluster, node: str) -> dict[str, Any]:
    resp = httpx.get(f"{cluster.url(node)}/v1/status", headers=admin(cluster), timeout=10)
    return resp.json()["async"]  # type: ignore[no-any-return]


def test_an_event_is_accepted_with_202_and_runs(topo: LocalCluster) -> None:
    event_id = enqueue(topo, "pop-1", "q-edge", {"n": 1})
    wait_for(lambda: runs(topo, "q-edge")[event_id] == 1, timeout=20, what="the event to run")


def test_a_forwarded_event_runs_at_the_region(topo: LocalCluster) -> None:
    event_id = enqueue(topo, "pop-1", "q-far", {"n": 2})
    wait_for(lambda: runs(topo, "q-far")[event_id] == 1, timeout=20, what="the event to run")
