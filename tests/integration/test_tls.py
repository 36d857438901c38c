"""TLS on real processes: every node serves HTTPS, and nodes verify whom they call.

The whole cluster (control plane, region, POPs) serves one certificate for
127.0.0.1 signed by a throwaway CA that every node trusts through ``[tls] ca``,
so the feed and bundles (node to control plane), health checks and forwards
(POP to region) all run over verified HTTPS. A POP that trusts an unrelated CA
instead must then fail to reach its region, while the region itself stays up
for everyone who trusts the right CA: verification is real, not decorative.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from edgerun.client import Client, invoke
from edgerun.cluster import LocalCluster, free_port
from edgerun.config import (
    ControlSpec,
    NodeConfig,
    PopSpec,
    RegionRef,
    RegionSpec,
    TlsConfig,
    Topology,
    dump_toml,
)
from edgerun.node.regions import AllRegionsDown, Regions
from edgerun.tls import client_verify
from tests.conftest import FUNCTIONS
from tests.integration.conftest import admin, deploy_folder, wait_for
from tests.pki import issue_server, make_ca

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Pki:
    tls: TlsConfig
    """What every node serves with and trusts."""
    other_ca: str
    """An unrelated CA: it signed nothing the cluster serves."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca("edgerun test CA")
    ca_pem, _ = ca.write(folder, "ca")
    cert, key = issue_server(ca, "127.0.0.1").write(folder, "node")
    other_pem, _ = make_ca("unrelated CA").write(folder, "other-ca")
    return Pki(TlsConfig(cert=str(cert), key=str(key), ca=str(ca_pem)), str(other_pem))


