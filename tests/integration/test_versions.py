"""Versions are immutable: no API call changes what an aliased version runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from edgerun.build import build_bundle
from edgerun.client import Client, EdgerunError
from edgerun.cluster import LocalCluster
from edgerun.models import LATEST, FunctionConfig
from tests.integration.conftest import invoke, wait_for

pytestmark = pytest.mark.integration

NAME = "immutable"
CODE = """\
def one(event, context):
    return "one"


def two(event, context):
    return "two"
"""


def _synced(cluster: LocalCluster, client: Client) -> Callable[[], bool]:
    revision = client.health()["revision"]

    def check() -> bool:
        for node in ("pop-1", "region-1", "region-2"):
            try:
                body = httpx.get(f"{cluster.url(node)}/v1/health", timeout=2).json()
            except httpx.HTTPError:
                return False
            if body["revision"] < revision:
                return False
        return True

    return check


def test_no_mutating_route_changes_what_an_aliased_version_runs(
    cluster: LocalCluster, client: Client, tmp_path: Path
) -> None:
    (tmp_path / "main.py").write_text(CODE)
    bundle = build_bundle(tmp_path)
    record = client.deploy(NAME, bundle, FunctionConfig(handler="main.one"))
    v1 = record.aliases["latest"]
    client.set_alias(NAME, "prod", v1)

    def deploy(**config: object) -> str:
        return client.deploy(NAME, bundle, FunctionConfig(**config)).aliases["latest"]  # type: ignore[arg-type]

    def refused(call: Callable[[], object]) -> None:
        with pytest.raises(EdgerunError) as exc:
            call()
        assert 400 <= exc.value.status < 500

    mutations: list[tuple[str, Callable[[], object]]] = [
        ("POST /v1/bundles (the same bundle again)", lambda: client.upload_bundle(bundle)),
        ("PUT function: same bundle, another handler", lambda: deploy(handler="main.two")),
        (
            "PUT function: same bundle and handler, other settings",
            lambda: deploy(handler="main.one", memory_mb=256, env={"X": "1"}),
        ),
        ("PUT function: back to the other handler", lambda: deploy(handler="main.two")),
        ("PUT alias canary", lambda: client.set_alias(NAME, "canary", "latest")),
        ("PUT alias prod to itself", lambda: client.set_alias(NAME, "prod", v1)),
        ("DELETE alias canary", lambda: client.delete_alias(NAME, "canary")),
        ("PUT alias latest (refused)", lambda: refused(lambda: client.set_alias(NAME, LATEST, v1))),
        ("DELETE latest (refused)", lambda: refused(lambda: client.delete_alias(NAME, LATEST))),
        (
            "PUT function: a bad handler (refused)",
            lambda: refused(lambda: deploy(handler="not a handler")),
        ),
    ]  # fmt: skip
    for what, mutate in mutations:
        mutate()
        wait_for(_synced(cluster, client), what=f"every node to learn: {what}")
        versions = {v["sha256"]: v for v in client.versions(NAME)}
        assert versions[v1]["handler"] == "main.one", what
        assert client.get(NAME).aliases["prod"] == v1, what
        for node in ("pop-1", "region-1"):
            out = invoke(cluster.url(node), NAME, {}, qualifier="prod")
            assert out.status == 200, (what, node, out.content)
            assert out.json() == "one", (what, node)
            assert out.headers["x-edgerun-version"] == v1, (what, node)

    latest = invoke(cluster.url("pop-1"), NAME, {})
    assert latest.json() == "two"
    assert latest.headers["x-edgerun-version"] != v1
    assert len(client.versions(NAME)) == 2
