"""Hostile code against a real cluster: each attack must fail cleanly and alone.

Every test runs one hostile function at the POP while a well-behaved
neighbour (``echo``) is called in a loop from another thread, then checks
that (a) the caller got a clear answer (an error status with a JSON error
body, or the function itself reporting that the operation was denied) and
(b) the node kept serving: the neighbour answered 200 during and after.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgerun.client import Client, EdgerunError, Invocation
from edgerun.cluster import LocalCluster
from tests.hostile.conftest import (
    HOSTILE_MEMORY_MB,
    HOSTILE_TIMEOUT_S,
    SUPPORTED,
    UNSUPPORTED_REASON,
)
from tests.integration.conftest import invoke

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not SUPPORTED, reason=UNSUPPORTED_REASON),
]

DENIED = ("FileNotFoundError", "PermissionError")
READ_ONLY = ("Read-only file system", "Permission denied")


# --- helpers ---------------------------------------------------------------------


class _Neighbour(threading.Thread):
    """Calls the well-behaved function in a loop until told to stop."""

    def __init__(self, pop: str) -> None:
        super().__init__(daemon=True)
        self.pop = pop
        self.stopping = threading.Event()
        self.answers: list[tuple[int, str]] = []

    def run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while True:
                try:
                    r = invoke(self.pop, "echo", {"n": len(self.answers)}, client=http)
                    self.answers.append((r.status, r.content[:300].decode(errors="replace")))
                except EdgerunError as exc:
                    self.answers.append((0, str(exc)))
                if self.stopping.is_set():
                    return
                time.sleep(0.02)


@contextlib.contextmanager
def neighbour_alongside(pop: str) -> Iterator[_Neighbour]:
    n = _Neighbour(pop)
    n.start()
    try:
        yield n
    finally:
        n.stopping.set()
        n.join(60)
    assert not n.is_alive(), "the neighbour's calls never came back"
    assert n.answers, "the neighbour made no call"
    failed = [a for a in n.answers if a[0] != 200]
    assert not failed, f"the well-behaved neighbour failed during the attack: {failed}"


def assert_node_serves(pop: str, note: str) -> None:
    after = invoke(pop, "echo", {"after": note})
    assert after.status == 200, after.content
    assert after.json()["event"] == {"after": note}
    assert after.node == "pop-1"


def attack(pop: str, name: str, payload: Any = None) -> Invocation:
    """Invoke a hostile function with a neighbour alongside; the node must keep serving."""
    with neighbour_alongside(pop):
        time.sleep(0.05)  # the neighbour's first call is on its way
        result = invoke(pop, name, payload if payload is not None else {}, timeout=60)
    assert result.node == "pop-1", "the attack was meant to run at the POP"
    assert_node_serves(pop, name)
    return result


def error_of(result: Invocation, status: int) -> dict[str, Any]:
    """The JSON error body of an answer that must have ``status``."""
    assert result.status == status, (result.status, result.content[:1000])
    assert result.headers["content-type"].startswith("application/json")
    err = result.json()["error"]
    assert isinstance(err["type"], str) and err["type"]
    assert isinstance(err["message"], str) and err["message"]
    return err  # type: ignore[no-any-return]


def reported(result: Invocation) -> Any:
    """The function's own report (it ran to the end and answered 200)."""
    assert result.status == 200, (result.status, result.content[:1000])
    return result.json()


def assert_every_node_alive(cluster: LocalCluster) -> None:
    for name, node in cluster.nodes.items():
        assert node.proc is not None and node.proc.poll() is None, f"node {name} died"
        assert httpx.get(f"{node.url}/v1/health", timeout=5).status_code == 200, name


def pop_pid(cluster: LocalCluster) -> int:
    proc = cluster.nodes["pop-1"].proc
    assert proc is not None
    return proc.pid


def data_dir(cluster: LocalCluster, node: str) -> Path:
    return Path(cluster.nodes[node].config.data_dir)


# --- crashing and misbehaving code ------------------------------------------------


def test_exception_is_a_500_naming_the_exception_type(pop: str) -> None:
    err = error_of(attack(pop, "raiser"), 500)
    assert err["type"] == "ValueError"
    assert err["message"] == "hostile: deliberate failure"


def test_sys_exit_is_a_500_with_type_system_exit(pop: str) -> None:
    err = error_of(attack(pop, "sys-exit"), 500)
    assert err["type"] == "SystemExit"
    assert err["message"] == "3"


def test_os_exit_is_a_502_naming_the_exit_status(pop: str) -> None:
    err = error_of(attack(pop, "os-exit"), 502)
    assert err["type"] == "SandboxCrashed"
    assert "exited with status 9" in err["message"]


def test_segfault_is_a_502_naming_sigsegv(pop: str) -> None:
    err = error_of(attack(pop, "segfault"), 502)
    assert err["type"] == "SandboxCrashed"
    assert "killed by signal SIGSEGV" in err["message"]


