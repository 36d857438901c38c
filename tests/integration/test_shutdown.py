"""Stopping is quick: a change-feed long-poll in flight does not hold the control
plane's shutdown up (uvicorn waits for requests in flight, up to 5 s)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest

from edgerun.client import Client
from edgerun.cluster import LocalCluster, free_port
from edgerun.config import ControlSpec, PopSpec, RegionSpec, Topology
from edgerun.watcher import SHUTDOWN_GRACE_S
from tests.conftest import FUNCTIONS
from tests.integration.conftest import (
    deploy_everywhere,
    invoke,
    node_status,
    remember_admin_key,
    wait_for,
)

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


def test_a_call_in_flight_holds_a_stop_up_only_for_the_grace(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """uvicorn lets requests in flight finish for ``shutdown_grace_s`` (5 s by default)
    before it cancels them; `edgerun up` gives its nodes 0.25 s, so a long call at a
    region and its forward at the POP do not hold a Ctrl-C up."""
    topology = Topology(
        control=ControlSpec(port=free_port()),
        region=[RegionSpec(name="region-1", port=free_port())],
        pop=[PopSpec(name="pop-1", port=free_port(), regions=["region-1"])],
    )
    c = LocalCluster(
        topology,
        tmp_path_factory.mktemp("grace"),
        node_settings={"shutdown_grace_s": SHUTDOWN_GRACE_S},
    )
    try:
        c.start()
        remember_admin_key(c)
        with Client(c.control_url, c.token) as client:
            deploy_everywhere(
                c, client, "grace-sleeper", FUNCTIONS / "sleeper", nodes=("pop-1", "region-1"),
                placement="region", timeout_s=30,
            )  # fmt: skip
        answers: list[int] = []
        caller = threading.Thread(
            target=lambda: answers.append(
                invoke(c.url("pop-1"), "grace-sleeper", {"seconds": 20}, timeout=30).status
            )
        )
        caller.start()
        wait_for(lambda: node_status(c, "region-1")["pool"]["busy"] == 1, what="a call in flight")
        procs = [n.proc for n in c.nodes.values()]
        began = time.monotonic()
        c.stop()
        took = time.monotonic() - began
        caller.join(30)
        assert all(p is not None and p.returncode is not None for p in procs)
        assert answers and answers[0] >= 500  # cut off, and told so
        assert took < 2.0, f"the cluster took {took:.1f} s to stop with a call in flight"
    finally:
        c.stop()
