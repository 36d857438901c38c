"""Hostile requests against a real cluster: paths, headers, bodies, slow clients, the API.

Each test is an attack a caller can make without deploying anything
(findings 12-19 of issue 8); the nodes must answer with a JSON 4xx, never
run the request somewhere it should not, and never hold a connection open.
The cluster has short read deadlines so slow-client tests finish quickly.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
import warnings
import zipfile
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from edgerun.client import Client
from edgerun.cluster import LocalCluster
from tests.conftest import FUNCTIONS, make_zip
from tests.integration.conftest import (
    admin,
    deploy_folder,
    invoke,
    make_topology,
    node_knows,
    node_secret,
    remember_admin_key,
    wait_for,
)

pytestmark = pytest.mark.integration

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(make_topology(), tmp_path_factory.mktemp("requests-cluster"))
    for node in c.nodes.values():
        node.config = msgspec.structs.replace(
            node.config, header_timeout_s=HEADER_TIMEOUT_S, body_timeout_s=BODY_TIMEOUT_S
        )
    try:
        c.start()
        remember_admin_key(c)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def deployed(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    leaky = tmp_path_factory.mktemp("leaky-init")
    (leaky / "main.py").write_text(
        "raise RuntimeError('cannot connect to postgres://app:hunter2@db/prod')\n"
        "def handler(event, context):\n    return 1\n"
    )
    with Client(cluster.control_url, cluster.token) as client:
        versions = {
            "echo": deploy_folder(client, "echo", FUNCTIONS / "echo", handler="main.handler"),
            "echo-edge": deploy_folder(
                client, "echo-edge", FUNCTIONS / "echo", handler="main.handler", placement="edge"
            ),
            "echo-region": deploy_folder(
                client,
                "echo-region",
                FUNCTIONS / "echo",
                handler="main.handler",
                placement="region",
            ),
            "leaky-init": deploy_folder(
                client, "leaky-init", leaky, handler="main.handler", placement="edge"
            ),
        }
    for name, sha in versions.items():
        for node in ("pop-1", "region-1", "region-2"):
            wait_for(node_knows(cluster, node, name, sha), what=f"{node} to learn {name}")
    return versions


@pytest.fixture(scope="module")
def pop(cluster: LocalCluster, deployed: dict[str, str]) -> str:
    return cluster.url("pop-1")


def _bearer(cluster: LocalCluster) -> bytes:
    return b"Authorization: Bearer " + cluster.token.encode() + b"\r\n"


def json_error(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.content[:500])
    assert resp.headers["content-type"].startswith("application/json")
    err: dict[str, Any] = resp.json()["error"]
    assert err["type"] and err["message"]
    return err


def raw_request(url: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes (the server may stop reading them), return what it answers."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:

        def send() -> None:
            with contextlib.suppress(OSError):
                s.sendall(data)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    sender.join(timeout)
    return b"".join(chunks)


# --- 12: encoded dot-segments in forwarded paths ---------------------------------


def test_encoded_dot_segments_are_refused_not_forwarded(pop: str) -> None:
    for path in (
        "/fn/echo-region/..%2f..%2fv1%2fstatus",
        "/fn/echo-region/..%2F..%2Fv1%2Fpool",
        "/fn/echo-region/%2e%2e/%2e%2e/v1/status",
        "/fn/echo/..%2f..%2fv1%2fstatus",
    ):
        resp = httpx.get(f"{pop}{path}")
        err = json_error(resp, 400)
        assert "segments" in err["message"], path
        assert "functions" not in resp.text


def test_forwards_keep_the_path_escaped_as_it_arrived(pop: str) -> None:
    resp = httpx.get(f"{pop}/fn/echo-region/a%2Fb%20c")
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-edgerun-placement"].startswith("forwarded:")
    assert resp.json()["event"]["rawPath"] == "/a/b c"


def test_forwarded_requests_reach_only_invocations_on_a_region(cluster: LocalCluster) -> None:
    region = cluster.url("region-1")
    for header in ("x-edgerun-forwarded-by", "x-edgerun-node-token"):
        for path in ("/v1/status", "/v1/pool", "/v1/logs?function=echo", "/v1/health"):
            resp = httpx.get(f"{region}{path}", headers={**admin(cluster), header: "pop-1"})
            json_error(resp, 404)


# --- 13: node status needs the token; init errors do not leak -------------------


def test_node_status_and_pool_need_the_token(cluster: LocalCluster, pop: str) -> None:
    for node in ("pop-1", "region-1"):
        url = cluster.url(node)
        for path in ("/v1/status", "/v1/pool"):
            json_error(httpx.get(f"{url}{path}"), 401)
            assert httpx.get(f"{url}{path}", headers=admin(cluster)).status_code == 200


def test_public_health_names_no_function(cluster: LocalCluster, pop: str) -> None:
    assert invoke(cluster.url("region-1"), "echo", {}).status == 200  # something warm there
    region = cluster.url("region-1")
    public = httpx.get(f"{region}/v1/health").json()
    assert "warm" not in public
    private = httpx.get(f"{region}/v1/health", headers=admin(cluster)).json()
    assert private["warm"], "POPs choose regions by their warm versions"


def test_init_errors_do_not_show_exception_text_to_callers(cluster: LocalCluster, pop: str) -> None:
    ids = []
    for _ in range(2):  # the first call hits the failure, the second gets it replayed
        result = invoke(pop, "leaky-init", {})
        assert result.status == 500, result.content
        err = result.json()["error"]
        assert err["type"] == "RuntimeError" and err["phase"] == "init"
        assert "hunter2" not in result.content.decode()
        ids.append(result.headers["x-edgerun-request-id"])
    for request_id in ids:  # the detail is for the owner, in the logs under each request
        logs = httpx.get(
            f"{pop}/v1/logs", params={"request_id": request_id}, headers=admin(cluster)
        )
        assert "hunter2" in logs.text
    status = httpx.get(f"{pop}/v1/status", params={"limit": 1000}, headers=admin(cluster)).json()
    assert "hunter2" in str(status["functions"]["leaky-init"]["init_errors"])


# --- 14: forwarded-for and request ids are not the caller's to set ---------------


def test_client_forwarded_for_and_request_id_are_ignored(pop: str) -> None:
    forged = {"x-forwarded-for": "6.6.6.6", "x-edgerun-request-id": "someone-elses-id"}
    for name in ("echo-edge", "echo-region"):
        resp = httpx.get(f"{pop}/fn/{name}/", headers=forged)
        assert resp.status_code == 200, resp.text
        event = resp.json()["event"]
        assert event["requestContext"]["http"]["sourceIp"] == "127.0.0.1", name
        assert event["requestContext"]["requestId"] != "someone-elses-id"
        assert resp.headers["x-edgerun-request-id"] != "someone-elses-id"
        assert event["requestContext"]["domainName"] == pop.removeprefix("http://"), name
        assert "x-edgerun-node-token" not in event["headers"]


def test_a_forwarded_call_keeps_the_pops_request_id(cluster: LocalCluster, pop: str) -> None:
    resp = httpx.get(f"{pop}/fn/echo-region/")
    assert resp.status_code == 200, resp.text
    pop_id = resp.headers["x-edgerun-request-id"]
    assert resp.json()["event"]["requestContext"]["requestId"] == pop_id


def test_a_wrong_node_token_is_not_trusted(cluster: LocalCluster, pop: str) -> None:
    region = cluster.url("region-1")
    forged = {"x-forwarded-for": "6.6.6.6", "x-edgerun-node-token": "guess"}
    event = httpx.get(f"{region}/fn/echo/", headers=forged).json()["event"]
    assert event["requestContext"]["http"]["sourceIp"] == "127.0.0.1"


# --- a caller cannot pin a version; only a POP's forward can ------------------------


@pytest.fixture(scope="module")
def two_versions(
    cluster: LocalCluster, deployed: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Functions with an old version (alias "old") and a newer latest, each saying which it is."""
    shas: dict[str, str] = {}
    with Client(cluster.control_url, cluster.token) as client:
        for placement in ("edge", "region"):
            name = f"pinned-{placement}"
            for n in (1, 2):
                folder = tmp_path_factory.mktemp(f"{name}-v{n}")
                (folder / "main.py").write_text(f"def handler(e, c):\n    return {{'v': {n}}}\n")
                shas[f"{name}-v{n}"] = deploy_folder(
                    client, name, folder, handler="main.handler", placement=placement
                )
            client.set_alias(name, "old", shas[f"{name}-v1"])
            for node in ("pop-1", "region-1", "region-2"):
                for n in (1, 2):
                    sha = shas[f"{name}-v{n}"]
                    wait_for(node_knows(cluster, node, name, sha), what=f"{node} to learn {sha}")
    return shas


