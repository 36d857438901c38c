"""Distributed traces across real nodes: W3C trace context from the caller through
the POP and the region into the sandbox, and the spans each node exports over
OTLP/HTTP to a collector run here (a thread decoding ExportTraceServiceRequest).

One topology for the module: pop-1 and region-1 export traces (region-1 with
two worker processes, each with its own tracer), pop-2 and region-2 have no
``[otel]`` endpoint (so they only pass trace context on).
"""

from __future__ import annotations

import gzip
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from edgerun.client import Client
from edgerun.cluster import LocalCluster, free_port
from edgerun.config import ControlSpec, PopSpec, RegionSpec, Topology
from edgerun.tracing import parse_traceparent
from tests.conftest import FUNCTIONS
from tests.integration.conftest import deploy_everywhere, remember_admin_key, wait_for

pytestmark = pytest.mark.integration

SERVER, CLIENT = 2, 3  # Span.SpanKind in the OTLP protobuf


@dataclass(frozen=True)
class Span:
    node: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any] = field(hash=False)
    resource: dict[str, Any] = field(hash=False)


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


class Collector:
    """An OTLP/HTTP traces receiver on loopback that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.add(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, request: ExportTraceServiceRequest) -> None:
        for rs in request.resource_spans:
            resource = {a.key: _value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    span = Span(
                        node=str(resource.get("edgerun.node")),
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        kind=s.kind,
                        attributes={a.key: _value(a.value) for a in s.attributes},
                        resource=resource,
                    )
                    with self.lock:
                        self.spans.append(span)

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, collector: Collector
) -> Iterator[tuple[LocalCluster, Client]]:
    otel = {"otel": {"endpoint": collector.endpoint, "export_interval_s": 0.1}}
    topo = Topology(
        control=ControlSpec(port=free_port(), settings={"gc_interval_s": 3600}),
        region=[
            RegionSpec(name="region-1", port=free_port(), settings={**otel, "workers": 2}),
            RegionSpec(name="region-2", port=free_port()),
        ],
        pop=[
            PopSpec(name="pop-1", port=free_port(), regions=["region-1"], settings=otel),
            PopSpec(name="pop-2", port=free_port(), regions=["region-2"]),
        ],
    )
    cluster = LocalCluster(topo, tmp_path_factory.mktemp("traced"))
    try:
        cluster.start()
        remember_admin_key(cluster)
        client = Client(cluster.control_url, cluster.token)
        nodes = ("pop-1", "pop-2", "region-1", "region-2")
        tracer = FUNCTIONS / "tracer"
        deploy_everywhere(cluster, client, "far", tracer, nodes, placement="region")
        # Called by one test only, so its first call is a cold start in region-1.
        deploy_everywhere(cluster, client, "once", tracer, nodes, placement="region")
        deploy_everywhere(cluster, client, "near", tracer, nodes, placement="edge")
        yield cluster, client
        client.close()
    finally:
        cluster.stop()


def new_traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def call(cluster: LocalCluster, pop: str, name: str, headers: dict[str, str]) -> dict[str, Any]:
    resp = httpx.get(f"{cluster.url(pop)}/fn/{name}/", headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def test_one_trace_across_pop_region_and_sandbox(traced, collector: Collector) -> None:
    cluster, _ = traced
    caller, trace_id, caller_span = new_traceparent()
    seen = call(cluster, "pop-1", "once", {"traceparent": caller, "tracestate": "vendor=abc,x=1"})
    expected = {
        ("pop-1", "invoke once"),
        ("pop-1", "decide"),
        ("pop-1", "forward"),
        ("region-1", "invoke once"),
        ("region-1", "queue"),
        ("region-1", "cold start"),
        ("region-1", "run"),
    }
    wait_for(
        lambda: expected <= {(s.node, s.name) for s in collector.trace(trace_id)},
        timeout=15,
        what="both nodes to export the trace's spans",
    )
    spans = {(s.node, s.name): s for s in collector.trace(trace_id)}
    assert set(spans) == expected  # and nothing else was made of this request
    pop_invoke, region_invoke = spans["pop-1", "invoke once"], spans["region-1", "invoke once"]
    forward, run = spans["pop-1", "forward"], spans["region-1", "run"]

    # The POP's span continues the caller's; the region's continues the POP's forward.
    assert (pop_invoke.parent_id, pop_invoke.kind) == (caller_span, SERVER)
    assert (forward.parent_id, forward.kind) == (pop_invoke.span_id, CLIENT)
    assert spans["pop-1", "decide"].parent_id == pop_invoke.span_id
    assert (region_invoke.parent_id, region_invoke.kind) == (forward.span_id, SERVER)
    assert spans["region-1", "queue"].parent_id == region_invoke.span_id
    assert spans["region-1", "cold start"].parent_id == spans["region-1", "queue"].span_id
    assert run.parent_id == region_invoke.span_id

    # The handler's trace context names the region's run span; tracestate is the caller's.
    handed = f"00-{trace_id}-{run.span_id}-01"
    assert seen == {
        "header": handed,
        "header_state": "vendor=abc,x=1",
        "context": handed,
        "context_state": "vendor=abc,x=1",
    }

    # What each span says about the request.
    assert pop_invoke.attributes["edgerun.placement"] == "forwarded:region-1"
    assert pop_invoke.attributes["edgerun.reason"] == "region-only"
    assert pop_invoke.attributes["http.response.status_code"] == 200
    assert spans["pop-1", "decide"].attributes["edgerun.action"] == "forward"
    assert region_invoke.attributes["edgerun.placement"] == "local-cold"
    assert region_invoke.attributes["edgerun.node"] == "region-1"
    assert region_invoke.resource["service.name"] == "edgerun-region"
    assert region_invoke.resource["service.instance.id"] in ("region-1/0", "region-1/1")
    assert pop_invoke.resource["service.instance.id"] == "pop-1"  # one process
    request_ids = {s.attributes["edgerun.request_id"] for s in (pop_invoke, region_invoke)}
    assert len(request_ids) == 1  # the POP's request id travels with the forward
    assert pop_invoke.attributes["edgerun.version"] == region_invoke.attributes["edgerun.version"]


def test_without_an_endpoint_trace_context_passes_through_unchanged(traced) -> None:
    cluster, _ = traced
    caller, _, _ = new_traceparent()
    state = "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"
    headers = {"traceparent": caller, "tracestate": state}
    # pop-2 -> region-2 -> sandbox, and a sandbox at pop-2 itself: neither traces.
    for name in ("far", "near"):
        seen = call(cluster, "pop-2", name, headers)
        assert seen == {
            "header": caller,
            "header_state": state,
            "context": caller,
            "context_state": state,
        }, name
    # A direct invocation has no headers in its event: the context carries it.
    resp = httpx.post(
        f"{cluster.url('pop-2')}/v1/functions/far/invocations",
        json={},
        headers={"authorization": f"Bearer {cluster.token}", "traceparent": caller},
        timeout=30,
    )
    assert resp.json()["context"] == caller, resp.text


@pytest.mark.parametrize(
    "bad",
    [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",  # no flags
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # all-zero trace id
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # unknown version
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",  # upper case
    ],
)
def test_a_malformed_traceparent_is_never_passed_on(traced, collector, bad: str) -> None:
    cluster, _ = traced
    headers = {"traceparent": bad, "tracestate": "vendor=abc"}
    # Without traces it is dropped (with its tracestate), through a forward and locally.
    for name in ("far", "near"):
        seen = call(cluster, "pop-2", name, headers)
        assert set(seen.values()) == {None}, (name, seen)
    # With traces a new trace starts: a valid traceparent, not the malformed one.
    seen = call(cluster, "pop-1", "far", headers)
    assert seen["header"] == seen["context"] != bad
    parent = parse_traceparent(seen["header"])
    assert parent is not None
    assert seen["header_state"] is None and seen["context_state"] is None
    trace_id = f"{parent.trace_id:032x}"
    wait_for(
        lambda: {s.name for s in collector.trace(trace_id)} >= {"invoke far", "forward", "run"},
        timeout=15,
        what="the new trace's spans",
    )
    roots = [s for s in collector.trace(trace_id) if s.node == "pop-1" and s.name == "invoke far"]
    assert len(roots) == 1 and roots[0].parent_id == ""  # the root of a new trace
