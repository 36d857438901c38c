"""One real cluster for the hostile suite, with every hostile function deployed once.

Hostile functions are pinned to the POP (``placement = "edge"``) so that each
attack runs next to the node the tests then check on, with a short timeout
and 128 MB of memory. ``echo`` is the well-behaved neighbour that must keep
answering while and after each attack runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgerun.client import Client
from edgerun.cluster import LocalCluster
from tests.integration.conftest import (
    deploy_folder,
    node_knows,
    node_status,
    start_cluster,
    wait_for,
)

FUNCTIONS = Path(__file__).parent / "functions"
HOSTILE_MEMORY_MB = 128
HOSTILE_TIMEOUT_S = 2.0

# deployed name -> (folder under functions/, config overriding the hostile defaults)
DEPLOYMENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "echo": ("echo", {"memory_mb": 64, "timeout_s": 10.0}),
    "victim": ("victim", {"memory_mb": 64, "timeout_s": 10.0}),
    "raiser": ("raiser", {}),
    "sys-exit": ("sys-exit", {}),
    "os-exit": ("os-exit", {}),
    "segfault": ("segfault", {}),
    "spin": ("spin", {}),
    "runaway": ("runaway", {}),
    "cpu-threads": ("cpu-threads", {}),
    "memory-bomb": ("memory-bomb", {}),
    "fork-bomb": ("fork-bomb", {"timeout_s": 10.0}),
    "stdout-flood": ("stdout-flood", {"timeout_s": 10.0}),
    "tmp-filler": ("tmp-filler", {"timeout_s": 10.0}),
    "bundle-snooper": ("bundle-snooper", {"timeout_s": 10.0}),
    "data-snooper": ("data-snooper", {}),
    "shadow-reader": ("shadow-reader", {}),
    "net-probe": ("net-probe", {}),
    "net-probe-online": ("net-probe", {"network": True}),
    "killer": ("killer", {}),
    "tracer": ("tracer", {}),
    "escaper": ("escaper", {}),
    "bundle-tamper": ("bundle-tamper", {}),
    "zygote-interrupter": ("zygote-interrupter", {}),
    "forger": ("forger", {}),
    "forger-in-region": ("forger", {"placement": "region", "idempotent": True}),
}


def _supported() -> tuple[bool, str]:
    if sys.platform != "linux":
        return False, "the sandbox walls under test exist only on Linux"
    if os.geteuid() != 0:
        return False, "namespaces, setuid and cgroups need the node to run as root"
    return True, ""


SUPPORTED, UNSUPPORTED_REASON = _supported()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("hostile-cluster"))
    try:
        status = node_status(c, "pop-1")
        off = [layer["name"] for layer in status["isolation"] if not layer["active"]]
        if off:
            pytest.skip(f"isolation layers unavailable on this machine: {', '.join(off)}")
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def deployed(cluster: LocalCluster) -> dict[str, str]:
    """Every hostile function plus the neighbours, known to the POP: name -> version."""
    versions: dict[str, str] = {}
    with Client(cluster.control_url, cluster.token) as client:
        for name, (folder, overrides) in DEPLOYMENTS.items():
            config: dict[str, Any] = {
                "handler": "main.handler",
                "memory_mb": HOSTILE_MEMORY_MB,
                "timeout_s": HOSTILE_TIMEOUT_S,
                "placement": "edge",
                **overrides,
            }
            versions[name] = deploy_folder(client, name, FUNCTIONS / folder, **config)
    for name, sha in versions.items():
        wait_for(node_knows(cluster, "pop-1", name, sha), what=f"pop-1 to learn {name}")
    return versions


@pytest.fixture(scope="module")
def pop(cluster: LocalCluster, deployed: dict[str, str]) -> str:
    return cluster.url("pop-1")
