"""A node of several worker processes: one port, one budget, shared popularity,
every worker following the registry, a killed worker replaced."""

from __future__ import annotations

import math
import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgerun.client import Client
from edgerun.cluster import LocalCluster, free_port
from edgerun.config import ControlSpec, PopSpec, RegionSpec, Topology
from tests.conftest import FUNCTIONS
from tests.integration.conftest import (
    admin,
    deploy_everywhere,
    deploy_folder,
    node_status,
    remember_admin_key,
    wait_for,
)

REGION_CAPACITY_MB = 380
"""Two sandboxes of 128 MB and the zygotes fit; a third does not (per worker it would)."""
HALF_LIFE_S = 300.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    topology = Topology(
        control=ControlSpec(port=free_port()),
        region=[
            RegionSpec(
                name="region-1",
                port=free_port(),
                capacity_mb=REGION_CAPACITY_MB,
                settings={"workers": 2},
            )
        ],
        pop=[
            PopSpec(
                name="pop-1",
                port=free_port(),
                capacity_mb=512,
                regions=["region-1"],
                settings={"workers": 2, "popularity_half_life_s": HALF_LIFE_S},
            )
        ],
    )
    c = LocalCluster(topology, tmp_path_factory.mktemp("workers"))
    try:
        c.start()
        remember_admin_key(c)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster.control_url, cluster.token) as c:
        yield c


def _call(url: str, token: str, name: str, event: Any = None) -> httpx.Response:
    """One invocation on a connection of its own (the kernel picks the worker per connection)."""
    return httpx.post(
        f"{url}/v1/functions/{name}/invocations",
        json=event if event is not None else {},
        headers={"authorization": f"Bearer {token}"},
        timeout=30,
    )


def _workers_of(cluster: LocalCluster, node: str) -> list[dict[str, Any]]:
    slots: list[dict[str, Any]] = node_status(cluster, node)["workers"]["budget"]
    return slots


def test_workers_share_the_port_and_each_serves(cluster: LocalCluster, client: Client) -> None:
    deploy_everywhere(cluster, client, "w-echo", nodes=("pop-1", "region-1"))
    seen: Counter[str] = Counter()

    def both_served() -> bool:
        resp = _call(cluster.url("region-1"), cluster.token, "w-echo", {"x": 1})
        assert resp.status_code == 200, resp.text
        seen[resp.headers["x-edgerun-worker"]] += 1
        return len(seen) == 2

    wait_for(both_served, timeout=20, what="both workers of region-1 to serve")
    assert set(seen) == {"0", "1"}


def test_one_budget_bounds_sandboxes_across_workers(cluster: LocalCluster, client: Client) -> None:
    deploy_everywhere(
        cluster, client, "w-nap", FUNCTIONS / "napper", nodes=("region-1",), memory_mb=128
    )
    url = cluster.url("region-1")
    for _attempt in range(3):
        results: list[httpx.Response] = []
        lock = threading.Lock()

        def one(results: list[httpx.Response] = results, lock: threading.Lock = lock) -> None:
            resp = _call(url, cluster.token, "w-nap", {"seconds": 0.6})
            with lock:
                results.append(resp)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        peak = 0
        while any(t.is_alive() for t in threads):
            slots = _workers_of(cluster, "region-1")
            peak = max(peak, sum(s["charged_mb"] for s in slots))
            threads[0].join(0.05)
        for t in threads:
            t.join()
        assert all(r.status_code == 200 for r in results), [r.text for r in results]
        if {r.headers["x-edgerun-worker"] for r in results} == {"0", "1"}:
            break
    else:
        pytest.fail("the kernel gave every connection to one worker three times")
    spans = sorted((r.json()["start"], r.json()["end"]) for r in results)
    overlap = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert overlap <= 2, f"{overlap} sandboxes of 128 MB ran at once in {REGION_CAPACITY_MB} MB"
    assert 0 < peak <= REGION_CAPACITY_MB


