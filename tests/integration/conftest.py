"""Real clusters: every node is its own process talking HTTP on loopback."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from edgerun import client as sdk
from edgerun.auth import NodeCredential
from edgerun.build import build_bundle
from edgerun.client import Client, Invocation
from edgerun.cluster import LocalCluster, free_port
from edgerun.config import ControlSpec, PopSpec, RegionSpec, Topology
from edgerun.models import FunctionConfig
from edgerun.node.credential import credential_path
from tests.conftest import FUNCTIONS

pytestmark = pytest.mark.integration


def make_topology(pop_capacity_mb: int = 256) -> Topology:
    """One POP with two regions on loopback (round trips well under a cold start,
    so the POP forwards a function's first calls and warms it in the background)."""
    return Topology(
        # Versions are collected when a test asks (POST /v1/admin/gc), never in between.
        control=ControlSpec(port=free_port(), settings={"gc_interval_s": 3600}),
        region=[
            RegionSpec(name="region-1", port=free_port(), capacity_mb=1024),
            RegionSpec(name="region-2", port=free_port(), capacity_mb=1024),
        ],
        pop=[
            PopSpec(
                name="pop-1",
                port=free_port(),
                capacity_mb=pop_capacity_mb,
                regions=["region-1", "region-2"],
            )
        ],
    )


_ADMIN_KEYS: dict[str, str] = {}
"""host:port -> the admin key of the cluster serving there (see :func:`invoke`)."""


def remember_admin_key(cluster: LocalCluster, *urls: str) -> None:
    """Let :func:`invoke` call this cluster's nodes (or ``urls`` leading to them)."""
    for url in [*(n.url for n in cluster.nodes.values()), *urls]:
        _ADMIN_KEYS[httpx.URL(url).netloc.decode()] = cluster.token


def invoke(url: str, name: str, payload: Any = None, **kw: Any) -> Invocation:
    """Direct invoke with the admin key of the cluster at ``url`` (direct invocations
    always need a key; tests/integration/test_auth.py covers the other keys)."""
    kw.setdefault("key", _ADMIN_KEYS.get(httpx.URL(url).netloc.decode(), ""))
    return sdk.invoke(url, name, payload, **kw)


def start_cluster(root: Path, pop_capacity_mb: int = 256) -> LocalCluster:
    cluster = LocalCluster(make_topology(pop_capacity_mb), root)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    remember_admin_key(cluster)
    return cluster


def deploy_folder(client: Client, name: str, folder: Path, **config: object) -> str:
    """Deploy with a public HTTP trigger unless ``auth`` says otherwise: most tests
    here call ``/fn/...`` as an anonymous client would."""
    config.setdefault("auth", "public")
    record = client.deploy(name, build_bundle(folder), FunctionConfig(**config))  # type: ignore[arg-type]
    return record.aliases["latest"]


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def deploy_everywhere(
    cluster: LocalCluster,
    client: Client,
    name: str,
    folder: Path = FUNCTIONS / "echo",
    nodes: tuple[str, ...] = ("pop-1", "region-1", "region-2"),
    **config: Any,
) -> str:
    """Deploy (``main.handler`` unless said) and wait until every node knows the version."""
    config.setdefault("handler", "main.handler")
    sha = deploy_folder(client, name, folder, **config)
    for node in nodes:
        wait_for(node_knows(cluster, node, name, sha), what=f"{node} to learn {name}")
    return sha


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> float:
    """Poll until ``predicate`` holds; returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def admin(cluster: LocalCluster) -> dict[str, str]:
    """Headers for the admin API (node status needs the cluster token)."""
    return {"authorization": f"Bearer {cluster.token}"}


def node_secret(cluster: LocalCluster, node: str) -> str:
    """The secret of a node's own credential (what it forwards and follows the feed with)."""
    path = credential_path(cluster.nodes[node].config)
    return msgspec.json.decode(path.read_bytes(), type=NodeCredential).secret


def node_status(cluster: LocalCluster, node: str) -> dict[str, Any]:
    """The node's status with the first 1,000 functions (a page: more than a test makes)."""
    resp = httpx.get(
        f"{cluster.url(node)}/v1/status",
        params={"limit": 1000},
        headers=admin(cluster),
        timeout=5,
    )
    resp.raise_for_status()
    return resp.json()  # type: ignore[no-any-return]


def node_knows(cluster: LocalCluster, node: str, name: str, sha: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            body = node_status(cluster, node)
        except httpx.HTTPError:
            return False
        fn = body["functions"].get(name)
        return bool(fn and sha in fn["aliases"].values())

    return check


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.stop()


@pytest.fixture(scope="session")
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster.control_url, cluster.token) as c:
        yield c


@pytest.fixture(scope="session")
def pop(cluster: LocalCluster) -> str:
    return cluster.url("pop-1")


@pytest.fixture(scope="session")
def deployed(cluster: LocalCluster, client: Client) -> dict[str, str]:
    """The test functions, deployed once and known to every node."""
    versions = {
        "echo": deploy_folder(
            client, "echo", FUNCTIONS / "echo", handler="main.handler", env={"GREETING": "hi"}
        ),
        "raiser": deploy_folder(client, "raiser", FUNCTIONS / "raiser", handler="main.handler"),
        "sleeper": deploy_folder(
            client, "sleeper", FUNCTIONS / "sleeper", handler="main.handler", timeout_s=1.0
        ),
        "exiter": deploy_folder(client, "exiter", FUNCTIONS / "exiter", handler="main.handler"),
        "broken-import": deploy_folder(
            client, "broken-import", FUNCTIONS / "broken-import", handler="main.handler"
        ),
    }
    for name, sha in versions.items():
        for node in ("pop-1", "region-1", "region-2"):
            wait_for(node_knows(cluster, node, name, sha), what=f"{node} to learn {name}")
    return versions
