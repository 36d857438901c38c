"""Asynchronous invocations on real processes: durable queue, retries, dead letters,
and the faults the issue names (a node killed with 1,000 events queued, the control
plane down, a function that always fails, a region dying mid-event)."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from edgerun.client import Client
from edgerun.cluster import LocalCluster, free_port
from edgerun.config import ControlSpec, PopSpec, RegionSpec, Topology
from edgerun.models import AsyncConfig
from tests.conftest import FUNCTIONS
from tests.integration.conftest import admin, deploy_everywhere, remember_admin_key, wait_for

pytestmark = pytest.mark.integration

NODES = ("pop-1", "region-1", "region-2")


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    fast = {"async_retry_base_s": 0.2, "async_slots": 8}
    topology = Topology(
        # Schedules run 30x faster here: rate(1 minute) ticks every 2 s.
        control=ControlSpec(
            port=free_port(), settings={"gc_interval_s": 3600, "schedule_time_scale": 30}
        ),
        region=[
            RegionSpec(name=r, port=free_port(), settings=fast) for r in ("region-1", "region-2")
        ],
        pop=[PopSpec(name="pop-1", port=free_port(), regions=["region-1", "region-2"],
                     settings=fast)],
    )  # fmt: skip
    cluster = LocalCluster(topology, tmp_path_factory.mktemp("async"))
    try:
        cluster.start()
        remember_admin_key(cluster)
        with Client(cluster.control_url, cluster.token) as client:
            deploy_everywhere(cluster, client, "q-edge", FUNCTIONS / "counter", NODES,
                              placement="edge", timeout_s=10)  # fmt: skip
            deploy_everywhere(cluster, client, "q-far", FUNCTIONS / "counter", NODES,
                              placement="region", timeout_s=10, idempotent=False)  # fmt: skip
            deploy_everywhere(cluster, client, "q-fail", FUNCTIONS / "counter", NODES,
                              placement="edge", async_=AsyncConfig(max_retries=2))  # fmt: skip
        yield cluster
    finally:
        cluster.stop()


def enqueue(cluster: LocalCluster, node: str, name: str, event: dict[str, Any]) -> str:
    resp = httpx.post(
        f"{cluster.url(node)}/v1/functions/{name}/invocations",
        json=event,
        headers={**admin(cluster), "x-edgerun-invocation-type": "Event"},
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["event_id"])


def runs(cluster: LocalCluster, name: str) -> Counter[str]:
    """Successful runs per event id, from every node's invocation log."""
    done: Counter[str] = Counter()
    for node in NODES:
        since = 0.0
        while True:  # page by the time entries were logged
            try:
                resp = httpx.get(
                    f"{cluster.url(node)}/v1/logs",
                    params={"function": name, "limit": "1000", "since": repr(since),
                            "settled": "false"},
                    headers=admin(cluster),
                    timeout=30,
                )  # fmt: skip
            except httpx.ConnectError:
                break  # a node a test stopped: what it ran before is read once it is back
            page = resp.json()["logs"]
            for e in page:
                if e["status"] == 200 and e["placement"].startswith("local-"):
                    done[e["request_id"].rsplit(".", 1)[0]] += 1
            if len(page) < 1000:
                break
            since = max(e["logged_at"] for e in page)
    return done


def async_stats(cluster: LocalCluster, node: str) -> dict[str, Any]:
    resp = httpx.get(f"{cluster.url(node)}/v1/status", headers=admin(cluster), timeout=10)
    return resp.json()["async"]  # type: ignore[no-any-return]


def test_an_event_is_accepted_with_202_and_runs(topo: LocalCluster) -> None:
    event_id = enqueue(topo, "pop-1", "q-edge", {"n": 1})
    wait_for(lambda: runs(topo, "q-edge")[event_id] == 1, timeout=20, what="the event to run")


def test_a_forwarded_event_runs_at_the_region(topo: LocalCluster) -> None:
    event_id = enqueue(topo, "pop-1", "q-far", {"n": 2})
    wait_for(lambda: runs(topo, "q-far")[event_id] == 1, timeout=20, what="the event to run")


