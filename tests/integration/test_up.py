"""`edgerun up` survives a node's death: the real command, with real node processes.

A node that exits is reported and restarted while the others serve; with
--no-restart it stays down and the POP fails over; `edgerun stop/start NODE`
work from another shell; Ctrl-C ends the whole process tree quickly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
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
from edgerun.cluster import free_port
from edgerun.watcher import request
from tests.conftest import FUNCTIONS
from tests.integration.conftest import deploy_folder, wait_for

pytestmark = pytest.mark.integration


class Up:
    """A running `edgerun up` and what it printed."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.ports = {name: free_port() for name in ("control", "region-1", "region-2", "pop-1")}
        topo = tmp / "topology.toml"
        topo.write_text(
            f"[control]\nport = {self.ports['control']}\n\n"
            f'[[region]]\nname = "region-1"\nport = {self.ports["region-1"]}\n\n'
            f'[[region]]\nname = "region-2"\nport = {self.ports["region-2"]}\n\n'
            f'[[pop]]\nname = "pop-1"\nport = {self.ports["pop-1"]}\n'
            'regions = ["region-1", "region-2"]\n'
        )
        self.home = tmp / "home"
        self.env = {**os.environ, "EDGERUN_HOME": str(self.home), "COLUMNS": "200"}
        for var in ("EDGERUN_CONTROL", "EDGERUN_KEY", "EDGERUN_TOKEN", "EDGERUN_PROFILE"):
            self.env.pop(var, None)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgerun",
                "up",
                "--config",
                str(topo),
                "--data-dir",
                str(tmp / "data"),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        wait_for(lambda: "Ctrl-C to stop" in self.output, timeout=60, what="edgerun up")
        state = json.loads((self.home / "cluster.json").read_text())
        self.socket = Path(state["up_socket"])
        self.token = Path(state["token_file"]).read_text().strip()
        self.control_url = state["control_url"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def url(self, node: str) -> str:
        return f"http://127.0.0.1:{self.ports[node]}"

    def status(self) -> dict[str, dict[str, Any]]:
        answer = request(self.socket, "status")
        assert answer["ok"], answer
        return {n["name"]: n for n in answer["nodes"]}

    def healthy(self, node: str) -> bool:
        try:
            return httpx.get(f"{self.url(node)}/v1/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "edgerun", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=self.env,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def deploy_echo(up: Up, name: str) -> None:
    """`echo` runs only in regions (each call is forwarded, so a region's death shows)
    and may be retried elsewhere (idempotent)."""
    with Client(up.control_url, up.token) as client:
        deploy_folder(
            client, name, FUNCTIONS / "echo", handler="main.handler", placement="region",
            idempotent=True,
        )  # fmt: skip
    wait_for(lambda: call(up, name).status_code == 200, timeout=30, what=f"{name} served")


def call(up: Up, name: str) -> httpx.Response:
    try:
        return httpx.post(f"{up.url('pop-1')}/fn/{name}/", json={"x": 1}, timeout=10)
    except httpx.HTTPError as exc:
        return httpx.Response(599, text=str(exc))


class Caller:
    """Calls a function through the POP in a loop, keeping every status."""

    def __init__(self, up: Up, name: str) -> None:
        self.up, self.name = up, name
        self.codes: list[int] = []
        self.regions: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            resp = call(self.up, self.name)
            self.codes.append(resp.status_code)
            self.regions.add(resp.headers.get("x-edgerun-placement", ""))
            time.sleep(0.02)

    def done(self) -> list[int]:
        self._stop.set()
        self._thread.join(15)
        return self.codes


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    u = Up(tmp_path_factory.mktemp("up"))
    try:
        yield u
    finally:
        u.stop()


@pytest.fixture(scope="module")
def up_no_restart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    u = Up(tmp_path_factory.mktemp("up-no-restart"), "--no-restart")
    try:
        yield u
    finally:
        u.stop()


def test_a_killed_region_is_reported_and_restarted_while_the_pop_serves(up: Up) -> None:
    deploy_echo(up, "up-echo")
    before = up.status()["region-1"]
    caller = Caller(up, "up-echo")
    os.kill(before["pid"], signal.SIGKILL)
    wait_for(lambda: "region-1 is healthy again" in up.output, timeout=30, what="a restart")
    after = up.status()["region-1"]
    wait_for(lambda: len(caller.codes) > 5, what="calls after the restart")
    codes = caller.done()
    assert after["state"] == "running" and after["restarts"] == 1
    assert after["pid"] != before["pid"]
    assert up.healthy("region-1")
    out = up.output
    assert f"region-1 exited: killed by SIGKILL (pid {before['pid']}" in out, out
    assert "last lines of" in out or "node.log is empty" in out
    assert "restarting region-1 in 0.5 s" in out
    assert codes and set(codes) == {200}, codes  # the POP kept answering
    assert up.status()["pop-1"]["restarts"] == 0


def test_a_crashing_node_shows_its_last_log_lines(up: Up) -> None:
    """What a node printed before it died is in up's report."""
    pid = up.status()["region-2"]["pid"]
    log = up.home.parent / "data" / "region-2" / "node.log"
    with open(log, "a") as f:
        f.write("something went wrong [here]\nTraceback: the last words\n")
    os.kill(pid, signal.SIGTERM)  # not through `edgerun stop`: a crash as far as up knows
    wait_for(lambda: "region-2 is healthy again" in up.output, timeout=30, what="a restart")
    out = up.output
    assert "region-2 exited: killed by SIGTERM" in out
    assert "| something went wrong [here]" in out  # not taken for markup
    assert "| Traceback: the last words" in out


def test_stop_and_start_a_node_by_hand(up: Up) -> None:
    stopped = up.cli("stop", "region-1")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped region-1" in stopped.stdout
    assert up.status()["region-1"]["state"] == "stopped"
    assert not up.healthy("region-1")
    time.sleep(1.0)  # past the first backoff: a stopped node is not restarted
    assert up.status()["region-1"] == {**up.status()["region-1"], "state": "stopped", "pid": None}
    assert call(up, "up-echo").status_code == 200  # region-2 answers
    again = up.cli("stop", "region-1")
    assert again.returncode == 0 and "was not running" in again.stdout, again.stdout
    started = up.cli("start", "region-1")
    assert started.returncode == 0, started.stderr
    assert "started region-1" in started.stdout and "healthy" in started.stdout
    assert up.healthy("region-1")
    assert up.status()["region-1"]["state"] == "running"
    running = up.cli("start", "region-1")
    assert running.returncode == 0, running.stderr


def test_unknown_nodes_and_malformed_requests_get_an_error(up: Up) -> None:
    unknown = up.cli("stop", "region-9")
    assert unknown.returncode == 1
    assert "no node named 'region-9'" in unknown.stderr and "Traceback" not in unknown.stderr
    for raw in (b"not json\n", b'{"op": "reboot", "node": "pop-1"}\n', b"x" * 5000):
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(10)
            conn.connect(str(up.socket))
            conn.sendall(raw)
            answer = json.loads(conn.makefile().readline())
        assert answer["ok"] is False and "bad request" in answer["error"], answer
    with socket.socket(socket.AF_UNIX) as conn:  # says nothing: cut off after the deadline
        conn.settimeout(10)
        conn.connect(str(up.socket))
        answer = json.loads(conn.makefile().readline())
    assert answer["ok"] is False
    assert oct(up.socket.stat().st_mode & 0o777) == "0o600"
    assert all(n["state"] == "running" for n in up.status().values())


def test_with_no_restart_a_dead_region_stays_dead_and_the_pop_fails_over(
    up_no_restart: Up,
) -> None:
    up = up_no_restart
    deploy_echo(up, "up-echo")
    os.kill(up.status()["region-1"]["pid"], signal.SIGKILL)
    wait_for(lambda: "region-1 stays down" in up.output, timeout=10, what="the report")
    caller = Caller(up, "up-echo")
    wait_for(lambda: len(caller.codes) > 20, timeout=30, what="calls")
    codes = caller.done()
    assert set(codes) == {200}, codes
    assert caller.regions == {"forwarded:region-2"}
    assert up.status()["region-1"] == {
        **up.status()["region-1"],
        "state": "dead",
        "pid": None,
        "restarts": 0,
    }
    assert not up.healthy("region-1")
    started = up.cli("start", "region-1")  # by hand it still starts
    assert started.returncode == 0, started.stderr
    assert up.healthy("region-1")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_ctrl_c_ends_every_node_quickly(up_no_restart: Up) -> None:
    up = up_no_restart
    tree = _descendants(up.proc.pid)
    assert len(tree) >= 4  # the nodes (and their zygotes)
    # Each node has a process group of its own: a terminal's Ctrl-C reaches only up
    # (not the nodes' zygotes, which died of it), and up stops them.
    nodes = [n["pid"] for n in up.status().values() if n["pid"]]
    assert all(os.getpgid(pid) == pid for pid in nodes)
    logs = sorted((up.home.parent / "data").glob("*/node.log"))
    sizes = {log: log.stat().st_size for log in logs}
    began = time.monotonic()
    up.proc.send_signal(signal.SIGINT)
    up.proc.wait(30)
    wait_for(lambda: not any(_alive(p) for p in tree), timeout=30, what="every node to exit")
    took = time.monotonic() - began
    print(f"edgerun up stopped {len(tree)} processes in {took:.2f} s")
    assert up.proc.returncode == 0
    assert "stopped." in up.output
    assert took < 3.0, f"stopping took {took:.1f} s"
    assert not up.socket.exists()
    for log in logs:  # nodes stop following the feed and checking regions at once
        with open(log) as f:
            f.seek(sizes[log])
            said = f.read()
        assert "unreachable" not in said and "is down" not in said, (log, said)
