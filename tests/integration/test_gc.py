"""Code is collected: versions beyond the newest N that no alias points at, and
deleted functions, lose their bundles on the control plane and every node,
except where a live sandbox still uses them. Regions hold the code of every
alias; a POP only the code it ran."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from edgerun.client import Client
from edgerun.cluster import LocalCluster
from tests.integration.conftest import admin, deploy_folder, invoke, wait_for

pytestmark = pytest.mark.integration

REGIONS = ("region-1", "region-2")
RETAIN = 3  # the control plane's default retain_versions


def _code_on(cluster: LocalCluster, node: str, bundle: str) -> bool:
    data = Path(cluster.nodes[node].config.data_dir)
    zipped = data / "zips" / bundle[:2] / f"{bundle}.zip"
    return (data / "code" / bundle).exists() or zipped.exists()


def _zip_on_control(cluster: LocalCluster, bundle: str) -> bool:
    return (cluster.root / "control" / "bundles" / bundle[:2] / f"{bundle}.zip").exists()


def _everywhere(cluster: LocalCluster, bundle: str) -> Callable[[], bool]:
    return lambda: all(_code_on(cluster, n, bundle) for n in REGIONS)


def _deploy(client: Client, folder: Path, name: str, n: int) -> tuple[str, str]:
    """Deploy version ``n`` (a distinct bundle); returns (version id, bundle sha)."""
    (folder / "main.py").write_text(f"# {name}\ndef handler(event, context):\n    return {n}\n")
    vid = deploy_folder(client, name, folder, handler="main.handler", placement="region")
    version = client.get(name).versions[vid]
    return vid, version.bundle_sha256


def _gc(cluster: LocalCluster) -> dict[str, object]:
    resp = httpx.post(
        f"{cluster.control_url}/v1/admin/gc",
        headers={"authorization": f"Bearer {cluster.token}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, object] = resp.json()
    return body


def test_versions_beyond_the_newest_n_without_alias_are_collected(
    cluster: LocalCluster, client: Client, tmp_path: Path
) -> None:
    name = "collected"
    v1, b1 = _deploy(client, tmp_path, name, 1)
    client.set_alias(name, "prod", v1)
    v2, b2 = _deploy(client, tmp_path, name, 2)
    # Regions prefetch what aliases point at: put v2's code on both, then unalias it.
    client.set_alias(name, "tmp", v2)
    wait_for(_everywhere(cluster, b2), what="every region to prefetch v2")
    # v2 runs in a sandbox on region-1, which stays warm there.
    out = invoke(cluster.url("region-1"), name, {}, qualifier=v2)
    assert out.status == 200 and out.json() == 2
    client.delete_alias(name, "tmp")
    newer = [_deploy(client, tmp_path, name, n) for n in (3, 4, 5)]

    why = {v["sha256"]: v["retained"] for v in client.versions(name)}
    assert why[v1] == ["alias prod"]
    assert why[v2] == [], "v2 is collectable"
    assert why[newer[-1][0]] == ["alias latest", f"newest {RETAIN}"]
    assert all(why[vid] for vid, _ in newer)

    collected = _gc(cluster)

    assert collected["versions"] == [{"function": name, "version": v2}]
    assert collected["bundles"] == [b2]
    assert set(client.get(name).versions) == {v1} | {vid for vid, _ in newer}
    assert not _zip_on_control(cluster, b2)
    assert _zip_on_control(cluster, b1)
    wait_for(lambda: not _code_on(cluster, "region-2", b2), timeout=5, what="region-2 to remove v2")
    # A live (idle, warm) sandbox of v2 on region-1 keeps its code there.
    assert _code_on(cluster, "region-1", b2)
    for node in REGIONS:
        assert _code_on(cluster, node, b1), node


def test_a_deleted_functions_code_is_collected_everywhere(
    cluster: LocalCluster, client: Client, tmp_path: Path
) -> None:
    name = "short-lived"
    _vid, bundle = _deploy(client, tmp_path, name, 1)
    wait_for(_everywhere(cluster, bundle), what="every region to prefetch it")

    client.delete(name)

    assert not _zip_on_control(cluster, bundle)
    wait_for(
        lambda: not any(_code_on(cluster, n, bundle) for n in REGIONS),
        timeout=5,
        what="every region to remove its code",
    )


def test_a_pop_holds_only_the_code_it_ran_until_the_function_goes(
    cluster: LocalCluster, client: Client, tmp_path: Path
) -> None:
    _vid, ran_bundle = _deploy_at_edge(client, tmp_path / "ran", "pop-ran")
    _idle, idle_bundle = _deploy_at_edge(client, tmp_path / "idle", "pop-idle")
    wait_for(_everywhere(cluster, ran_bundle), what="the regions to prefetch it")
    wait_for(_everywhere(cluster, idle_bundle), what="the regions to prefetch it")
    assert not _code_on(cluster, "pop-1", ran_bundle)

    out = invoke(cluster.url("pop-1"), "pop-ran", {})

    assert out.status == 200 and out.placement == "local-cold"
    assert _code_on(cluster, "pop-1", ran_bundle)
    assert not _code_on(cluster, "pop-1", idle_bundle), "never ran there: never fetched"
    client.delete("pop-ran")
    wait_for(
        lambda: not _code_on(cluster, "pop-1", ran_bundle),
        timeout=5,
        what="pop-1 to remove the deleted function's code",
    )


def _deploy_at_edge(client: Client, folder: Path, name: str) -> tuple[str, str]:
    folder.mkdir()
    (folder / "main.py").write_text(f"# {name}\ndef handler(event, context):\n    return 1\n")
    vid = deploy_folder(client, name, folder, handler="main.handler", placement="edge")
    return vid, client.get(name).versions[vid].bundle_sha256


def test_status_reports_the_disk_the_code_cache_uses(cluster: LocalCluster) -> None:
    for node in ("pop-1", *REGIONS):
        body = httpx.get(f"{cluster.url(node)}/v1/status", headers=admin(cluster), timeout=5).json()
        usage = body["code_cache"]
        assert usage["used_mb"] >= 0
        assert usage["limit_mb"] == 10_240
        assert isinstance(usage["bundles"], int)