def test_a_callers_version_header_is_ignored(
    cluster: LocalCluster, pop: str, two_versions: dict[str, str]
) -> None:
    for name in ("pinned-edge", "pinned-region"):
        old = {"x-edgerun-version": two_versions[f"{name}-v1"]}
        for node in ("pop-1", "region-1"):
            resp = httpx.get(f"{cluster.url(node)}/fn/{name}/", headers=old)
            assert resp.status_code == 200, resp.text
            assert resp.json() == {"v": 2}, (name, node)
            assert resp.headers["x-edgerun-version"] == two_versions[f"{name}-v2"]
            direct = httpx.post(
                f"{cluster.url(node)}/v1/functions/{name}/invocations",
                headers={**old, **admin(cluster)},
            )
            assert direct.json() == {"v": 2}, (name, node)


def test_a_pops_forward_runs_the_version_the_pop_resolved(
    cluster: LocalCluster, pop: str, two_versions: dict[str, str]
) -> None:
    resp = httpx.get(f"{pop}/fn/pinned-region@old/")
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-edgerun-placement"].startswith("forwarded:")
    assert resp.json() == {"v": 1}
    # What a POP sends: its node credential and the version it resolved, which wins
    # over the alias the path names.
    forwarded = {
        "x-edgerun-node-token": node_secret(cluster, "pop-1"),
        "x-edgerun-version": two_versions["pinned-region-v1"],
    }
    resp = httpx.get(f"{cluster.url('region-1')}/fn/pinned-region/", headers=forwarded)
    assert resp.json() == {"v": 1}
    # Only a node credential pins: not even the cluster admin's key does.
    as_admin = {**forwarded, "x-edgerun-node-token": cluster.token}
    resp = httpx.get(f"{cluster.url('region-1')}/fn/pinned-region/", headers=as_admin)
    assert resp.json() == {"v": 2}