@pytest.fixture(scope="module")
def cluster(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """pop-1 keeps trusting the cluster's CA; pop-2 is turned against it in a test."""
    topology = Topology(
        control=ControlSpec(port=free_port()),
        region=[RegionSpec(name="region-1", port=free_port(), capacity_mb=512)],
        pop=[
            PopSpec(name="pop-1", port=free_port(), capacity_mb=256),
            PopSpec(name="pop-2", port=free_port(), capacity_mb=256),
        ],
    )
    c = LocalCluster(topology, tmp_path_factory.mktemp("tls-cluster"), tls=pki.tls)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def https(pki: Pki) -> Iterator[httpx.Client]:
    """A client that trusts the cluster's CA (and nothing else)."""
    with httpx.Client(verify=client_verify(TlsConfig(ca=pki.tls.ca)), timeout=30) as http:
        yield http


def status(cluster: LocalCluster, https: httpx.Client, node: str) -> dict[str, Any]:
    resp = https.get(
        f"{cluster.url(node)}/v1/status", params={"limit": 1000}, headers=admin(cluster)
    )
    resp.raise_for_status()
    return resp.json()  # type: ignore[no-any-return]


def knows(cluster: LocalCluster, https: httpx.Client, node: str, sha: str) -> Callable[[], bool]:
    def check() -> bool:
        fn = status(cluster, https, node)["functions"].get("echo")
        return bool(fn and sha in fn["aliases"].values())

    return check


@pytest.fixture(scope="module")
def echo(cluster: LocalCluster, pki: Pki, https: httpx.Client) -> str:
    """``echo``, which only runs in regions, deployed over HTTPS and learned by
    every node through its feed from the HTTPS control plane."""
    with Client(cluster.control_url, cluster.token, verify=client_verify(pki.tls)) as client:
        sha = deploy_folder(
            client, "echo", FUNCTIONS / "echo", handler="main.handler", placement="region"
        )
    for node in ("region-1", "pop-1", "pop-2"):
        wait_for(knows(cluster, https, node, sha), what=f"{node} to learn echo over HTTPS")
    return sha


def test_every_node_serves_https_to_a_client_that_trusts_the_ca(
    cluster: LocalCluster, https: httpx.Client
) -> None:
    for name in ("control", "region-1", "pop-1"):
        url = cluster.url(name)
        assert url.startswith("https://127.0.0.1:")
        resp = https.get(f"{url}/v1/health")
        assert resp.status_code == 200
        assert resp.json()["status"] == "ok"
    region = cluster.url("region-1")
    # Nobody else's trust makes it through: not the system's roots, not plain HTTP.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{region}/v1/health", timeout=5)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{region.replace('https://', 'http://')}/v1/health", timeout=5)


def test_a_pop_forwards_to_its_region_over_https(
    cluster: LocalCluster, https: httpx.Client, echo: str
) -> None:
    result = invoke(cluster.url("pop-1"), "echo", {"n": 1}, client=https, key=cluster.token)
    assert result.status == 200, result.content
    assert result.placement == "forwarded:region-1"
    assert result.json()["event"] == {"n": 1}
    regions = status(cluster, https, "pop-1")["regions"]
    assert [(r["url"], r["healthy"]) for r in regions] == [(cluster.url("region-1"), True)]


def test_a_pop_that_trusts_another_ca_cannot_reach_its_region(
    cluster: LocalCluster, pki: Pki, https: httpx.Client, echo: str
) -> None:
    # pop-2 learnt echo while it trusted the cluster's CA (its registry copy is
    # on disk); it restarts with only its trust changed: same certificate, same
    # region URL, same region process.
    node = cluster.nodes["pop-2"]
    cluster.kill("pop-2")
    distrusting = msgspec.structs.replace(pki.tls, ca=pki.other_ca)
    node.config = msgspec.structs.replace(node.config, tls=distrusting)
    node.config_path.write_text(dump_toml(node.config))
    cluster.start_node("pop-2")
    cluster.wait_healthy(["pop-2"])

    def region_down() -> bool:
        return not status(cluster, https, "pop-2")["regions"][0]["healthy"]

    wait_for(region_down, what="pop-2 to find region-1 unreachable")
    result = invoke(cluster.url("pop-2"), "echo", {"n": 2}, client=https, key=cluster.token)
    assert result.status == 503, result.content
    error = result.json()["error"]
    assert error["type"] == "Unavailable"
    assert "region" in error["message"]
    assert result.reason == "all-regions-down"
    assert result.headers["content-type"].startswith("application/json")
    # Why: the region's certificate, which the unrelated CA did not sign ...
    log = node.log_path.read_text()
    assert "region region-1 is down" in log
    assert "CERTIFICATE_VERIFY_FAILED" in log
    # ... while the region is up for whoever trusts the right CA, through pop-1 too.
    assert https.get(f"{cluster.url('region-1')}/v1/health").status_code == 200
    ok = invoke(cluster.url("pop-1"), "echo", {"n": 3}, client=https, key=cluster.token)
    assert (ok.status, ok.placement) == (200, "forwarded:region-1")


def test_the_forwarder_verifies_with_the_context_it_is_given(
    cluster: LocalCluster, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """Forwards go through node/upstream.py, not the node's httpx client, and a POP that
    cannot verify a region never forwards to it (its health checks fail first),
    so the end-to-end test above cannot tell whether the forwarder checks too.
    Here it is driven directly against the running region. (That the node gives
    it its ``ca`` is shown by forwarding through pop-1 working at all: the
    default, the system's roots, would refuse the test CA.)"""

    async def forward(ca: str) -> int | None:
        verify = client_verify(TlsConfig(ca=ca))
        async with httpx.AsyncClient(verify=verify) as client:
            ref = RegionRef(name="region-1", url=cluster.url("region-1"))
            regions = Regions([ref], client, verify=verify)
            try:
                _, reply = await regions.forward(
                    ["region-1"], "GET", "/v1/health", [], b"", timeout_s=5, idempotent=False
                )
            except AllRegionsDown:
                return None
            finally:
                await regions.close()
            return reply.status

    assert asyncio.run(forward(pki.tls.ca)) == 200
    with caplog.at_level(logging.WARNING, logger="edgerun.node.regions"):
        assert asyncio.run(forward(pki.other_ca)) is None
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


def test_a_node_with_a_missing_key_stops_with_one_line(pki: Pki, tmp_path: Path) -> None:
    """Checked before the node creates anything (a control plane would otherwise
    have made and printed its admin token first)."""
    missing = tmp_path / "missing.key"
    cfg = NodeConfig(
        role="control",
        name="control",
        data_dir=str(tmp_path / "data"),
        port=free_port(),
        tls=TlsConfig(cert=pki.tls.cert, key=str(missing)),
    )
    config = tmp_path / "node.toml"
    config.write_text(dump_toml(cfg))
    done = subprocess.run(
        [sys.executable, "-m", "edgerun", "node", "--role", "control", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"tls: cannot read {missing}" in " ".join(done.stderr.split())
    assert not (tmp_path / "data").exists()
