"""Many concurrent cold starts into a full POP: every one must succeed (no 5xx).

The POP's capacity is filled with idle sandboxes of 128 MB functions, then
concurrent first calls of new 128 MB functions arrive, each needing
evictions. Before the pool became a state machine, two cold starts could
pick the same victim and one of them answered 500 (``list.remove``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from edgerun.client import Client
from edgerun.cluster import LocalCluster
from tests.integration.conftest import admin, deploy_folder, node_knows, start_cluster, wait_for

pytestmark = pytest.mark.integration

ZYGOTE_ROOM_MB = 64
"""Loaded zygotes are charged too (a few MB each): room for them beside the sandboxes."""
POP_CAPACITY_MB = 1024 + ZYGOTE_ROOM_MB
FILLERS = POP_CAPACITY_MB // 128
NEWCOMERS = 4
CALLS_PER_NEWCOMER = 4
ROUNDS = 3

HANDLER = """\
import time


def handler(event, context):
    time.sleep(0.05)
    return {"fn": context.function_name}
"""


@pytest.fixture(scope="module")
def stress_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("stress"), pop_capacity_mb=POP_CAPACITY_MB)
    yield c
    c.stop()


def _deploy(client: Client, cluster: LocalCluster, root: Path, name: str) -> None:
    folder = root / name
    folder.mkdir()
    # A distinct bundle per function (the name is in a comment), all alike.
    (folder / "main.py").write_text(f"# {name}\n{HANDLER}")
    sha = deploy_folder(client, name, folder, handler="main.handler", placement="edge")
    wait_for(node_knows(cluster, "pop-1", name, sha), what=f"pop-1 to learn {name}")


def _pool(cluster: LocalCluster) -> dict[str, object]:
    body: dict[str, object] = httpx.get(
        f"{cluster.url('pop-1')}/v1/pool", headers=admin(cluster), timeout=5
    ).json()
    return body


def test_concurrent_cold_starts_into_a_full_pop_never_fail(
    stress_cluster: LocalCluster, tmp_path: Path
) -> None:
    cluster = stress_cluster
    pop = cluster.url("pop-1")
    statuses: Counter[int] = Counter()
    placements: Counter[str] = Counter()
    calls = 0
    with Client(cluster.control_url, cluster.token) as client:
        for r in range(ROUNDS):
            fillers = [f"fill-{r}-{i}" for i in range(FILLERS)]
            newcomers = [f"new-{r}-{i}" for i in range(NEWCOMERS)]
            for name in fillers + newcomers:
                _deploy(client, cluster, tmp_path, name)
            with httpx.Client(timeout=30, headers=admin(cluster)) as http:
                for name in fillers:  # fill the POP with idle sandboxes
                    assert http.post(f"{pop}/v1/functions/{name}/invocations").status_code == 200
            wait_for(
                lambda: (
                    _pool(cluster)["idle"] == FILLERS and _pool(cluster)["used_mb"] == FILLERS * 128
                ),
                what="the POP to be full of idle sandboxes",
            )
            targets = [n for n in newcomers for _ in range(CALLS_PER_NEWCOMER)]

            def call(name: str) -> httpx.Response:
                return httpx.post(
                    f"{pop}/v1/functions/{name}/invocations", timeout=30, headers=admin(cluster)
                )

            with ThreadPoolExecutor(len(targets)) as ex:
                responses = list(ex.map(call, targets))
            calls += len(responses)
            statuses.update(resp.status_code for resp in responses)
            placements.update(resp.headers.get("x-edgerun-placement", "?") for resp in responses)
            errors = [resp.text for resp in responses if resp.status_code >= 500]
            assert not errors, errors[:3]
    pool = _pool(cluster)
    figures = {
        "calls": calls,
        "cold_starts": placements["local-cold"],
        "warm": placements["local-warm"],
        "evictions": pool["evictions"],
        "pop_sandbox_starts": pool["starts"],
        "5xx": sum(n for status, n in statuses.items() if status >= 500),
        "statuses": dict(statuses),
    }
    print(f"\npool stress figures: {json.dumps(figures)}")
    assert figures["5xx"] == 0, figures
    assert statuses[200] == calls, figures
    assert placements["local-cold"] >= NEWCOMERS * ROUNDS, figures