def test_a_forwarded_call_takes_one_request_id(pop: str) -> None:
    """The POP works out a call's origin once (it did twice for forwards, drawing two ids)."""
    ids = []
    for _ in range(3):
        resp = httpx.get(f"{pop}/fn/echo-region/")
        assert resp.headers["x-edgerun-placement"].startswith("forwarded:")
        ids.append(resp.headers["x-edgerun-request-id"])
    prefix = ids[0][:16]  # a random prefix per node process, then a hex counter
    counters = [int(i.removeprefix(prefix), 16) for i in ids]
    assert counters == list(range(counters[0], counters[0] + 3)), ids


# --- 15: header size and count ----------------------------------------------------


def test_a_huge_header_is_a_json_431(pop: str) -> None:
    head = b"GET /fn/echo-edge/ HTTP/1.1\r\nHost: x\r\nx-big: " + b"a" * (10 << 20) + b"\r\n\r\n"
    answer = raw_request(pop, head)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b'"HeadersTooLarge"' in answer


def test_too_many_or_too_large_headers_are_431(pop: str) -> None:
    many = {f"x-h{i}": "v" for i in range(150)}
    json_error(httpx.get(f"{pop}/fn/echo-edge/", headers=many), 431)
    json_error(httpx.get(f"{pop}/v1/health", headers=many), 431)
    large = {"x-big": "a" * 70_000}
    json_error(httpx.get(f"{pop}/fn/echo-edge/", headers=large), 431)


def test_the_control_plane_limits_header_count_and_size_too(cluster: LocalCluster) -> None:
    many = b"".join(b"x-h%d: v\r\n" % i for i in range(150))
    large = b"x-big: " + b"a" * 70_000 + b"\r\n"
    for extra in (many, large):
        # the whole head in one read: it used to slip past the size check
        head = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n"
        answer = raw_request(cluster.control_url, head)
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert b'"HeadersTooLarge"' in answer


