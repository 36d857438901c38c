"""Deploy, then invoke through a POP: results, headers and error answers."""

from __future__ import annotations

import httpx
import pytest

from edgerun.client import Client
from edgerun.cluster import LocalCluster
from tests.conftest import EXAMPLES
from tests.integration.conftest import (
    admin,
    deploy_folder,
    invoke,
    node_knows,
    node_status,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def examples(cluster: LocalCluster, client: Client) -> dict[str, str]:
    from edgerun.build import build_bundle, read_manifest
    from edgerun.models import FunctionConfig

    versions = {}
    for folder in sorted(p for p in EXAMPLES.iterdir() if p.is_dir()):
        manifest = read_manifest(folder)
        name = manifest.pop("name")
        record = client.deploy(name, build_bundle(folder), FunctionConfig(**manifest))
        versions[name] = record.aliases["latest"]
    for name, sha in versions.items():
        wait_for(node_knows(cluster, "pop-1", name, sha), what=f"pop-1 to learn {name}")
    return versions


def test_hello_example_answers_over_http_with_lambda_response(pop: str, examples: dict) -> None:
    resp = httpx.get(f"{pop}/fn/hello/greet?name=ada")
    assert resp.status_code == 200
    assert resp.json()["message"] == "hello, ada!"
    assert resp.headers["x-edgerun-node"] == "pop-1"
    assert resp.headers["x-edgerun-version"] == examples["hello"]


def test_a_warm_function_is_served_at_the_pop(pop: str, examples: dict) -> None:
    def warm() -> bool:
        return httpx.get(f"{pop}/fn/hello").headers["x-edgerun-placement"] == "local-warm"

    wait_for(warm, what="hello to be warm at the POP")
    resp = httpx.get(f"{pop}/fn/hello")
    assert resp.headers["x-edgerun-reason"] == "warm"
    assert float(resp.headers["x-edgerun-duration-ms"]) > 0


def test_json_transform_example_direct_invoke(pop: str, examples: dict) -> None:
    order = {
        "id": 7,
        "customer": " grace hopper ",
        "items": [{"sku": "b", "price": 2.5, "qty": 2}, {"sku": "a", "price": 1}],
    }
    result = invoke(pop, "json-transform", order)
    assert result.status == 200
    assert result.json() == {
        "id": 7,
        "customer": "Grace Hopper",
        "count": 3,
        "total": 6.0,
        "skus": ["a", "b"],
    }


def test_with_deps_example_imports_its_vendored_dependency(pop: str, examples: dict) -> None:
    result = invoke(pop, "with-deps", {"echo": "x"})
    assert result.status == 200
    assert result.json() == {"six_version": "1.16.0", "py3": True, "echo": "x"}


def test_region_only_example_is_forwarded(pop: str, examples: dict) -> None:
    result = invoke(pop, "heavy", {"rounds": 5})
    assert result.status == 200
    assert result.json()["rounds"] == 5
    assert result.placement.startswith("forwarded:region-")
    assert result.reason == "region-only"
    assert result.headers["x-edgerun-region-placement"] in ("local-cold", "local-warm")


def test_function_env_and_context_reach_the_handler(pop: str, deployed: dict) -> None:
    result = invoke(pop, "echo", {"a": [1, 2]})
    assert result.json() == {"event": {"a": [1, 2]}, "env": "hi", "fn": "echo"}


def test_exception_gives_500_with_only_user_frames(pop: str, deployed: dict) -> None:
    result = invoke(pop, "raiser", {"value": 3})
    assert result.status == 500
    err = result.json()["error"]
    assert err["type"] == "ValueError"
    assert err["message"] == "bad value: 3"
    assert any("_inner" in frame for frame in err["traceback"])
    assert not any("edgerun" in frame and "sandbox" in frame for frame in err["traceback"])


def test_timeout_gives_504_and_node_keeps_serving(pop: str, deployed: dict) -> None:
    result = invoke(pop, "sleeper", {"seconds": 5})
    assert result.status == 504
    assert result.json()["error"]["type"] == "Timeout"
    assert invoke(pop, "echo", {}).status == 200
    assert invoke(pop, "sleeper", {"seconds": 0}).status == 200


def test_os_exit_gives_502_and_node_keeps_serving(pop: str, deployed: dict) -> None:
    result = invoke(pop, "exiter", {})
    assert result.status == 502
    assert "exited with status 7" in result.json()["error"]["message"]
    assert invoke(pop, "echo", {}).status == 200


def test_import_error_gives_500_and_shows_in_status(
    pop: str, cluster: LocalCluster, deployed: dict
) -> None:
    result = invoke(pop, "broken-import", {})
    assert result.status == 500
    err = result.json()["error"]
    assert err["type"] == "ModuleNotFoundError"
    assert err["phase"] == "init"

    ran_at = result.placement.split(":")[1] if ":" in result.placement else "pop-1"
    status = node_status(cluster, ran_at)
    errors = status["functions"]["broken-import"]["init_errors"]
    assert errors[deployed["broken-import"]]["type"] == "ModuleNotFoundError"


def test_unknown_function_is_404_json(cluster: LocalCluster, pop: str, deployed: dict) -> None:
    resp = httpx.get(f"{pop}/fn/no-such-fn/", headers=admin(cluster))
    assert resp.status_code == 404
    assert resp.json()["error"]["type"] == "NotFound"


def test_unknown_alias_is_404_json(pop: str, deployed: dict) -> None:
    resp = httpx.get(f"{pop}/fn/echo@nope/")
    assert resp.status_code == 404
    assert "no alias or version 'nope'" in resp.json()["error"]["message"]


def test_malformed_direct_payload_is_400_json(
    cluster: LocalCluster, pop: str, deployed: dict
) -> None:
    resp = httpx.post(
        f"{pop}/v1/functions/echo/invocations", content=b"{nope", headers=admin(cluster)
    )
    assert resp.status_code == 400
    assert "not valid JSON" in resp.json()["error"]["message"]


def test_direct_payload_with_an_integer_past_64_bits_is_400_json(
    cluster: LocalCluster, pop: str, deployed: dict
) -> None:
    """It used to fail encoding the sandbox's msgpack frame: a 500 (found by tests/fuzz)."""
    resp = httpx.post(
        f"{pop}/v1/functions/echo/invocations",
        content=b'{"n": 18446744073709551616}',
        headers=admin(cluster),
    )
    assert resp.status_code == 400
    assert "integer outside" in resp.json()["error"]["message"]
    assert invoke(pop, "echo", {"n": 2**64 - 1}).json()["event"] == {"n": 2**64 - 1}


@pytest.mark.parametrize("path", ["/v1/functions/echo/invocations", "/v1/admin/prewarm"])
def test_invalid_utf8_in_a_json_body_is_400_json(
    cluster: LocalCluster, pop: str, deployed: dict, path: str
) -> None:
    """msgspec's UnicodeDecodeError used to escape as a 500 (found by tests/fuzz)."""
    resp = httpx.post(f"{pop}{path}", content=b'{"function": "e\x91o"}', headers=admin(cluster))
    assert resp.status_code == 400
    assert "not valid UTF-8" in resp.json()["error"]["message"]


def test_payload_over_6mb_is_413_json(pop: str, deployed: dict) -> None:
    resp = httpx.post(f"{pop}/fn/echo/", content=b"x" * (6 * 1024 * 1024 + 1))
    assert resp.status_code == 413
    assert resp.json()["error"]["type"] == "PayloadTooLarge"


def test_unknown_route_is_404_json(pop: str) -> None:
    resp = httpx.get(f"{pop}/nothing-here")
    assert resp.status_code == 404
    assert resp.json()["error"]["type"] == "NotFound"


def test_new_version_is_served_by_the_pop_within_2s(
    pop: str, client: Client, tmp_path, deployed: dict
) -> None:
    folder = tmp_path / "versioned"
    folder.mkdir()
    for n in (1, 2):
        (folder / "main.py").write_text(f"def handler(event, context):\n    return {n}\n")
        sha = deploy_folder(client, "versioned", folder, handler="main.handler")

        def serves_new(expected: bytes = str(n).encode()) -> bool:
            return invoke(pop, "versioned", {}).content == expected

        took = wait_for(serves_new, timeout=2.0, what=f"version {n} at the POP")
        assert took < 2.0
        assert invoke(pop, "versioned", {}).headers["x-edgerun-version"] == sha


def test_alias_pins_a_version_and_rollback_moves_it(
    pop: str, client: Client, tmp_path, cluster: LocalCluster, deployed: dict
) -> None:
    folder = tmp_path / "aliased"
    folder.mkdir()
    shas = []
    for n in (1, 2):
        (folder / "main.py").write_text(f"def handler(event, context):\n    return {n}\n")
        shas.append(deploy_folder(client, "aliased", folder, handler="main.handler"))
    client.set_alias("aliased", "prod", shas[0][:12])
    wait_for(node_knows(cluster, "pop-1", "aliased", shas[1]), what="pop to learn v2")
    wait_for(
        lambda: invoke(pop, "aliased", {}, qualifier="prod").content == b"1", what="prod -> v1"
    )
    assert invoke(pop, "aliased", {}).content == b"2"
    client.set_alias("aliased", "prod", shas[1])
    wait_for(
        lambda: invoke(pop, "aliased", {}, qualifier="prod").content == b"2", what="prod -> v2"
    )
    assert httpx.get(f"{pop}/fn/aliased@{shas[0][:10]}/").content == b"1"


def test_get_on_the_invocations_route_is_405_json(pop: str) -> None:
    resp = httpx.get(f"{pop}/v1/functions/echo/invocations")
    assert resp.status_code == 405
    assert resp.json()["error"]["type"] == "MethodNotAllowed"


def test_fn_route_without_a_name_is_404_json(pop: str) -> None:
    resp = httpx.get(f"{pop}/fn/")
    assert resp.status_code == 404
    assert "no function named" in resp.json()["error"]["message"]
