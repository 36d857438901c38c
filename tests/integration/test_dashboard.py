"""The dashboard at /ui, in a real headless Chromium against a running topology,
and its login over plain HTTP."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from edgerun.client import Client
from edgerun.cluster import LocalCluster, free_port
from edgerun.config import ControlSpec, Topology
from edgerun.control.ui import UI_ROUTES
from tests.conftest import FUNCTIONS
from tests.integration.conftest import deploy_everywhere, wait_for

pytestmark = pytest.mark.integration

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOTS = (
    Path(os.environ.get("EDGERUN_SCREENSHOTS", ""))
    if os.environ.get("EDGERUN_SCREENSHOTS")
    else None
)


def login(cluster: LocalCluster, key: str) -> httpx.Client:
    http = httpx.Client(base_url=cluster.control_url, timeout=10)
    resp = http.post("/ui/login", json={"key": key})
    assert resp.status_code == 200, resp.text
    return http


# --- login and sessions over HTTP ------------------------------------------------


def test_the_dashboard_sends_a_visitor_without_a_session_to_the_login(
    cluster: LocalCluster,
) -> None:
    resp = httpx.get(f"{cluster.control_url}/ui")
    assert resp.status_code == 303
    assert resp.headers["location"] == "/ui/login"


def test_the_event_stream_needs_a_session(cluster: LocalCluster) -> None:
    resp = httpx.get(f"{cluster.control_url}/ui/events")
    assert resp.status_code == 401
    assert "log in" in resp.json()["error"]["message"]


def test_a_wrong_key_cannot_log_in(cluster: LocalCluster) -> None:
    resp = httpx.post(f"{cluster.control_url}/ui/login", json={"key": "er_not-a-key"})
    assert resp.status_code == 401
    assert "set-cookie" not in resp.headers


def test_a_malformed_login_is_a_clear_400(cluster: LocalCluster) -> None:
    resp = httpx.post(f"{cluster.control_url}/ui/login", content=b"{nope")
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "BadRequest"


def test_a_tenants_admin_cannot_log_in(cluster: LocalCluster) -> None:
    with Client(cluster.control_url, cluster.token) as client:
        client.create_tenant("dash")
        key = client.create_key(["admin"], tenant="dash")
    resp = httpx.post(f"{cluster.control_url}/ui/login", json={"key": key["secret"]})
    assert resp.status_code == 403


def test_the_session_cookie_is_http_only_and_strict(cluster: LocalCluster) -> None:
    resp = httpx.post(f"{cluster.control_url}/ui/login", json={"key": cluster.token})
    cookie = resp.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie


def test_revoking_the_key_ends_its_session(cluster: LocalCluster) -> None:
    with Client(cluster.control_url, cluster.token) as client:
        key = client.create_key(["admin"])
        http = login(cluster, key["secret"])
        assert http.get("/ui").status_code == 200
        client.revoke_key(key["id"])
    assert http.get("/ui").status_code == 303
    assert http.get("/ui/events").status_code == 401


def test_logging_out_ends_the_session(cluster: LocalCluster) -> None:
    http = login(cluster, cluster.token)
    assert http.post("/ui/logout").status_code == 200
    http.cookies.clear()
    assert http.get("/ui").status_code == 303


def test_pages_forbid_inline_scripts_and_framing(cluster: LocalCluster) -> None:
    csp = login(cluster, cluster.token).get("/ui").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp


# --- in a real browser -----------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (shutil.which(CHROMIUM) and shutil.which(DRIVER)):
        pytest.fail("chromium and chromium-driver are missing: run ./scripts/install")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--window-size=1400,1000",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver: object, selector: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.CSS_SELECTOR, selector).text)  # type: ignore[attr-defined]
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _number(driver: object, selector: str) -> float:
    text = _text(driver, selector)
    try:
        return float(text)
    except ValueError:
        return 0.0


def _shot(driver: object, name: str, tmp_path: Path) -> None:
    for folder in (tmp_path, SHOTS):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(folder / name))  # type: ignore[attr-defined]


def test_the_dashboard_shows_live_numbers_while_traffic_flows(
    cluster: LocalCluster, browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    pop = cluster.url("pop-1")
    with Client(cluster.control_url, cluster.token) as client:
        deploy_everywhere(cluster, client, "dash-echo", placement="edge", auth="public")
        deploy_everywhere(
            cluster, client, "dash-raiser", FUNCTIONS / "raiser", placement="edge", auth="public"
        )
    driver = browser
    driver.get(f"{cluster.control_url}/ui")  # type: ignore[attr-defined]
    wait_for(lambda: driver.current_url.endswith("/ui/login"), what="the login page")  # type: ignore[attr-defined]
    driver.find_element(By.ID, "key").send_keys(cluster.token)  # type: ignore[attr-defined]
    driver.find_element(By.CSS_SELECTOR, "#login button").click()  # type: ignore[attr-defined]
    wait_for(lambda: _text(driver, "#live") == "live", timeout=20, what="the event stream")
    wait_for(
        lambda: "up" in _text(driver, "#nodes tr[data-node='pop-1']"),
        timeout=20,
        what="pop-1 listed as up",
    )
    for region in ("region-1", "region-2"):
        assert region in _text(driver, "#nodes tr[data-node='pop-1']")  # its links

    row = "#functions tr[data-function='dash-echo']"
    before = _number(driver, f"{row} td.calls")
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                http.get(f"{pop}/fn/dash-echo/")

    flow = threading.Thread(target=traffic, daemon=True)
    flow.start()
    try:
        wait_for(lambda: _number(driver, f"{row} td.calls") > before + 20, timeout=30,
                 what="the call count to grow")  # fmt: skip
        wait_for(lambda: _number(driver, "#pops tr[data-pop='pop-1'] td.rate") > 0, timeout=20,
                 what="a request rate at pop-1")  # fmt: skip
        first = _number(driver, f"{row} td.calls")
        wait_for(lambda: _number(driver, f"{row} td.calls") != first, timeout=20,
                 what="the numbers to keep moving")  # fmt: skip
        assert _number(driver, f"{row} td.p50") > 0
        assert _number(driver, f"{row} td.p99") >= _number(driver, f"{row} td.p50")
        assert "pop-1" in _text(driver, f"{row}")  # where it runs
        assert "%" in _text(driver, "#pops tr[data-pop='pop-1'] td.share")
        _shot(driver, "dashboard.png", tmp_path)
    finally:
        stop.set()
        flow.join(10)

    failed = httpx.get(f"{pop}/fn/dash-raiser/", timeout=10)
    assert failed.status_code == 500
    request_id = failed.headers["x-edgerun-request-id"]
    wait_for(lambda: request_id in _text(driver, "#errors"), timeout=20, what="the error row")
    driver.find_element(By.LINK_TEXT, request_id).click()  # type: ignore[attr-defined]
    wait_for(lambda: "ValueError: bad value" in _text(driver, "#entries"), timeout=20,
             what="the failed request's traceback")  # fmt: skip
    _shot(driver, "request.png", tmp_path)


def test_an_open_event_stream_does_not_hold_the_control_planes_stop_up(
    tmp_path: Path,
) -> None:
    topology = Topology(control=ControlSpec(port=free_port()), region=[], pop=[])
    cluster = LocalCluster(topology, tmp_path)
    try:
        cluster.start()
        http = login(cluster, cluster.token)
        with http.stream("GET", "/ui/events", timeout=30) as stream:
            assert stream.status_code == 200
            next(stream.iter_lines())  # the first snapshot: the stream is open
            began = time.monotonic()
            cluster.kill("control", signal.SIGTERM)
            took = time.monotonic() - began
        assert took < 3.0, f"the control plane took {took:.1f} s to stop"
    finally:
        cluster.stop()


def test_every_dashboard_route_but_the_login_needs_a_session(cluster: LocalCluster) -> None:
    for method, path, session, _ in UI_ROUTES:
        if not session:
            continue
        resp = httpx.request(method, cluster.control_url + path)
        assert resp.status_code in (303, 401), (method, path, resp.status_code)


class _SpyNode(http.server.BaseHTTPRequestHandler):
    """A 'node' that writes down the keys it is called with."""

    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("authorization", ""))
        body = b'{"node": "spy", "logs": [], "until": 0}' if "logs" in self.path else b"{}"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_dashboard_never_sends_the_admins_key_to_a_node(cluster: LocalCluster) -> None:
    control = cluster.control_url
    auth = {"authorization": f"Bearer {cluster.token}"}
    token = httpx.post(
        f"{control}/v1/join-tokens", json={"role": "pop", "name": "spy"}, headers=auth
    ).json()["token"]
    joined = httpx.post(f"{control}/v1/nodes/join", json={"token": token}).json()
    spy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SpyNode)
    threading.Thread(target=spy.serve_forever, daemon=True).start()
    try:
        beat = httpx.post(
            f"{control}/v1/nodes/heartbeat",
            json={"url": f"http://127.0.0.1:{spy.server_address[1]}", "role": "pop"},
            headers={"authorization": f"Bearer {joined['secret']}"},
        )
        assert beat.status_code == 204, beat.text
        with login(cluster, cluster.token).stream("GET", "/ui/events", timeout=30) as stream:
            lines = stream.iter_lines()
            wait_for(lambda: next(lines) is not None and len(_SpyNode.seen) >= 2, timeout=20,
                     what="the dashboard to call the spy")  # fmt: skip
    finally:
        spy.shutdown()
        httpx.delete(f"{control}/v1/nodes/{joined['key_id']}", headers=auth)
    assert f"Bearer {cluster.token}" not in _SpyNode.seen
    observer = _SpyNode.seen[0].removeprefix("Bearer ")
    # What it got reads node status and logs, nothing else of the cluster.
    refused = httpx.get(f"{control}/v1/tenants", headers={"authorization": f"Bearer {observer}"})
    assert refused.status_code == 403
    deploy = httpx.put(
        f"{control}/v1/functions/spied",
        json={"bundle_sha256": "0" * 64},
        headers={"authorization": f"Bearer {observer}"},
    )
    assert deploy.status_code in (403, 404)  # 404: outside its tenant, as for any other