def dead_letters(cluster: LocalCluster, node: str, name: str) -> list[dict[str, Any]]:
    resp = httpx.get(
        f"{cluster.url(node)}/v1/dlq", params={"function": name}, headers=admin(cluster)
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["dead_letters"]  # type: ignore[no-any-return]


def test_a_function_that_always_fails_ends_in_the_dead_letters(topo: LocalCluster) -> None:
    ids = {enqueue(topo, "pop-1", "q-fail", {"n": i, "fail": True}) for i in range(3)}
    wait_for(
        lambda: {d["id"] for d in dead_letters(topo, "pop-1", "q-fail")} >= ids,
        timeout=30,
        what="every event in the dead letters",
    )
    for letter in dead_letters(topo, "pop-1", "q-fail"):
        if letter["id"] not in ids:
            continue
        assert letter["reason"] == "RetriesExhausted"
        assert len(letter["attempts"]) == 3  # the first run and max_retries = 2
        assert all(a["error"] == "Unhandled" for a in letter["attempts"])
        assert all("failing as asked" in a["message"] for a in letter["attempts"])
        assert letter["event"]["fail"] is True
        assert letter["died_at"] >= letter["enqueued_at"]
    assert async_stats(topo, "pop-1")["dead_letters"] >= 3


def test_dead_letters_are_shown_replayed_and_purged_by_the_cli(
    topo: LocalCluster, tmp_path: Path
) -> None:
    event_id = enqueue(topo, "pop-1", "q-fail", {"n": 99, "fail": True})
    wait_for(
        lambda: event_id in {d["id"] for d in dead_letters(topo, "pop-1", "q-fail")},
        timeout=30,
        what="the event in the dead letters",
    )
    env = {
        **os.environ, "EDGERUN_CONTROL": topo.control_url, "EDGERUN_TOKEN": topo.token,
        "EDGERUN_HOME": str(tmp_path), "COLUMNS": "200",
    }  # fmt: skip

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "edgerun", *args],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done

    listed = json.loads(cli("dlq", "ls", "q-fail", "--json").stdout)
    assert event_id in {d["id"] for d in listed}
    shown = json.loads(cli("dlq", "show", "q-fail", event_id, "--json").stdout)
    assert shown["event"]["n"] == 99 and len(shown["attempts"]) == 3
    assert "replayed 1" in cli("dlq", "replay", "q-fail", "--id", event_id).stdout
    # Replayed, it fails again, three more times, and is back.
    wait_for(
        lambda: any(
            d["id"] == event_id and len(d["attempts"]) == 6
            for d in dead_letters(topo, "pop-1", "q-fail")
        ),
        timeout=30,
        what="the replayed event back in the dead letters",
    )
    cli("dlq", "purge", "q-fail", "--yes")
    assert dead_letters(topo, "pop-1", "q-fail") == []


def test_events_queued_at_a_pop_run_while_the_control_plane_is_down(topo: LocalCluster) -> None:
    topo.kill("control", signal.SIGTERM)
    try:
        ids = [enqueue(topo, "pop-1", "q-edge", {"n": i}) for i in range(20)]
        wait_for(lambda: set(runs(topo, "q-edge")) >= set(ids), timeout=30, what="all 20 to run")
    finally:
        topo.start_node("control")
        topo.wait_healthy(["control"])


def test_an_event_whose_region_dies_mid_run_runs_again_and_is_not_lost(
    topo: LocalCluster,
) -> None:
    event_id = enqueue(topo, "pop-1", "q-far", {"n": 7, "sleep_s": 3})

    def running_somewhere() -> str | None:
        for region in ("region-1", "region-2"):
            if async_stats(topo, "pop-1")["running"] and _busy(topo, region):
                return region
        return None

    wait_for(lambda: running_somewhere() is not None, timeout=20, what="the event to start")
    region = running_somewhere()
    assert region is not None
    topo.kill(region, signal.SIGKILL)
    try:
        wait_for(lambda: runs(topo, "q-far")[event_id] >= 1, timeout=60, what="a finished run")
    finally:
        topo.start_node(region)
        topo.wait_healthy([region])
    letters = dead_letters(topo, "pop-1", "q-far")
    assert event_id not in {d["id"] for d in letters}


def _busy(cluster: LocalCluster, node: str) -> bool:
    try:
        resp = httpx.get(f"{cluster.url(node)}/v1/status", headers=admin(cluster), timeout=2)
    except httpx.HTTPError:
        return False
    return bool(resp.json()["pool"]["busy"])