def test_infinite_loop_is_stopped_at_its_timeout(pop: str) -> None:
    start = time.monotonic()
    err = error_of(attack(pop, "spin"), 504)
    assert err["type"] == "Timeout"
    assert f"{HOSTILE_TIMEOUT_S:g} s timeout" in err["message"]
    assert time.monotonic() - start < HOSTILE_TIMEOUT_S + 5


def test_cpu_burn_in_many_threads_is_stopped_at_its_timeout(pop: str) -> None:
    err = error_of(attack(pop, "cpu-threads", {"threads": 8}), 504)
    assert err["type"] == "Timeout"


def test_cpu_burn_on_every_core_is_stopped_in_time(pop: str) -> None:
    """Threads that release the GIL: the CPU-time rlimit may stop them before the clock."""
    start = time.monotonic()
    result = attack(pop, "cpu-threads", {"threads": 8, "native": True})
    assert time.monotonic() - start < HOSTILE_TIMEOUT_S + 5
    if result.status == 502:
        err = error_of(result, 502)
        assert "killed by signal SIGXCPU" in err["message"]
    else:
        assert error_of(result, 504)["type"] == "Timeout"


def _cpu_seconds(uid: int) -> float:
    """CPU time used so far by every host process running as ``uid``."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def _pids_of(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                pids.append(int(entry.name))
    return pids


def test_child_left_spinning_does_not_outlive_the_invocation(pop: str) -> None:
    body = reported(attack(pop, "runaway"))
    uid = body["uid"]
    try:
        time.sleep(HOSTILE_TIMEOUT_S + 2)  # past its timeout and its first CPU budget
        before = _cpu_seconds(uid)
        time.sleep(1.0)
        used = _cpu_seconds(uid) - before
        assert used < 0.2, f"the function's processes used {used:.2f} CPU-s after it returned"
    finally:  # the test started these (through the POP): stop them, by pid
        for pid in _pids_of(uid):
            with contextlib.suppress(OSError):
                stat = (Path("/proc") / str(pid) / "stat").read_text()
                if stat.rsplit(")", 1)[1].split()[0] == "R":
                    os.kill(pid, signal.SIGKILL)


def test_memory_bomb_is_stopped_at_its_memory_limit(pop: str) -> None:
    result = attack(pop, "memory-bomb", {"mb": 1024})
    assert result.status in (500, 502), (result.status, result.content[:1000])
    err = error_of(result, result.status)
    if result.status == 502:  # the cgroup's OOM killer stopped it
        assert err["type"] == "SandboxCrashed"
        assert f"exceeded its {HOSTILE_MEMORY_MB} MB memory limit" in err["message"]
    else:  # an allocation failed inside the interpreter
        assert err["type"] == "MemoryError"
        assert f"{HOSTILE_MEMORY_MB} MB" in err["message"]


def test_fork_bomb_is_bounded_by_the_pids_limit(pop: str) -> None:
    body = reported(attack(pop, "fork-bomb", {"attempts": 1000}))
    assert body["forks"] < 64, body  # pids_max: the sandbox and all it forks
    assert body["error"] is not None, body
    assert "Resource temporarily unavailable" in body["error"]


def test_gigabyte_of_stdout_is_capped_and_the_node_survives(
    cluster: LocalCluster, pop: str
) -> None:
    result = attack(pop, "stdout-flood", {"mb": 1024})
    if result.status == 504:  # stopping it is also fine; what matters is the node
        error_of(result, 504)
        return
    assert reported(result) == {"written": 1024 * 1024 * 1024}
    assert len(result.content) < 1024
    logs = httpx.get(
        f"{pop}/v1/logs",
        params={"request_id": result.headers["x-edgerun-request-id"]},
        headers={"authorization": f"Bearer {cluster.token}"},
    )
    if logs.status_code == 200:  # the node keeps the captured output, capped
        [entry] = logs.json()["logs"]
        assert len(entry["output"]) <= 256 * 1024 + 100


def test_writing_10gb_to_tmp_fails_inside_the_function(pop: str) -> None:
    body = reported(attack(pop, "tmp-filler", {"gb": 10}))
    assert body["denied"] is True, body
    assert body["errno"] in ("ENOSPC", "EFBIG"), body
    assert body["written_mb"] <= 64, body  # tmp_mb: the private /tmp's size


# --- reading what belongs to others ------------------------------------------------


def test_another_functions_bundle_is_out_of_reach(
    cluster: LocalCluster, pop: str, deployed: dict[str, str]
) -> None:
    # the victim can read its own secret, and the secret is on the POP's disk
    assert reported(invoke(pop, "victim", {})) == {"secret": "victim-secret-do-not-leak"}
    code = data_dir(cluster, "pop-1") / "code"
    with Client(cluster.control_url, cluster.token) as client:
        bundle = client.get("victim").versions[deployed["victim"]].bundle_sha256
    secret = code / bundle / "victim_secret.txt"
    assert secret.is_file()
    paths = [
        str(secret),
        str(secret.parent / "main.py"),
        str(secret.parent),
        str(code),
        str(data_dir(cluster, "region-1") / "code"),
    ]
    body = reported(
        attack(pop, "bundle-snooper", {"filename": "victim_secret.txt", "paths": paths})
    )
    assert body["found"] == [], body["found"]
    for path, outcome in body["paths"].items():
        assert outcome.get("denied") in DENIED, (path, outcome)
    assert body["own_bundle"] == ["main.py"]


def test_node_data_dir_and_registry_are_out_of_reach(pop: str, cluster: LocalCluster) -> None:
    pop_dir = data_dir(cluster, "pop-1")
    paths = [
        pop_dir,
        pop_dir / "registry.db",
        pop_dir / "uids.json",
        pop_dir / "node.toml",
        pop_dir / "node.log",
        pop_dir / "zips",
        cluster.token_file,
        data_dir(cluster, "control") / "registry.db",
        data_dir(cluster, "region-1"),
    ]
    for path in paths:
        assert path.exists(), f"{path} should exist on the node, or the test proves nothing"
    body = reported(attack(pop, "data-snooper", {"paths": [str(p) for p in paths]}))
    for path, outcome in body.items():
        assert outcome.get("denied") in DENIED, (path, outcome)


def test_etc_shadow_is_unreadable(pop: str) -> None:
    body = reported(attack(pop, "shadow-reader"))
    assert set(body) == {"/etc/shadow", "/proc/1/root/etc/shadow"}
    for path, outcome in body.items():
        assert outcome.get("denied") in DENIED, (path, outcome)


def test_own_bundle_and_root_filesystem_are_read_only(pop: str) -> None:
    body = reported(attack(pop, "bundle-tamper"))
    for path, outcome in body["writes"].items():
        assert outcome["denied"] in ("OSError", "PermissionError"), (path, outcome)
        assert any(why in outcome["error"] for why in READ_ONLY), (path, outcome)
    assert body["read_only"] == {"/": True, "/var/task": True, "/usr": True}


# --- reaching the node's network and processes --------------------------------------


def test_loopback_control_plane_is_unreachable_without_network(
    pop: str, cluster: LocalCluster
) -> None:
    port = int(cluster.control_url.rsplit(":", 1)[1])
    body = reported(attack(pop, "net-probe", {"host": "127.0.0.1", "port": port}))
    assert body["denied"] is True, body


def test_loopback_control_plane_is_reachable_with_network(pop: str, cluster: LocalCluster) -> None:
    """The same code deployed with network = true shares the node's network."""
    port = int(cluster.control_url.rsplit(":", 1)[1])
    body = reported(attack(pop, "net-probe-online", {"host": "127.0.0.1", "port": port}))
    assert body["denied"] is False, body
    assert " 200 " in body["status_line"], body


