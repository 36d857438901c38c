"""Failover on the test bed: real nodes, links with emulated distance."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgerun.client import Client
from edgerun.lab import Lab, LabSpec
from tests.conftest import FUNCTIONS
from tests.integration.conftest import (
    deploy_folder,
    invoke,
    node_knows,
    remember_admin_key,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(LabSpec(pops=1, regions=2, client_pop_ms=10.0, pop_region_ms=40.0), tmp_path)
    lab.start()
    remember_admin_key(lab.cluster, *(lab.client_url(p) for p in ("pop-1",)))
    try:
        yield lab
    finally:
        lab.stop()


def deploy(lab: Lab, name: str, **config: object) -> None:
    with Client(lab.cluster.control_url, lab.cluster.token) as client:
        sha = deploy_folder(client, name, FUNCTIONS / "echo", handler="main.handler", **config)
    for node in ("pop-1", "region-1", "region-2"):
        wait_for(node_knows(lab.cluster, node, name, sha), what=f"{node} to learn {name}")


def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return True
    return False


def timed(url: str, name: str) -> tuple[float, object]:
    start = time.perf_counter()
    result = invoke(url, name, {})
    return (time.perf_counter() - start) * 1000, result


def test_a_forwarded_request_pays_the_emulated_round_trips(lab: Lab) -> None:
    deploy(lab, "far", placement="region")
    client = lab.client_url("pop-1")
    invoke(client, "far", {})  # warm the region and the connections
    ms, result = timed(client, "far")
    assert result.placement == "forwarded:region-1"  # type: ignore[attr-defined]
    assert ms >= 50.0  # 10 ms client<->POP + 40 ms POP<->region


def test_a_cut_link_fails_over_to_the_next_region(lab: Lab) -> None:
    deploy(lab, "far", placement="region")
    client = lab.client_url("pop-1")
    assert invoke(client, "far", {}).placement == "forwarded:region-1"
    lab.set_link("pop-1->region-1", "cut")
    result = invoke(client, "far", {})
    assert result.status == 200
    assert result.placement == "forwarded:region-2"
    assert result.reason == "region-only"
    assert result.headers["x-edgerun-failover"] == "true"


def test_a_killed_region_host_fails_over(lab: Lab) -> None:
    deploy(lab, "far", placement="region")
    client = lab.client_url("pop-1")
    lab.cluster.kill("region-1")
    link = lab.links["pop-1->region-1"]
    wait_for(lambda: refuses(link.port), what="the link to notice the dead host")
    result = invoke(client, "far", {})
    assert (result.status, result.placement) == (200, "forwarded:region-2")


def test_a_silent_region_is_not_retried_for_a_function_that_may_have_run(lab: Lab) -> None:
    deploy(lab, "once", placement="region", timeout_s=0.5)
    client = lab.client_url("pop-1")
    assert invoke(client, "once", {}).status == 200
    lab.set_link("pop-1->region-1", "blackhole")
    result = invoke(client, "once", {})
    assert result.status == 502
    assert result.json()["error"]["type"] == "RegionFailed"


def test_a_silent_region_is_retried_elsewhere_for_an_idempotent_function(lab: Lab) -> None:
    deploy(lab, "again", placement="region", timeout_s=0.5, idempotent=True)
    client = lab.client_url("pop-1")
    assert invoke(client, "again", {}).status == 200
    lab.set_link("pop-1->region-1", "blackhole")
    result = invoke(client, "again", {})
    assert (result.status, result.placement) == (200, "forwarded:region-2")