class _Collector(http.server.BaseHTTPRequestHandler):
    """Where the reporter function says it ran: an observer outside every node."""

    runs: ClassVar[Counter[str]] = Counter()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.runs[body["request_id"].rsplit(".", 1)[0]] += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_pop_killed_with_1000_events_queued_runs_every_one_after_restart(
    topo: LocalCluster,
) -> None:
    with Client(topo.control_url, topo.token) as client:
        deploy_everywhere(topo, client, "q-report", FUNCTIONS / "reporter", NODES,
                          placement="edge", network=True, timeout_s=10,
                          async_=AsyncConfig(max_concurrency=2))  # fmt: skip
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    report_to = f"http://127.0.0.1:{collector.server_address[1]}/ran"
    ids: list[str] = []
    headers = {**admin(topo), "x-edgerun-invocation-type": "Event"}
    try:
        with httpx.Client(timeout=30, headers=headers) as http_client:
            for i in range(1000):
                resp = http_client.post(
                    f"{topo.url('pop-1')}/v1/functions/q-report/invocations",
                    json={"n": i, "sleep_s": 0.05, "report_to": report_to},
                )
                assert resp.status_code == 202, resp.text
                ids.append(resp.json()["event_id"])
        at_kill = async_stats(topo, "pop-1")
        topo.kill("pop-1", signal.SIGKILL)
        topo.start_node("pop-1")
        topo.wait_healthy(["pop-1"])
        wait_for(lambda: all(_Collector.runs[i] for i in ids), timeout=240,
                 what="all 1000 to run")  # fmt: skip
    finally:
        collector.shutdown()
    duplicated = sum(_Collector.runs[i] - 1 for i in ids)
    lost = sum(1 for i in ids if not _Collector.runs[i])
    print(
        f"\n1000 events: queued at the kill {at_kill['queued']}, running {at_kill['running']};"
        f" run {sum(1 for i in ids if _Collector.runs[i])}, duplicated {duplicated}, lost {lost}"
    )
    assert at_kill["queued"] > 100  # the kill did catch a queue
    assert lost == 0
    assert duplicated <= at_kill["running"] + 2  # only what was mid-run may run twice


def test_a_schedule_fires_events_that_run_at_a_region(topo: LocalCluster) -> None:
    with Client(topo.control_url, topo.token) as client:
        deploy_everywhere(topo, client, "q-tick", FUNCTIONS / "lambda-context", NODES,
                          schedule="rate(1 minute)")  # fmt: skip

    def ticks() -> list[dict[str, Any]]:
        found = []
        for region in ("region-1", "region-2"):
            resp = httpx.get(
                f"{topo.url(region)}/v1/logs",
                params={"function": "q-tick", "since": "0", "settled": "false"},
                headers=admin(topo),
            )
            found += [e for e in resp.json()["logs"] if e["status"] == 200]
        return found

    wait_for(lambda: len(ticks()) >= 2, timeout=30, what="two ticks to run")
    runs_ = ticks()
    assert all(e["request_id"].startswith("sched-") for e in runs_)
    assert all("Scheduled Event" in e["output"] for e in runs_)
    events = {e["request_id"].rsplit(".", 1)[0] for e in runs_}
    assert len(events) == len(runs_)  # each tick ran once


