"""Stopping is quick: a change-feed long-poll in flight does not hold the control
plane's shutdown up (uvicorn waits for requests in flight, up to 5 s)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from edgerun.cluster import LocalCluster, free_port
from edgerun.config import ControlSpec, PopSpec, RegionSpec, Topology
from tests.integration.conftest import node_status, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    topology = Topology(
        control=ControlSpec(port=free_port()),
        region=[RegionSpec(name="region-1", port=free_port())],
        pop=[PopSpec(name="pop-1", port=free_port(), regions=["region-1"])],
    )
    c = LocalCluster(topology, tmp_path_factory.mktemp("shutdown"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_the_control_plane_stops_without_waiting_for_its_long_polls(
    cluster: LocalCluster,
) -> None:
    # Synced nodes are back in their next long-poll (feed_wait_s = 20 s).
    for node in ("region-1", "pop-1"):
        wait_for(lambda node=node: node_status(cluster, node)["synced"], what=f"{node} synced")
    proc = cluster.nodes["control"].proc
    assert proc is not None
    began = time.monotonic()
    cluster.kill("control", signal.SIGTERM)
    took = time.monotonic() - began
    assert proc.returncode == -signal.SIGTERM  # uvicorn re-raises the signal it handled
    assert took < 3.0, f"the control plane took {took:.1f} s to stop"