def test_a_pipelined_head_is_counted_from_its_own_start(cluster: LocalCluster, pop: str) -> None:
    small = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
    large = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nx-big: " + b"a" * 70_000 + b"\r\n\r\n"
    for url in (cluster.control_url, pop):
        answer = raw_request(url, small + large)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert answer.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 431" in answer, answer[-300:]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /v1/health HTTP/1.1\r\nHost: x\r\nBad\x01Name: v\r\n\r\n",
        b"POST /v1/functions/echo/invocations HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/functions/echo/invocations HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        b"GET /v1/health HTTP/9.9\r\n\r\n",
    ],
    ids=["bad-header-char", "non-numeric-content-length", "broken-chunking", "bad-version"],
)
@pytest.mark.parametrize("node", ["pop-1", "control"])
def test_malformed_requests_are_a_json_400(
    cluster: LocalCluster, pop: str, node: str, request_bytes: bytes
) -> None:
    answer = raw_request(cluster.url(node), request_bytes)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"content-type: application/json" in answer
    assert b'"BadRequest"' in answer


# --- 16: deeply nested JSON -------------------------------------------------------


@pytest.mark.parametrize("depth", [300, 1000, 100_000])
def test_deep_json_is_a_400(cluster: LocalCluster, pop: str, depth: int) -> None:
    body = b"[" * depth + b"]" * depth
    for name in ("echo-edge", "echo-region"):
        resp = httpx.post(
            f"{pop}/v1/functions/{name}/invocations", content=body, headers=admin(cluster)
        )
        assert "deeper" in json_error(resp, 400)["message"]


def test_deep_json_to_the_control_plane_is_a_400(cluster: LocalCluster) -> None:
    body = b'{"version": ' + b"[" * 1500 + b"]" * 1500 + b"}"
    resp = httpx.put(
        f"{cluster.control_url}/v1/functions/echo/aliases/x", content=body, headers=admin(cluster)
    )
    json_error(resp, 400)


# --- 17: query parameters and numbers in headers -----------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "since=\u00b2",
        "wait=\u00b9",
        "since=100000000000000000000000",
        "wait=100000000000000000000000",
        "since=-1",
        "since=1_0",
    ],
)
def test_bad_feed_parameters_are_400(cluster: LocalCluster, query: str) -> None:
    resp = httpx.get(f"{cluster.control_url}/v1/changes?{query}", headers=admin(cluster))
    assert "query parameter" in json_error(resp, 400)["message"]


@pytest.mark.parametrize("limit", ["\u00b9", "0", "100000000000000000000000", "\u0661"])
def test_bad_list_limits_are_400(cluster: LocalCluster, limit: str) -> None:
    resp = httpx.get(f"{cluster.control_url}/v1/functions?limit={limit}", headers=admin(cluster))
    json_error(resp, 400)


# --- 18: bundles that could never run are refused at upload ----------------------