def test_popularity_counts_every_workers_requests(cluster: LocalCluster, client: Client) -> None:
    deploy_everywhere(cluster, client, "w-pop", nodes=("pop-1", "region-1"))
    pop = cluster.url("pop-1")
    served: Counter[str] = Counter()

    def uneven() -> bool:
        resp = _call(pop, cluster.token, "w-pop")
        assert resp.status_code == 200, resp.text
        served[resp.headers["x-edgerun-worker"]] += 1
        counts = sorted(served.values())
        return len(counts) == 2 and counts[0] >= 2 and counts[1] >= 1.5 * counts[0]

    wait_for(uneven, timeout=60, what="an uneven split of requests over the POP's workers")
    total = sum(served.values())
    expected = total * math.log(2) / HALF_LIFE_S  # every hit within seconds of now
    rates: dict[int, float] = {}

    def both_count_all() -> bool:
        resp = httpx.get(
            f"{pop}/v1/placement/explain", params={"function": "w-pop"}, headers=admin(cluster)
        )
        body = resp.json()
        rates[body["worker"]] = body["inputs"]["rate_per_s"]
        return len(rates) == 2 and all(abs(r / expected - 1) < 0.05 for r in rates.values())

    wait_for(both_count_all, timeout=10, what=f"each worker to count all {total} hits ({served})")


def test_a_deploy_reaches_every_worker(cluster: LocalCluster, client: Client) -> None:
    deploy_folder(client, "w-late", FUNCTIONS / "echo", handler="main.handler")
    ok: set[str] = set()

    def all_serve() -> bool:
        resp = httpx.post(f"{cluster.url('pop-1')}/fn/w-late/", json={}, timeout=10)
        if resp.status_code == 200:
            ok.add(resp.headers["x-edgerun-worker"])
        return ok == {"0", "1"}

    wait_for(all_serve, timeout=20, what="both POP workers to serve the new function")


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state in ("Z", "X")


def test_a_killed_worker_is_replaced_while_the_other_serves(
    cluster: LocalCluster, client: Client
) -> None:
    deploy_everywhere(cluster, client, "w-kill", nodes=("pop-1", "region-1"))
    pop = cluster.url("pop-1")
    before = {s["index"]: s["pid"] for s in _workers_of(cluster, "pop-1")}
    assert all(before.values())
    os.kill(before[1], signal.SIGKILL)
    wait_for(lambda: _gone(before[1]), what="the killed worker to exit")
    during: list[int] = []

    def replaced() -> bool:
        resp = _call(pop, cluster.token, "w-kill")
        during.append(resp.status_code)
        now = {s["index"]: s["pid"] for s in _workers_of(cluster, "pop-1")}
        return now[1] not in (0, before[1]) and resp.headers.get("x-edgerun-worker") == "1"

    wait_for(replaced, timeout=30, what="a new worker 1 to serve")
    assert during and all(code == 200 for code in during), during
    assert {s["pid"] for s in _workers_of(cluster, "pop-1")} >= {before[0]}


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _runs(pid: int, module: str) -> bool:
    try:
        return module in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def test_the_workers_share_one_sandbox_engine(cluster: LocalCluster, client: Client) -> None:
    deploy_everywhere(cluster, client, "w-one-engine", nodes=("region-1",))
    url = cluster.url("region-1")
    served: set[str] = set()

    def both_served() -> bool:
        resp = _call(url, cluster.token, "w-one-engine")
        assert resp.status_code == 200, resp.text
        served.add(resp.headers["x-edgerun-worker"])
        return served == {"0", "1"}

    wait_for(both_served, timeout=20, what="both workers to run the function")
    proc = cluster.nodes["region-1"].proc
    assert proc is not None
    children = _children(proc.pid)
    workers = [c for c in children if _runs(c, "edgerun.node.worker")]
    templates = [c for c in children if _runs(c, "edgerun.sandbox.zygote")]
    assert len(workers) == 2
    assert len(templates) == 1  # one template, so one zygote per version
    assert not any(_runs(g, "edgerun.sandbox.zygote") for w in workers for g in _children(w))


def test_what_a_sandbox_leaves_in_tmp_is_charged_to_the_node_once(
    cluster: LocalCluster, client: Client
) -> None:
    deploy_everywhere(
        cluster, client, "w-tmp", FUNCTIONS / "tmp-keeper", nodes=("region-1",), memory_mb=128
    )
    before = node_status(cluster, "region-1")["workers"]["engine_mb"]
    resp = _call(cluster.url("region-1"), cluster.token, "w-tmp", {"mb": 24})
    assert resp.status_code == 200, resp.text
    wait_for(
        lambda: node_status(cluster, "region-1")["workers"]["engine_mb"] >= before + 24,
        what="the engine to charge the 24 MB left in /tmp",
    )