def test_the_queue_shows_in_status_and_metrics(topo: LocalCluster) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    stats = async_stats(topo, "pop-1")
    assert set(stats) >= {"queued", "running", "oldest_age_s", "dead_letters", "retries"}
    text = httpx.get(f"{topo.url('pop-1')}/metrics", headers=admin(topo)).text
    names = {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert {"edgerun_async_queued", "edgerun_async_dead_letters"} <= names


def test_queued_events_leave_synchronous_calls_room(topo: LocalCluster) -> None:
    for i in range(30):
        enqueue(topo, "pop-1", "q-edge", {"n": i, "sleep_s": 4.0})
    wait_for(lambda: async_stats(topo, "pop-1")["running"] > 0, what="events to run")
    before = async_stats(topo, "pop-1")["succeeded"]
    resp = httpx.post(
        f"{topo.url('pop-1')}/v1/functions/q-edge/invocations",
        json={"n": "sync"},
        headers=admin(topo),
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    # Answered before any 4 s event ended: it did not wait for a sandbox the events held.
    assert async_stats(topo, "pop-1")["succeeded"] == before


def test_a_failure_destination_gets_lambdas_record_and_does_not_loop(
    topo: LocalCluster,
) -> None:
    with Client(topo.control_url, topo.token) as client:
        # The destination fails too (every event it gets has no "n": it raises on "fail"
        # only when asked, so make it the always-failing q-fail): its record, failing,
        # goes to the dead letters instead of on again.
        deploy_everywhere(topo, client, "q-src", FUNCTIONS / "counter", NODES,
                          placement="edge",
                          async_=AsyncConfig(max_retries=0, on_failure="q-catch"))  # fmt: skip
        deploy_everywhere(topo, client, "q-catch", FUNCTIONS / "lambda-context", NODES,
                          placement="edge")  # fmt: skip
    event_id = enqueue(topo, "pop-1", "q-src", {"n": 5, "fail": True})

    def record() -> dict[str, Any] | None:
        resp = httpx.get(
            f"{topo.url('pop-1')}/v1/logs",
            params={"function": "q-catch", "since": "0", "settled": "false"},
            headers=admin(topo),
        )
        for e in resp.json()["logs"]:
            if event_id in e["output"] and e["status"] == 200:
                return e
        return None

    wait_for(lambda: record() is not None, timeout=30, what="the record at q-catch")
    output = record()["output"]  # type: ignore[index]
    assert "RetriesExhausted" in output and "'fail': True" in output
    assert event_id not in {d["id"] for d in dead_letters(topo, "pop-1", "q-src")}


def test_on_failure_pointing_at_itself_is_refused_at_deploy(topo: LocalCluster) -> None:
    with Client(topo.control_url, topo.token) as client, pytest.raises(Exception) as err:
        deploy_everywhere(topo, client, "q-self", FUNCTIONS / "counter", NODES,
                          async_=AsyncConfig(on_failure="q-self"))  # fmt: skip
    assert "itself" in str(err.value)


def test_one_functions_backlog_does_not_hold_up_anothers_events(topo: LocalCluster) -> None:
    with Client(topo.control_url, topo.token) as client:
        deploy_everywhere(topo, client, "q-slow", FUNCTIONS / "counter", NODES,
                          placement="edge", async_=AsyncConfig(max_concurrency=1))  # fmt: skip
        deploy_everywhere(topo, client, "q-quick", FUNCTIONS / "counter", NODES,
                          placement="edge")  # fmt: skip
    for i in range(40):
        enqueue(topo, "pop-1", "q-slow", {"n": i, "sleep_s": 1.0})
    quick = enqueue(topo, "pop-1", "q-quick", {"n": "quick"})
    wait_for(lambda: runs(topo, "q-quick")[quick] == 1, timeout=20, what="the quick event")
    assert async_stats(topo, "pop-1")["queued"] > 20  # the backlog is still there


@pytest.mark.parametrize(
    ("method", "path", "kw", "says"),
    [
        ("POST", "/v1/dlq/replay", {"content": b"{nope"}, "JSON"),
        ("POST", "/v1/dlq/replay", {"json": {"function": "q-fail", "ids": 3}}, "ids"),
        ("DELETE", "/v1/dlq", {}, "pass function"),
        ("GET", "/v1/dlq", {"params": {"limit": "5000"}}, "limit"),
    ],
)
def test_malformed_dead_letter_requests_are_clear_400s(
    topo: LocalCluster, method: str, path: str, kw: dict[str, Any], says: str
) -> None:
    resp = httpx.request(method, f"{topo.url('pop-1')}{path}", headers=admin(topo), **kw)
    assert resp.status_code == 400, resp.text
    assert says in resp.json()["error"]["message"]


def test_an_event_whose_payload_is_not_json_is_refused_before_it_is_queued(
    topo: LocalCluster,
) -> None:
    with Client(topo.control_url, topo.token) as client:
        deploy_everywhere(topo, client, "q-json", FUNCTIONS / "counter", NODES)
    resp = httpx.post(
        f"{topo.url('pop-1')}/v1/functions/q-json/invocations",
        content=b"{not json",
        headers={**admin(topo), "x-edgerun-invocation-type": "Event"},
    )
    assert resp.status_code == 400
    assert "not valid JSON" in resp.json()["error"]["message"]
    logged = httpx.get(
        f"{topo.url('pop-1')}/v1/logs",
        params={"function": "q-json", "since": "0", "settled": "false"},
        headers=admin(topo),
    ).json()["logs"]
    assert [(e["status"], e["placement"]) for e in logged] == [(400, "")]  # never "queued"