def test_kill_minus_one_reaches_nothing_outside_the_sandbox(
    pop: str, cluster: LocalCluster
) -> None:
    body = reported(attack(pop, "killer", {"pid": -1}))
    assert body["denied"] is True, body  # nothing it may signal is visible to it
    assert "No such process" in body["error"], body
    assert_every_node_alive(cluster)
    for region in ("region-1", "region-2"):
        assert invoke(cluster.url(region), "echo", {}).status == 200


def test_kill_of_the_node_pid_is_refused(pop: str, cluster: LocalCluster) -> None:
    body = reported(attack(pop, "killer", {"pid": pop_pid(cluster)}))
    assert body["denied"] is True, body
    assert_every_node_alive(cluster)
    for region in ("region-1", "region-2"):
        assert invoke(cluster.url(region), "echo", {}).status == 200


def test_ptrace_attach_to_the_node_is_denied(pop: str, cluster: LocalCluster) -> None:
    node = pop_pid(cluster)
    body = reported(attack(pop, "tracer", {"pids": [node, 1]}))
    assert body[str(node)] == {"result": -1, "errno": "EPERM"}, body
    assert body["1"] == {"result": -1, "errno": "EPERM"}, body  # its own zygote
    assert body["proc_1_mem"] in ("PermissionError", "FileNotFoundError"), body
    assert_every_node_alive(cluster)


def test_unshare_and_mount_are_denied_by_seccomp(pop: str) -> None:
    body = reported(attack(pop, "escaper"))
    for call, outcome in body.items():
        assert outcome == {"result": -1, "errno": "EPERM"}, (call, outcome)


def test_sigint_to_its_zygote_does_not_break_the_function(pop: str) -> None:
    first = attack(pop, "zygote-interrupter", {"interrupt": True})
    time.sleep(0.5)  # let a dying zygote finish dying
    later = [invoke(pop, "zygote-interrupter", {}) for _ in range(3)]
    assert first.status == 200, first.content
    for result in later:
        assert reported(result) == {"ok": True}
