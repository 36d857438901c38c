"""The control plane's HTTP API: auth, validation, change feed, OpenAPI."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from edgerun.client import Client, EdgerunError
from edgerun.cluster import LocalCluster
from tests.conftest import make_zip

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(cluster: LocalCluster) -> httpx.Client:
    with httpx.Client(
        base_url=cluster.control_url, headers={"authorization": f"Bearer {cluster.token}"}
    ) as http:
        yield http


def test_health_needs_no_token(cluster: LocalCluster) -> None:
    resp = httpx.get(f"{cluster.control_url}/v1/health")
    assert resp.json()["status"] == "ok"


def test_openapi_document_lists_the_api(cluster: LocalCluster) -> None:
    doc = httpx.get(f"{cluster.control_url}/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert "/v1/functions/{name}" in doc["paths"]
    assert "/v1/changes" in doc["paths"]


def test_mutation_without_token_is_401(cluster: LocalCluster) -> None:
    resp = httpx.post(f"{cluster.control_url}/v1/bundles", content=make_zip({"a.py": ""}))
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "Unauthorized"


def test_unknown_key_is_401(cluster: LocalCluster) -> None:
    resp = httpx.get(
        f"{cluster.control_url}/v1/functions", headers={"authorization": "Bearer wrong"}
    )
    assert resp.status_code == 401
    assert resp.json()["error"]["type"] == "Unauthorized"


@pytest.mark.parametrize(
    ("files", "why"),
    [
        ({"../escape.py": "x"}, "'..'"),
        ({"/etc/cron.d/x": "x"}, "absolute path"),
    ],
)
def test_unsafe_bundle_is_refused_with_reason(api: httpx.Client, files: dict, why: str) -> None:
    resp = api.post("/v1/bundles", content=make_zip(files))
    assert resp.status_code == 400
    assert why in resp.json()["error"]["message"]


def test_non_zip_upload_is_400(api: httpx.Client) -> None:
    resp = api.post("/v1/bundles", content=b"definitely not a zip")
    assert resp.status_code == 400
    assert "not a valid zip" in resp.json()["error"]["message"]


def test_deploy_with_malformed_json_is_400(api: httpx.Client) -> None:
    resp = api.put("/v1/functions/x", content=b"{")
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "BadRequest"


def test_deploy_with_unknown_field_is_400(api: httpx.Client) -> None:
    resp = api.put("/v1/functions/x", json={"bundle_sha256": "0" * 64, "config": {"mem": 1}})
    assert resp.status_code == 400
    assert "mem" in resp.json()["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("POST", "/v1/tenants", "name"),
        ("PUT", "/v1/functions/x", "bundle_sha256"),
        ("POST", "/v1/nodes/join", "token"),
    ],
)
def test_invalid_utf8_in_a_json_body_is_400(
    api: httpx.Client, method: str, path: str, field: str
) -> None:
    """msgspec's UnicodeDecodeError used to escape as a 500 (found by tests/fuzz)."""
    resp = api.request(method, path, content=b'{"%s": "\xff"}' % field.encode())
    assert resp.status_code == 400
    assert "not valid UTF-8" in resp.json()["error"]["message"]


def test_deploy_of_missing_bundle_is_400(api: httpx.Client) -> None:
    resp = api.put("/v1/functions/x", json={"bundle_sha256": "0" * 64})
    assert resp.status_code == 400
    assert "has not been uploaded" in resp.json()["error"]["message"]


def test_deploy_with_bad_name_is_400(api: httpx.Client) -> None:
    resp = api.put("/v1/functions/Bad_Name", json={"bundle_sha256": "0" * 64})
    assert resp.status_code == 400
    assert "invalid function name" in resp.json()["error"]["message"]


def test_list_is_paginated(client: Client) -> None:
    bundle = make_zip({"main.py": "def handler(e, c):\n    return 1\n"})
    from edgerun.models import FunctionConfig

    for i in range(3):
        client.deploy(f"page-{i}", bundle, FunctionConfig(handler="main.handler"))
    names = [f.name for f in client.list_functions(page_size=1)]
    assert {"page-0", "page-1", "page-2"} <= set(names)
    assert names == sorted(names)


def test_versions_and_delete(client: Client) -> None:
    from edgerun.models import FunctionConfig

    a = client.deploy("gone", make_zip({"m.py": "x = 1"}), FunctionConfig(handler="m.x"))
    b = client.deploy("gone", make_zip({"m.py": "x = 2"}), FunctionConfig(handler="m.x"))
    versions = client.versions("gone")
    assert [v["sha256"] for v in versions] == [a.aliases["latest"], b.aliases["latest"]]
    assert versions[-1]["aliases"] == ["latest"]
    client.delete("gone")
    with pytest.raises(EdgerunError) as info:
        client.get("gone")
    assert info.value.status == 404


def test_change_feed_long_poll_wakes_on_deploy(cluster: LocalCluster, client: Client) -> None:
    from edgerun.models import FunctionConfig

    head = client.health()["revision"]
    result: dict = {}

    def poll() -> None:
        start = time.monotonic()
        resp = httpx.get(
            f"{cluster.control_url}/v1/changes",
            params={"since": head, "wait": 20},
            headers={"authorization": f"Bearer {cluster.token}"},
            timeout=30,
        )
        result["took"] = time.monotonic() - start
        result["body"] = resp.json()

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.3)
    client.deploy("feed-probe", make_zip({"m.py": "x = 1"}), FunctionConfig(handler="m.x"))
    t.join(30)
    assert result["took"] < 10
    assert [f["name"] for f in result["body"]["functions"]] == ["feed-probe"]
    assert result["body"]["revision"] > head


def test_change_feed_rejects_a_bad_revision(api: httpx.Client) -> None:
    resp = api.get("/v1/changes", params={"since": "abc"})
    assert resp.status_code == 400
