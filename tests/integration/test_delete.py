"""Deleting a function stops everything it runs on every node, within 2 s."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from edgerun.client import Client
from edgerun.cluster import LocalCluster
from tests.integration.conftest import admin, deploy_folder, invoke, node_knows, wait_for

pytestmark = pytest.mark.integration

CODE = """\
import threading
import time


def handler(event, context):
    threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
    return "running"
"""


def _ppid(pid: int) -> int:
    stat = (Path("/proc") / str(pid) / "stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _pids_of(uid: int, under: int) -> list[int]:
    """Processes running as ``uid`` that descend from process ``under`` (uids are
    per node: another node on this host may give another function the same one)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or entry.stat().st_uid != uid:
                continue
            pid = int(entry.name)
            while pid > 1 and pid != under:
                pid = _ppid(pid)
        except (OSError, ValueError, IndexError):
            continue
        if pid == under:
            pids.append(int(entry.name))
    return pids


def _pool_functions(cluster: LocalCluster, node: str) -> set[str]:
    body = httpx.get(f"{cluster.url(node)}/v1/pool", headers=admin(cluster), timeout=2).json()
    return {v["function"] for v in body["versions"]}


def _uid(cluster: LocalCluster, node: str, name: str) -> int | None:
    path = Path(cluster.nodes[node].config.data_dir) / "uids.json"
    if not path.exists():
        return None  # the process engine: no uid per function
    uid = json.loads(path.read_text()).get(name)
    return None if uid is None else int(uid)


def test_delete_stops_sandboxes_and_zygotes_within_two_seconds(
    cluster: LocalCluster, client: Client, tmp_path: Path
) -> None:
    name = "doomed"
    (tmp_path / "main.py").write_text(CODE)
    sha = deploy_folder(client, name, tmp_path, handler="main.handler", placement="edge")
    wait_for(node_knows(cluster, "pop-1", name, sha), what="pop-1 to learn it")
    out = invoke(cluster.url("pop-1"), name, {})
    assert out.status == 200
    assert out.placement == "local-cold"
    assert name in _pool_functions(cluster, "pop-1")
    uid = _uid(cluster, "pop-1", name)
    proc = cluster.nodes["pop-1"].proc
    assert proc is not None
    if uid is not None:
        assert _pids_of(uid, proc.pid), "a zygote and a sandbox run as the function's uid"

    client.delete(name)

    took = wait_for(
        lambda: (
            name not in _pool_functions(cluster, "pop-1")
            and (uid is None or not _pids_of(uid, proc.pid))
        ),
        timeout=2.0,
        what="the POP to stop the deleted function's sandboxes and zygotes",
    )
    pool = httpx.get(f"{cluster.url('pop-1')}/v1/pool", headers=admin(cluster), timeout=2).json()
    assert all(v["function"] != name for v in pool["versions"])
    assert took < 2.0
