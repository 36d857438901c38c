"""Schedules against a real control plane and a fake region that records the async
invocations it is sent (the node-side queue is not needed: its contract is a 202)."""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from edgerun.build import build_bundle
from edgerun.client import Client, EdgerunError
from edgerun.cluster import LocalCluster, free_port
from edgerun.config import ControlSpec, Topology
from edgerun.control.scheduler import request_id
from edgerun.models import FunctionConfig
from tests.conftest import FUNCTIONS
from tests.integration.conftest import bearer, wait_for

pytestmark = pytest.mark.integration

SCALE = 30.0
"""schedule_time_scale: a schedule minute lasts two real seconds."""


class _Region(http.server.BaseHTTPRequestHandler):
    """A 'region' that queues nothing and writes down what it is sent."""

    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        rid = self.headers.get("x-edgerun-request-id", "")
        self.received.append(
            {"path": self.path, "headers": dict(self.headers), "event": json.loads(body)}
        )
        answer = json.dumps({"event_id": rid}).encode()
        self.send_response(202)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    topology = Topology(
        control=ControlSpec(port=free_port(), settings={"schedule_time_scale": SCALE}),
        region=[],
        pop=[],
    )
    cluster = LocalCluster(topology, tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture()
def region(cluster: LocalCluster) -> Iterator[str]:
    """A fake region that joined with a real node credential and keeps beating (also
    through a restart of the control plane, which forgets who is up)."""
    control, auth = cluster.control_url, bearer(cluster.token)
    token = httpx.post(
        f"{control}/v1/join-tokens", json={"role": "region", "name": "fake"}, headers=auth
    ).json()["token"]
    joined = httpx.post(f"{control}/v1/nodes/join", json={"token": token}).json()
    _Region.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Region)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError):  # the control plane is restarting
                httpx.post(
                    f"{control}/v1/nodes/heartbeat",
                    json={"url": url, "role": "region", "interval_s": 1.0},
                    headers=bearer(joined["secret"]),
                    timeout=2,
                )
            stop.wait(0.5)

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        yield url
    finally:
        stop.set()
        beater.join()
        server.shutdown()


def _ticks(name: str) -> list[int]:
    """The ticks of ``name`` the region was sent, in order of arrival."""
    out = []
    for r in list(_Region.received):
        if r["path"] == f"/v1/functions/{name}/invocations":
            out.append(int(datetime.fromisoformat(r["event"]["time"]).timestamp()))
    return out


def _schedule_now(client: Client, name: str) -> float:
    """The control plane's schedule clock now, read off its next fire time."""
    row = next(s for s in client.schedules() if s["name"] == name)
    return datetime.fromisoformat(row["next_fire"]).timestamp() - row["next_fire_in_s"] * SCALE


def test_each_tick_fires_once_and_a_restart_catches_up_without_repeating(
    cluster: LocalCluster, region: str
) -> None:
    name = "ticker"
    with Client(cluster.control_url, cluster.token) as client:
        client.deploy(
            name, build_bundle(FUNCTIONS / "echo"), FunctionConfig(schedule="rate(1 minute)")
        )
        wait_for(lambda: len(_ticks(name)) >= 2, timeout=15, what="two ticks")
        first = _Region.received[0]
        event, headers = first["event"], first["headers"]
        assert headers["x-edgerun-invocation-type"] == "Event"
        assert headers["x-edgerun-node-token"]  # the control plane's own node credential
        tick = _ticks(name)[0]
        assert tick % 60 == 0
        assert headers["x-edgerun-request-id"] == request_id(name, tick)
        assert event["detail-type"] == "Scheduled Event"
        assert event["source"] == "aws.events"
        assert event["time"].endswith("Z")
        assert event["resources"] == [f"arn:aws:events:edgerun:000000000000:rule/{name}"]
        assert event["detail"] == {}
        # The credential is a node's, and the control plane's alone: not listed as a node.
        nodes = client.nodes()
        assert [n["name"] for n in nodes if not n["revoked"]] == ["fake"]
        row = next(s for s in client.schedules() if s["name"] == name)
        assert row["schedule"] == "rate(1 minute)"
        assert row["last_fired"] is not None and row["next_fire"] > row["last_fired"]

    cluster.kill("control", signal.SIGTERM)
    before = _ticks(name)
    time.sleep(3 * 60 / SCALE + 0.5)  # more than three ticks go by while it is down
    cluster.start_node("control")
    cluster.wait_healthy(["control"])
    with Client(cluster.control_url, cluster.token) as client:
        wait_for(lambda: len(_ticks(name)) >= len(before) + 2, timeout=15, what="ticks again")
        restarted_at = _schedule_now(client, name)
    ticks = _ticks(name)
    assert len(ticks) == len(set(ticks)), f"a tick was sent twice: {ticks}"
    assert ticks == sorted(ticks)
    catch_up = ticks[len(before)]
    # The one catch-up tick: the latest missed (those before it are skipped), sent at
    # once, not the next one after the restart (which is all a lost state would give).
    assert catch_up >= before[-1] + 3 * 60
    assert catch_up <= restarted_at
    after = ticks[len(before) :]
    assert all(b - a == 60 for a, b in itertools.pairwise(after))


def test_schedules_list_a_tenants_own_and_bad_ones_are_refused(
    cluster: LocalCluster, region: str, tmp_path: Path
) -> None:
    bundle = build_bundle(FUNCTIONS / "echo")
    with Client(cluster.control_url, cluster.token) as admin:
        admin.create_tenant("acme")
        admin.deploy("acme.nightly", bundle, FunctionConfig(schedule="cron(0 3 * * ? *)"))
        admin.deploy("mine", bundle, FunctionConfig(schedule="*/5 * * * *"))
        admin.deploy("plain", bundle, FunctionConfig())
        with pytest.raises(EdgerunError) as info:
            admin.deploy("bad", bundle, FunctionConfig(schedule="rate(5 minute)"))
        assert info.value.status == 400
        assert "write 'rate(5 minutes)'" in info.value.message
        assert sorted(s["name"] for s in admin.schedules()) == ["acme.nightly", "mine"]
        acme_key = admin.create_key(["read"], tenant="acme")["secret"]
    with Client(cluster.control_url, acme_key) as acme:
        rows = list(acme.schedules())
    assert [r["name"] for r in rows] == ["acme.nightly"]
    assert rows[0]["next_fire"].endswith("T03:00:00Z")
    assert rows[0]["last_fired"] is None
    raw = httpx.get(f"{cluster.control_url}/v1/schedules?limit=1", headers=bearer(cluster.token))
    assert raw.json()["next"] == "acme.nightly"

    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGERUN_")}
    cli = [sys.executable, "-m", "edgerun", "schedules", "--control", cluster.control_url,
           "--key", acme_key]  # fmt: skip
    shown = subprocess.run(
        [*cli, "--json"], capture_output=True, text=True, timeout=60,
        env={**env, "EDGERUN_HOME": str(tmp_path)},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert [r["name"] for r in json.loads(shown.stdout)["schedules"]] == ["acme.nightly"]
    table = subprocess.run(
        cli, capture_output=True, text=True, timeout=60,
        env={**env, "EDGERUN_HOME": str(tmp_path), "COLUMNS": "200"},
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "acme.nightly" in table.stdout and "cron(0 3 * * ? *)" in table.stdout
    assert "mine" not in table.stdout
