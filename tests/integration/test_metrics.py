"""GET /metrics on a real topology of two-worker nodes: the counts equal the
invocations made (whichever worker served them and whichever answers the scrape),
the gauges read the node's state, and only the cluster admin may scrape."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgerun.client import Client
from edgerun.cluster import LocalCluster, free_port
from edgerun.config import ControlSpec, PopSpec, RegionSpec, Topology
from tests.integration.conftest import admin, deploy_everywhere, remember_admin_key, wait_for

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    topology = Topology(
        control=ControlSpec(port=free_port()),
        region=[
            RegionSpec(name="region-1", port=free_port(), capacity_mb=1024, settings={"workers": 2})
        ],
        pop=[
            PopSpec(
                name="pop-1",
                port=free_port(),
                capacity_mb=512,
                regions=["region-1"],
                settings={"workers": 2},
            )
        ],
    )
    c = LocalCluster(topology, tmp_path_factory.mktemp("metrics"))
    try:
        c.start()
        remember_admin_key(c)
        for node in ("pop-1", "region-1"):
            wait_for(lambda node=node: _workers_know_the_key(c, node), what=f"{node} synced")
        yield c
    finally:
        c.stop()


def _workers_know_the_key(cluster: LocalCluster, node: str) -> bool:
    """Both workers have the admin key from the feed (each follows it on its own, and
    one may answer health before the other has synced): 8 fresh connections pass."""
    seen = set()
    for _ in range(8):
        resp = httpx.get(f"{cluster.url(node)}/v1/status", headers=admin(cluster), timeout=10)
        if resp.status_code != 200:
            return False
        seen.add(resp.json()["workers"]["this"])
    return seen == {0, 1}


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster.control_url, cluster.token) as c:
        yield c


def scrape(url: str, token: str) -> Series:
    """One scrape, on a connection of its own (so the kernel picks any worker); a 503
    (a worker too slow to answer on a loaded machine) is tried again, for 20 s."""
    deadline = time.monotonic() + 20
    while True:
        resp = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {token}"}, timeout=10)
        if resp.status_code != 503 or time.monotonic() > deadline:
            break
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(resp.text)
        for s in fam.samples
    }


def total(series: Series, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in series.items() if n == name and want <= ls)


def invocations(series: Series, function: str) -> Counter[tuple[str, str, str]]:
    out: Counter[tuple[str, str, str]] = Counter()
    for (n, ls), v in series.items():
        labels = dict(ls)
        if n == "edgerun_invocations_total" and labels["function"] == function:
            out[(labels["placement"], labels["reason"], labels["status"])] += int(v)
    return out


def _call(url: str, token: str, name: str) -> httpx.Response:
    """On a connection of its own: the kernel picks the worker per connection."""
    resp = httpx.post(
        f"{url}/v1/functions/{name}/invocations",
        json={"n": 1},
        headers={"authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    return resp


def _calls_until_both_workers(
    cluster: LocalCluster, name: str, at_least: int
) -> list[httpx.Response]:
    """Call until both POP workers served it (and at least ``at_least`` times): a
    scrape that showed one worker's counts would then miss some."""
    replies: list[httpx.Response] = []

    def done() -> bool:
        replies.append(_call(cluster.url("pop-1"), cluster.token, name))
        workers = {r.headers["x-edgerun-worker"] for r in replies}
        return len(workers) == 2 and len(replies) >= at_least

    wait_for(done, timeout=60, what=f"both POP workers to serve {name}")
    return replies


