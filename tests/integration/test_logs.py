"""Fleet-wide logs: nodes tell the control plane where they are, and `edgerun logs`
follows invocation records and output from every node, merged by time."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
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
    node_secret,
    remember_admin_key,
    wait_for,
)

pytestmark = pytest.mark.integration

POPS = ("pop-a", "pop-b")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    beat = {"heartbeat_s": 0.5}
    topology = Topology(
        control=ControlSpec(port=free_port(), settings={"gc_interval_s": 3600}),
        region=[RegionSpec(name="region-1", port=free_port(), settings=beat)],
        pop=[
            PopSpec(name=name, port=free_port(), regions=["region-1"], settings=beat)
            for name in POPS
        ],
    )
    cluster = LocalCluster(topology, tmp_path_factory.mktemp("fleet"))
    try:
        cluster.start()
        remember_admin_key(cluster)
        with Client(cluster.control_url, cluster.token) as client:
            nodes = ("region-1", *POPS)
            deploy_everywhere(
                cluster, client, "printer", FUNCTIONS / "printer", nodes, placement="edge"
            )
            deploy_everywhere(
                cluster, client, "raiser", FUNCTIONS / "raiser", nodes, placement="edge"
            )
            deploy_everywhere(
                cluster, client, "far", FUNCTIONS / "printer", nodes, placement="region"
            )
        yield cluster
    finally:
        cluster.stop()


def call(cluster: LocalCluster, node: str, name: str) -> str:
    resp = httpx.post(
        f"{cluster.url(node)}/v1/functions/{name}/invocations", json={}, headers=admin(cluster)
    )
    assert resp.status_code in (200, 500), resp.text
    return resp.headers["x-edgerun-request-id"]


def nodes(cluster: LocalCluster, token: str | None = None) -> dict[str, dict[str, Any]]:
    headers = {"authorization": f"Bearer {token or cluster.token}"}
    resp = httpx.get(f"{cluster.control_url}/v1/nodes", headers=headers)
    resp.raise_for_status()
    return {n["name"]: n for n in resp.json()["nodes"]}


def cli_env(cluster: LocalCluster, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "EDGERUN_CONTROL": cluster.control_url,
        "EDGERUN_TOKEN": cluster.token,
        "EDGERUN_HOME": str(home),
        "COLUMNS": "200",
    }


def test_every_node_registers_its_url_and_is_up(fleet: LocalCluster) -> None:
    wait_for(lambda: all(n["state"] == "up" for n in nodes(fleet).values()), what="beats")
    seen = nodes(fleet)
    assert set(seen) == {"region-1", *POPS}
    for name, view in seen.items():
        assert view["url"] == fleet.url(name)
        assert view["role"] == fleet.nodes[name].config.role


def test_a_stopped_node_shows_down_then_up_again(fleet: LocalCluster) -> None:
    fleet.kill("pop-b", signal.SIGTERM)
    wait_for(lambda: nodes(fleet)["pop-b"]["state"] == "down", timeout=10, what="pop-b down")
    fleet.start_node("pop-b")
    fleet.wait_healthy(["pop-b"])
    wait_for(lambda: nodes(fleet)["pop-b"]["state"] == "up", what="pop-b up")


def test_invocation_records_survive_a_node_restart(fleet: LocalCluster) -> None:
    request_id = call(fleet, "pop-a", "printer")
    fleet.kill("pop-a", signal.SIGTERM)
    fleet.start_node("pop-a")
    fleet.wait_healthy(["pop-a"])
    resp = httpx.get(
        f"{fleet.url('pop-a')}/v1/logs", params={"request_id": request_id}, headers=admin(fleet)
    )
    [entry] = resp.json()["logs"]
    assert entry["output"] == "to stdout\nto stderr\n"
    assert (entry["status"], entry["function"], entry["node"]) == (200, "printer", "pop-a")
    assert entry["placement"].startswith("local-")


def test_logs_follow_merges_both_pops_by_time(fleet: LocalCluster, tmp_path: Path) -> None:
    since = str(time.time() - 1)  # absolute: the follower may take a while to start
    follower = subprocess.Popen(
        [sys.executable, "-m", "edgerun", "logs", "printer", "-f", "--json", "--since", since,
         "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(fleet, tmp_path),
    )  # fmt: skip
    lines: list[dict[str, Any]] = []
    reader = threading.Thread(
        target=lambda: lines.extend(json.loads(text) for text in follower.stdout or ()),
        daemon=True,
    )
    reader.start()
    try:
        made = [call(fleet, POPS[i % 2], "printer") for i in range(6)]
        wait_for(lambda: {e["request_id"] for e in lines} >= set(made), timeout=15, what="all six")
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(10)
    ours = [e for e in lines if e["request_id"] in made]
    assert {e["node"] for e in ours} == set(POPS)
    assert all(e["output"] == "to stdout\nto stderr\n" for e in ours)
    assert [e["request_id"] for e in sorted(ours, key=lambda e: e["at"])] == made


def test_logs_status_error_shows_only_failures(fleet: LocalCluster, tmp_path: Path) -> None:
    ok = call(fleet, "pop-a", "printer")
    failed = call(fleet, "pop-b", "raiser")
    wait_for(lambda: _logged(fleet, "pop-b", failed), what="the failure on disk")
    done = subprocess.run(
        [sys.executable, "-m", "edgerun", "logs", "--status", "error", "--json", "--since", "1m"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(fleet, tmp_path),
    )
    assert done.returncode == 0, done.stderr
    found = [json.loads(text) for text in done.stdout.splitlines()]
    ids = {e["request_id"] for e in found}
    assert failed in ids and ok not in ids
    [entry] = [e for e in found if e["request_id"] == failed]
    assert (entry["status"], entry["error"]) == (500, "ValueError")
    assert "ValueError: bad value" in entry["output"]


def test_nodes_command_lists_them_with_their_state(fleet: LocalCluster, tmp_path: Path) -> None:
    wait_for(lambda: all(n["state"] == "up" for n in nodes(fleet).values()), what="beats")
    done = subprocess.run(
        [sys.executable, "-m", "edgerun", "nodes"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(fleet, tmp_path),
    )
    assert done.returncode == 0, done.stderr
    for name in ("region-1", *POPS):
        row = next(text for text in done.stdout.splitlines() if f" {name} " in text)
        assert fleet.url(name) in row and " up " in row


def test_a_tenant_key_sees_node_urls_but_not_credentials(fleet: LocalCluster) -> None:
    with Client(fleet.control_url, fleet.token) as client:
        client.create_tenant("acme")
        key = client.create_key(["read:*"], tenant="acme")
    wait_for(lambda: all(n["state"] == "up" for n in nodes(fleet).values()), what="beats")
    seen = nodes(fleet, key["secret"])
    assert set(seen) >= set(POPS)
    assert all(set(v) == {"name", "role", "url", "state"} for v in seen.values())


def test_a_heartbeat_from_a_user_key_is_refused(fleet: LocalCluster) -> None:
    resp = httpx.post(
        f"{fleet.control_url}/v1/nodes/heartbeat",
        json={"url": "http://127.0.0.1:1", "role": "pop"},
        headers=admin(fleet),
    )
    assert resp.status_code == 403
    assert "node" in resp.json()["error"]["message"]


def _logged(cluster: LocalCluster, node: str, request_id: str) -> bool:
    resp = httpx.get(
        f"{cluster.url(node)}/v1/logs", params={"request_id": request_id}, headers=admin(cluster)
    )
    return bool(resp.json()["logs"])


def test_a_forwarded_requests_entries_come_from_the_pop_and_the_region(
    fleet: LocalCluster,
) -> None:
    request_id = call(fleet, "pop-a", "far")
    resp = httpx.get(
        f"{fleet.url('pop-a')}/v1/logs", params={"request_id": request_id}, headers=admin(fleet)
    )
    entries = {e["node"]: e for e in resp.json()["logs"]}
    assert set(entries) == {"pop-a", "region-1"}
    assert entries["pop-a"]["placement"] == "forwarded:region-1"
    assert entries["region-1"]["from_node"] == "pop-a"
    assert entries["region-1"]["output"] == "to stdout\nto stderr\n"


@pytest.mark.parametrize("mode", ["all", "since", "errors", "request_id", "forwarded"])
def test_another_tenants_key_sees_no_default_tenant_entries(fleet: LocalCluster, mode: str) -> None:
    ids = {"request_id": call(fleet, "pop-a", "printer"), "forwarded": call(fleet, "pop-a", "far")}
    call(fleet, "pop-a", "raiser")
    with Client(fleet.control_url, fleet.token) as client:
        with contextlib.suppress(Exception):
            client.create_tenant("nosy")
        key = client.create_key(["read"], tenant="nosy")
    params = {
        "all": {},
        "since": {"since": "0"},
        "errors": {"status": "error"},
        "request_id": {"request_id": ids["request_id"]},
        "forwarded": {"request_id": ids["forwarded"]},
    }[mode]
    for node in ("pop-a", "region-1"):
        resp = httpx.get(
            f"{fleet.url(node)}/v1/logs",
            params=params,
            headers={"authorization": f"Bearer {key['secret']}"},
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["logs"] == []
    mine = httpx.get(f"{fleet.url('pop-a')}/v1/logs", params=params, headers=admin(fleet))
    if mode != "since":  # the admin's own view of the same query is not empty
        assert mine.json()["logs"] != []


def test_a_node_may_not_advertise_an_address_other_than_its_own(fleet: LocalCluster) -> None:
    resp = httpx.post(
        f"{fleet.control_url}/v1/nodes/heartbeat",
        json={"url": "http://127.0.0.2:8720", "role": "pop"},
        headers={"authorization": f"Bearer {node_secret(fleet, 'pop-b')}"},
    )
    assert resp.status_code == 400
    assert "own address" in resp.json()["error"]["message"]
    assert nodes(fleet)["pop-b"]["url"] == fleet.url("pop-b")


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"since": "yesterday"}, "Unix seconds"),
        ({"since": "-5"}, "Unix seconds"),
        ({"status": "bogus"}, "'all' or 'error'"),
        ({"limit": "0"}, "limit"),
        ({"settled": "maybe"}, "true or false"),
        ({"output": "none"}, "true or false"),
    ],
)
def test_a_malformed_log_query_is_a_clear_400(
    fleet: LocalCluster, params: dict[str, str], says: str
) -> None:
    resp = httpx.get(f"{fleet.url('pop-a')}/v1/logs", params=params, headers=admin(fleet))
    assert resp.status_code == 400
    assert says in resp.json()["error"]["message"]
