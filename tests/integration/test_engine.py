"""Engine features seen through a node: prewarm, pool view, captured output, doctor."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from edgerun.client import Client
from edgerun.cluster import LocalCluster
from tests.conftest import FUNCTIONS
from tests.integration.conftest import deploy_folder, invoke, node_knows, node_status, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def printer(cluster: LocalCluster, client: Client) -> str:
    sha = deploy_folder(client, "printer", FUNCTIONS / "printer", handler="main.handler")
    for node in ("pop-1", "region-1"):
        wait_for(node_knows(cluster, node, "printer", sha), what=f"{node} to learn printer")
    return sha


def auth(cluster: LocalCluster) -> dict[str, str]:
    return {"authorization": f"Bearer {cluster.token}"}


def test_output_is_captured_with_the_request_id(
    cluster: LocalCluster, pop: str, printer: str
) -> None:
    result = invoke(pop, "printer", {})
    request_id = result.headers["x-edgerun-request-id"]
    resp = httpx.get(f"{pop}/v1/logs", params={"request_id": request_id}, headers=auth(cluster))
    # Where it ran (a first call at a POP without its code may go to a region, whose
    # entry the POP's query finds under the same request id).
    [entry] = [e for e in resp.json()["logs"] if not e["placement"].startswith("forwarded")]
    assert entry["output"] == "to stdout\nto stderr\n"
    assert entry["function"] == "printer"


def test_region_output_is_found_through_the_pop(
    cluster: LocalCluster, pop: str, printer: str
) -> None:
    region = cluster.url("region-1")
    resp = httpx.post(f"{region}/v1/functions/printer/invocations", json={}, headers=auth(cluster))
    assert resp.status_code == 200
    request_id = resp.headers["x-edgerun-request-id"]  # the region's own: callers cannot set it
    found = httpx.get(
        f"{pop}/v1/logs", params={"request_id": request_id}, headers=auth(cluster)
    ).json()["logs"]
    assert found[0]["node"] == "region-1"


def test_logs_need_the_token(pop: str) -> None:
    assert httpx.get(f"{pop}/v1/logs", params={"function": "printer"}).status_code == 401


def test_prewarm_makes_the_first_request_warm(
    cluster: LocalCluster, client: Client, tmp_path
) -> None:
    (tmp_path / "main.py").write_text("def handler(event, context):\n    return 'warm'\n")
    sha = deploy_folder(client, "prewarmed", tmp_path, handler="main.handler")
    region = cluster.url("region-2")
    wait_for(node_knows(cluster, "region-2", "prewarmed", sha), what="region-2 to learn it")
    resp = httpx.post(
        f"{region}/v1/admin/prewarm",
        json={"function": "prewarmed", "count": 2},
        headers=auth(cluster),
    )
    assert resp.json()["started"] == 2
    pool = httpx.get(f"{region}/v1/pool", headers=auth(cluster)).json()
    [entry] = [v for v in pool["versions"] if v["function"] == "prewarmed"]
    assert entry["idle"] == 2
    assert invoke(region, "prewarmed", {}).placement == "local-warm"


def test_prewarm_with_a_bad_count_is_400(cluster: LocalCluster, pop: str) -> None:
    resp = httpx.post(
        f"{pop}/v1/admin/prewarm", json={"function": "printer", "count": 0}, headers=auth(cluster)
    )
    assert resp.status_code == 400


def test_status_reports_the_isolation_layers(cluster: LocalCluster) -> None:
    layers = node_status(cluster, "pop-1")["isolation"]
    names = {layer["name"]: layer["active"] for layer in layers}
    assert "seccomp deny-list" in names
    if os.geteuid() == 0 and sys.platform == "linux":
        assert names["pid namespace"] is True


def test_import_error_shows_on_every_node_that_tried(
    cluster: LocalCluster, client: Client, deployed: dict
) -> None:
    region = cluster.url("region-2")
    assert invoke(region, "broken-import", {}).status == 500
    errors = node_status(cluster, "region-2")["functions"]["broken-import"]
    assert "ModuleNotFoundError" in str(errors["init_errors"])


def test_doctor_prints_each_layer() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgerun", "doctor"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0
    assert "seccomp deny-list" in result.stdout
    assert "layers active" in result.stdout