def test_counts_equal_the_invocations_made_on_every_worker(
    cluster: LocalCluster, client: Client
) -> None:
    deploy_everywhere(cluster, client, "m-here", nodes=("pop-1", "region-1"), placement="edge")
    deploy_everywhere(cluster, client, "m-far", nodes=("pop-1", "region-1"), placement="region")
    here = _calls_until_both_workers(cluster, "m-here", 6)
    far = _calls_until_both_workers(cluster, "m-far", 4)

    def told(replies: list[httpx.Response]) -> Counter[tuple[str, str, str]]:
        return Counter(
            (r.headers["x-edgerun-placement"], r.headers["x-edgerun-reason"], "200")
            for r in replies
        )

    assert {p for p, _, _ in told(here)} <= {"local-cold", "local-warm"}
    assert {p for p, _, _ in told(far)} == {"forwarded:region-1"}
    colds_here = sum(r.headers["x-edgerun-placement"] == "local-cold" for r in here)
    region_said = Counter(r.headers["x-edgerun-region-placement"] for r in far)
    # Each scrape lands on either worker: every one must show the whole node.
    for _ in range(6):
        pop = scrape(cluster.url("pop-1"), cluster.token)
        assert total(pop, "edgerun_node_workers") == 2
        assert total(pop, "edgerun_scrape_workers") == 2
        assert invocations(pop, "m-here") == told(here)
        assert invocations(pop, "m-far") == told(far)
        hist = "edgerun_invocation_duration_seconds_count"
        assert total(pop, hist, where="here") == len(here)
        assert total(pop, hist, where="here", start="cold") == colds_here
        assert total(pop, hist, where="forwarded") == len(far)
        assert total(pop, hist, where="forwarded", start="cold") == region_said["local-cold"]
        # A cold start is counted once, where it happened: each local-cold reply had one.
        assert total(pop, "edgerun_cold_starts_total") == colds_here
        assert total(pop, "edgerun_pool_capacity_mb") == 512  # the node's, not per worker
        assert total(pop, "edgerun_bundle_fetches_total", result="ok") >= 1
    region = scrape(cluster.url("region-1"), cluster.token)
    ran = Counter(r.headers["x-edgerun-region-placement"] for r in far)
    assert sum(invocations(region, "m-far").values()) == len(far)
    assert {p: n for (p, _, _), n in invocations(region, "m-far").items()} == dict(ran)
    assert invocations(region, "m-here") == Counter()
    assert total(region, "edgerun_cold_starts_total") == ran["local-cold"]


def test_gauges_show_the_regions_and_the_feed(cluster: LocalCluster, client: Client) -> None:
    control = cluster.control_url

    def feed_caught_up() -> bool:
        revision = total(scrape(control, cluster.token), "edgerun_control_revision")
        pop = scrape(cluster.url("pop-1"), cluster.token)
        return revision > 0 and total(pop, "edgerun_feed_revision") == revision

    deploy_everywhere(cluster, client, "m-gauge", nodes=("pop-1", "region-1"))
    wait_for(feed_caught_up, timeout=20, what="the POP's feed revision to reach the control's")

    def region_measured() -> bool:
        pop = scrape(cluster.url("pop-1"), cluster.token)
        return total(pop, "edgerun_region_latency_seconds", region="region-1") > 0

    wait_for(region_measured, timeout=20, what="a round trip to region-1")
    pop = scrape(cluster.url("pop-1"), cluster.token)
    assert total(pop, "edgerun_region_up", region="region-1") == 1
    assert total(pop, "edgerun_region_failovers_total", region="region-1") == 0
    assert total(pop, "edgerun_feed_revision_lag") == 0
    assert total(pop, "edgerun_feed_synced") == 1
    assert total(pop, "edgerun_node_info", node="pop-1", role="pop") == 1
    assert ("edgerun_pool_queue_depth", frozenset()) in pop
    control_series = scrape(control, cluster.token)
    assert total(control_series, "edgerun_control_changes_total", kind="deploy") >= 1
    assert total(control_series, "edgerun_control_feed_answers_total") >= 1


@pytest.mark.parametrize("node", ["control", "pop-1", "region-1"])
def test_only_the_cluster_admin_may_scrape(
    cluster: LocalCluster, client: Client, node: str
) -> None:
    url = cluster.control_url if node == "control" else cluster.url(node)
    assert httpx.get(f"{url}/metrics", timeout=5).status_code == 401
    assert httpx.get(f"{url}/metrics", headers=admin(cluster), timeout=5).status_code == 200
    key = client.create_key(["invoke:*", "read:*"], name="not-admin")["secret"]
    refused: dict[str, Any] = {}

    def known() -> bool:  # a node learns keys from the feed
        resp = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {key}"}, timeout=5)
        refused["status"] = resp.status_code
        return resp.status_code != 401

    wait_for(known, timeout=20, what=f"{node} to learn the key")
    assert refused["status"] == 403
