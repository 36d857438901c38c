"""Forged sandbox replies (issue 8, findings 9-11): the node checks every frame.

``forger`` replaces its worker's reply builder, so the frames it sends skip
every check the sandbox side makes. Whatever it forges, the caller gets a
well-formed HTTP answer (a JSON 502 saying why, when the reply cannot be
sent), and a region that relays a function's bad answer is not the one
blamed for it.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from edgerun.cluster import LocalCluster
from tests.hostile.conftest import SUPPORTED, UNSUPPORTED_REASON
from tests.integration.conftest import admin, node_status

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not SUPPORTED, reason=UNSUPPORTED_REASON),
]

REFUSED = {
    "status 1000": {"status": 1000},
    "status 42": {"status": 42},
    "CR/LF in a value": {"status": 200, "headers": [["x-a", "1\r\nset-cookie: stolen=1"]]},
    "CR/LF in a name": {"status": 200, "headers": [["x-a\r\nx-b", "1"]]},
    "a name with a space": {"status": 200, "headers": [["x a", "1"]]},
    "a value outside latin-1": {"status": 200, "headers": [["x-a", "€"]]},
    "a 9 KB header": {"status": 200, "headers": [["x-big", "v" * 9000]]},
    "200 headers": {"status": 200, "headers": [[f"x-{i}", "v"] for i in range(200)]},
}


def forge(url: str, function: str, spec: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/fn/{function}/", json=spec, timeout=30)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_reply_no_http_answer_can_carry_is_a_json_502(pop: str, case: str) -> None:
    resp = forge(pop, "forger", REFUSED[case])

    assert resp.status_code == 502, (resp.status_code, resp.content[:300])
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"]["type"] == "InvalidResponse"
    assert resp.headers["x-edgerun-node"] == "pop-1"


def test_framing_headers_from_the_function_are_dropped_not_obeyed(pop: str) -> None:
    spec = {
        "status": 201,
        "headers": [
            ["Content-Length", "99999"],
            ["Transfer-Encoding", "chunked"],
            ["X-Edgerun-Node", "forged-node"],
            ["X-Kept", "yes"],
        ],
    }
    resp = forge(pop, "forger", spec)

    assert resp.status_code == 201
    assert resp.content == b"forged"
    assert resp.headers["x-kept"] == "yes"
    assert resp.headers["x-edgerun-node"] == "pop-1"


def test_bad_answers_relayed_by_a_region_do_not_mark_it_down(
    cluster: LocalCluster, pop: str
) -> None:
    for case in ("CR/LF in a value", "a 9 KB header", "status 1000"):
        resp = forge(pop, "forger-in-region", REFUSED[case])
        assert resp.status_code == 502, (case, resp.content[:300])
        assert resp.json()["error"]["type"] == "InvalidResponse", case
        assert resp.headers["x-edgerun-placement"].startswith("forwarded:")
    regions = node_status(cluster, "pop-1")["regions"]
    assert [r["healthy"] for r in regions] == [True, True], regions


def test_forged_output_is_capped_on_the_node(cluster: LocalCluster, pop: str) -> None:
    resp = forge(pop, "forger", {"status": 200, "log_bytes": 5 * 1024 * 1024})
    assert resp.status_code == 200, resp.content[:300]

    logs = httpx.get(
        f"{pop}/v1/logs",
        params={"request_id": resp.headers["x-edgerun-request-id"]},
        headers=admin(cluster),
        timeout=10,
    )
    [entry] = logs.json()["logs"]
    assert 256 * 1024 <= len(entry["output"]) <= 256 * 1024 + 100
