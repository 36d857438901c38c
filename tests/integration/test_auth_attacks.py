"""Attacks on the trust layer that once worked, on real processes: each test is the
attack, and passes only while the attack fails."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from edgerun.build import build_bundle
from edgerun.client import Client
from edgerun.cluster import LocalCluster
from tests.conftest import FUNCTIONS
from tests.integration.conftest import (
    admin,
    bearer,
    deploy_everywhere,
    deploy_folder,
    start_cluster,
    wait_for,
)

pytestmark = pytest.mark.integration

NODES = ("pop-1", "region-1", "region-2")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("attacks"))
    yield c
    c.stop()


@pytest.fixture(scope="module")
def root(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster.control_url, cluster.token) as c:
        yield c


@pytest.fixture(scope="module")
def tenants(cluster: LocalCluster, root: Client) -> dict[str, str]:
    """Tenant ``victim`` (an invoke key) and tenant ``evil`` (an admin key and two public
    functions: one run wherever placement likes, one always forwarded to a region)."""
    root.create_tenant("victim")
    root.create_tenant("evil")
    victim = str(root.create_key(["invoke"], tenant="victim")["secret"])
    evil = str(root.create_key(["admin"], tenant="evil")["secret"])
    with Client(cluster.control_url, evil) as client:
        deploy_everywhere(cluster, client, "evil.collector", auth="public")
        deploy_everywhere(cluster, client, "evil.far", auth="public", placement="region")
    return {"victim": victim, "evil": evil}


def test_a_live_key_sent_to_a_public_function_never_reaches_it(
    cluster: LocalCluster, tenants: dict[str, str]
) -> None:
    """A client that sends its key with every request to the edge (one origin for all
    tenants' functions) must not hand it to another tenant's public function: not where
    the function runs, not in what a POP forwards to a region."""
    victim = tenants["victim"]
    for node in NODES:
        for fn in ("evil.collector", "evil.far"):
            resp = httpx.get(f"{cluster.url(node)}/fn/{fn}/", headers=bearer(victim), timeout=20)
            assert resp.status_code == 200, resp.text
            headers = resp.json()["event"]["headers"]
            assert victim not in resp.text, (node, fn, resp.headers.get("x-edgerun-placement"))
            assert "authorization" not in headers
    # A second authorization header does not smuggle it past either.
    resp = httpx.get(
        f"{cluster.url('pop-1')}/fn/evil.far/",
        headers=[("authorization", "Basic dXNlcjpwdw=="), ("authorization", f"Bearer {victim}")],
        timeout=20,
    )
    assert resp.status_code == 200 and victim not in resp.text
    # What is not an edgerun key stays the function's own.
    own = httpx.get(
        f"{cluster.url('pop-1')}/fn/evil.far/", headers=bearer("not-an-edgerun-key"), timeout=20
    )
    assert own.json()["event"]["headers"]["authorization"] == "Bearer not-an-edgerun-key"


def test_secrets_of_a_deleted_tenant_do_not_pass_to_a_tenant_reusing_its_name(
    cluster: LocalCluster, root: Client
) -> None:
    old_value = "old-owner-db-password-4d1f"
    root.create_tenant("reused")
    old = str(root.create_key(["deploy"], tenant="reused")["secret"])
    put = httpx.put(
        f"{cluster.control_url}/v1/functions/reused.later/secrets/DB_URL",
        json={"value": old_value},
        headers=bearer(old),
    )
    assert put.status_code == 200, put.text  # set ahead of a deploy that never came
    deleted = httpx.delete(f"{cluster.control_url}/v1/tenants/reused", headers=admin(cluster))
    assert deleted.status_code == 200, deleted.text

    root.create_tenant("reused")
    new = str(root.create_key(["deploy", "invoke"], tenant="reused")["secret"])
    listed = httpx.get(
        f"{cluster.control_url}/v1/functions/reused.later/secrets", headers=bearer(new)
    )
    assert listed.json()["names"] == []
    put = httpx.put(
        f"{cluster.control_url}/v1/functions/reused.later/secrets/DB_URL",
        json={"value": "new-owner-value"},
        headers=bearer(new),
    )
    assert put.status_code == 200, put.text
    with Client(cluster.control_url, new) as client:
        deploy_everywhere(
            cluster,
            client,
            "reused.later",
            FUNCTIONS / "secret-user",
            secrets=["DB_URL"],
            auth="key",
        )
    resp = httpx.post(
        f"{cluster.url('pop-1')}/v1/functions/reused.later/invocations",
        json={},
        headers=bearer(new),
        timeout=20,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["db_url_sha256"] != hashlib.sha256(old_value.encode()).hexdigest()


def test_secrets_cannot_be_set_in_a_tenant_that_does_not_exist(cluster: LocalCluster) -> None:
    url = f"{cluster.control_url}/v1/functions/nosuchtenant.fn/secrets"
    one = httpx.put(url + "/DB_URL", json={"value": "v"}, headers=admin(cluster))
    many = httpx.post(url, json={"secrets": {"DB_URL": "v"}}, headers=admin(cluster))
    assert (one.status_code, many.status_code) == (404, 404), (one.text, many.text)


def test_a_deploy_racing_its_tenants_deletion_does_not_land(
    cluster: LocalCluster, root: Client
) -> None:
    """The tenant existed when the deploy began; it is deleted (its keys revoked) while the
    body is still arriving: the function must not appear in a tenant that is gone (where
    whoever gets the name next would find it)."""
    root.create_tenant("racy")
    key = str(root.create_key(["deploy"], tenant="racy")["secret"])
    sha = httpx.post(
        f"{cluster.control_url}/v1/bundles",
        content=build_bundle(FUNCTIONS / "echo"),
        headers=bearer(key),
    ).json()["sha256"]
    body = json.dumps({"bundle_sha256": sha, "config": {"handler": "main.handler"}}).encode()
    deleted = threading.Event()

    def slowly() -> Iterator[bytes]:
        yield body[:5]
        deleted.wait(10)
        yield body[5:]

    answer: dict[str, httpx.Response] = {}

    def deploy() -> None:
        answer["deploy"] = httpx.put(
            f"{cluster.control_url}/v1/functions/racy.fn",
            content=slowly(),
            headers={**bearer(key), "content-length": str(len(body))},
            timeout=20,
        )

    thread = threading.Thread(target=deploy)
    thread.start()
    time.sleep(0.5)  # the deploy has passed its checks and waits for the rest of its body
    gone = httpx.delete(f"{cluster.control_url}/v1/tenants/racy", headers=admin(cluster))
    deleted.set()
    thread.join(20)
    assert gone.status_code == 200, gone.text
    assert answer["deploy"].status_code == 404, answer["deploy"].text
    left = httpx.get(f"{cluster.control_url}/v1/functions/racy.fn", headers=admin(cluster))
    assert left.status_code == 404, left.text


def test_revoking_another_tenants_key_looks_like_revoking_a_missing_one(
    cluster: LocalCluster, root: Client, tenants: dict[str, str]
) -> None:
    victim_key = next(k for k in root.keys(tenant="victim") if not k["revoked"])["id"]
    for key_id in (victim_key, "admin"):
        real = httpx.delete(
            f"{cluster.control_url}/v1/keys/{key_id}", headers=bearer(tenants["evil"])
        )
        missing = httpx.delete(
            f"{cluster.control_url}/v1/keys/EK000000000000000000", headers=bearer(tenants["evil"])
        )
        assert real.status_code == missing.status_code == 404
        assert real.json()["error"]["message"] == f"key {key_id!r} does not exist"
        assert "victim" not in real.text and "default" not in real.text


def test_no_users_key_reads_secret_values_not_even_the_cluster_admins(
    cluster: LocalCluster, root: Client
) -> None:
    value = "only-for-nodes-77a1"
    put = httpx.put(
        f"{cluster.control_url}/v1/functions/vault/secrets/DB_URL",
        json={"value": value},
        headers=admin(cluster),
    )
    assert put.status_code == 200, put.text
    deploy_folder(
        root, "vault", FUNCTIONS / "secret-user", handler="main.handler", secrets=["DB_URL"]
    )
    resp = httpx.get(f"{cluster.control_url}/v1/node/secrets/vault", headers=admin(cluster))
    assert resp.status_code == 403, resp.text
    assert value not in resp.text


def test_a_key_with_a_vanishing_rate_is_refused_with_429_not_500(
    cluster: LocalCluster, root: Client, tenants: dict[str, str]
) -> None:
    with Client(cluster.control_url, tenants["evil"]) as client:
        deploy_everywhere(cluster, client, "evil.slow", auth="key")
        created = client.create_key(["invoke"], rate_per_s=1e-320)
    url = f"{cluster.url('pop-1')}/v1/functions/evil.slow/invocations"

    def call() -> int:
        return httpx.post(url, json={}, headers=bearer(created["secret"]), timeout=20).status_code

    first: list[int] = []
    wait_for(lambda: first.append(call()) or first[-1] != 401, what="the key to reach the POP")
    assert first[-1] == 200  # the bucket's one token
    assert [call(), call()] == [429, 429]