def _zip_with(entries: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", method) as zf:
        warnings.simplefilter("ignore")  # "Duplicate name" is the point
        for name, data in entries:
            zf.writestr(name, data)
    return buf.getvalue()


def _unsupported_method() -> bytes:
    data = bytearray(make_zip({"main.py": "def handler(e, c):\n    return 1\n"}))
    # compression method fields: local header offset 8, central directory offset 10
    data[8:10] = (99).to_bytes(2, "little")
    central = data.rindex(b"PK\x01\x02")
    data[central + 10 : central + 12] = (99).to_bytes(2, "little")
    return bytes(data)


@pytest.mark.parametrize(
    "bundle",
    [
        pytest.param(_zip_with([("a", b"x"), ("a/b", b"y")]), id="file-and-folder"),
        pytest.param(_zip_with([("a/", b""), ("a", b"x")]), id="folder-entry-and-file"),
        pytest.param(_zip_with([("main.py", b"1"), ("main.py", b"2")]), id="duplicate"),
        pytest.param(_zip_with([("x" * 300 + ".py", b"x")]), id="long-component"),
        pytest.param(_zip_with([("d/" * 4000 + "f.py", b"x")]), id="deep-path"),
        pytest.param(_unsupported_method(), id="unsupported-method"),
    ],
)
def test_bundles_no_node_could_extract_are_400_at_upload(
    cluster: LocalCluster, bundle: bytes
) -> None:
    resp = httpx.post(f"{cluster.control_url}/v1/bundles", content=bundle, headers=admin(cluster))
    assert json_error(resp, 400)["type"] == "InvalidBundle"


# --- 19: slow clients ---------------------------------------------------------------


def _closed_within(sock: socket.socket, deadline: float) -> bytes:
    """What the server sent before closing; fails if it is still open at ``deadline``."""
    sock.settimeout(max(0.0, deadline - time.monotonic()))
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        raise AssertionError("the server kept a slow client's connection open") from None
    return data


@pytest.mark.parametrize("node", ["pop-1", "region-1", "control"])
def test_partial_requests_are_closed_after_the_header_timeout(
    cluster: LocalCluster, node: str
) -> None:
    host, port = cluster.url(node).removeprefix("http://").split(":")
    partials = [
        b"",
        b"GE",
        b"GET /v1/health HTTP/1.1\r\n",
        b"GET /fn/echo/ HTTP/1.1\r\nHost: x\r\nx-slow: 1",
    ]
    socks = []
    try:
        for i in range(60):
            s = socket.create_connection((host, int(port)))
            s.sendall(partials[i % len(partials)])
            socks.append(s)
        deadline = time.monotonic() + HEADER_TIMEOUT_S + 5.0
        for s in socks:
            answer = _closed_within(s, deadline)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
    finally:
        for s in socks:
            s.close()
    assert httpx.get(f"{cluster.url(node)}/v1/health").status_code == 200


def test_a_body_that_never_finishes_is_a_408(cluster: LocalCluster, pop: str) -> None:
    host, port = pop.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            b"POST /v1/functions/echo-edge/invocations HTTP/1.1\r\nHost: x\r\n"
            + _bearer(cluster)
            + b"Content-Length: 100\r\n\r\n{"
        )
        answer = _closed_within(s, time.monotonic() + BODY_TIMEOUT_S + 5.0)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"RequestTimeout"' in answer


def test_a_slow_upload_to_the_control_plane_is_closed(cluster: LocalCluster) -> None:
    host, port = cluster.control_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            b"POST /v1/bundles HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + cluster.token.encode()
            + b"\r\nContent-Length: 1000\r\n\r\nPK"
        )
        _closed_within(s, time.monotonic() + BODY_TIMEOUT_S + 5.0)


def test_a_slow_body_to_the_control_plane_is_a_json_408(cluster: LocalCluster) -> None:
    host, port = cluster.control_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            b"PUT /v1/functions/echo/aliases/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + cluster.token.encode()
            + b"\r\nContent-Length: 100\r\n\r\n{"
        )
        answer = _closed_within(s, time.monotonic() + BODY_TIMEOUT_S + 5.0)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"RequestTimeout"' in answer


@pytest.fixture(scope="module")
def sleeper(cluster: LocalCluster, deployed: dict[str, str]) -> str:
    with Client(cluster.control_url, cluster.token) as client:
        sha = deploy_folder(
            client,
            "sleeper",
            FUNCTIONS / "sleeper",
            handler="main.handler",
            placement="edge",
            timeout_s=30.0,
        )
    wait_for(node_knows(cluster, "pop-1", "sleeper", sha), what="pop-1 to learn sleeper")
    return sha


def test_a_request_queued_behind_a_long_one_does_not_time_out(
    cluster: LocalCluster, pop: str, sleeper: str
) -> None:
    """The body deadline runs while a body is read, not while its request waits its turn:
    a pipelined request that expects 100-continue sends its body only once it is read."""
    seconds = BODY_TIMEOUT_S + 2.5
    slow = b'{"seconds": %.1f}' % seconds
    host, port = pop.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            b"POST /v1/functions/sleeper/invocations HTTP/1.1\r\nHost: x\r\n"
            + _bearer(cluster)
            + b"Content-Length: %d\r\n\r\n%s" % (len(slow), slow)
            + b"POST /v1/functions/echo-edge/invocations HTTP/1.1\r\nHost: x\r\n"
            + _bearer(cluster)
            + b"Content-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        s.settimeout(seconds + 10.0)
        answer = b""
        while b"100 Continue" not in answer:
            chunk = s.recv(65536)
            assert chunk, f"closed before the second request was read: {answer[:300]!r}"
            answer += chunk
        s.sendall(b"{}")
        answer += _closed_within(s, time.monotonic() + 10.0)
    assert answer.count(b"HTTP/1.1 200") == 2, answer[:300]
    assert b'"slept"' in answer
