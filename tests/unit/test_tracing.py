"""W3C trace context parsing (edgerun.tracing) and the [otel] config table."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from edgerun.config import NodeConfig, OtelConfig, apply_settings, dump_toml, load_node_config
from edgerun.errors import ApiError
from edgerun.sandbox.protocol import Invoke, encode_frame
from edgerun.tracing import (
    NO_CONTEXT,
    TRACESTATE_MAX_CHARS,
    TraceParent,
    Tracer,
    clean_tracestate,
    cold_started,
    make_tracer,
    parse_traceparent,
    trace_context,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{SPAN_ID}-01"


def test_a_valid_traceparent_parses() -> None:
    parent = parse_traceparent(VALID)
    assert parent == TraceParent(int(TRACE_ID, 16), int(SPAN_ID, 16), 1)
    assert parent is not None and parent.sampled and parent.header() == VALID
    unsampled = parse_traceparent(f"00-{TRACE_ID}-{SPAN_ID}-00")
    assert unsampled is not None and not unsampled.sampled


def test_surrounding_blanks_are_not_part_of_the_value() -> None:
    assert parse_traceparent(f" {VALID}\t") is not None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        f"01-{TRACE_ID}-{SPAN_ID}-01",  # another version: only 00 is understood
        f"ff-{TRACE_ID}-{SPAN_ID}-01",
        f"00-{TRACE_ID.upper()}-{SPAN_ID}-01",  # upper-case hex
        f"00-{'0' * 32}-{SPAN_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE_ID[:-1]}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID}0-01",
        f"00-{TRACE_ID}-{SPAN_ID}-1",
        f"00-{TRACE_ID}-{SPAN_ID}-01-extra",
        f"00_{TRACE_ID}_{SPAN_ID}_01",
        f"00-{TRACE_ID[:-1]}g-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{SPAN_ID}-0x",
        f"00-{TRACE_ID}-{SPAN_ID}-01\n",
    ],
)
def test_a_malformed_traceparent_is_none(value: str) -> None:
    assert parse_traceparent(value) is None


def test_a_valid_tracestate_passes_unchanged() -> None:
    for value in ["congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE", "a@b=1,c=x y"]:
        assert clean_tracestate(value) == value


def test_invalid_tracestate_members_are_dropped_not_the_header() -> None:
    assert clean_tracestate("ok=1,Bad=2,,also ok=3,x=4") == "ok=1,x=4"
    assert clean_tracestate("k=v\x00") is None
    assert clean_tracestate("   ") is None
    assert clean_tracestate("a=1,a=2") == "a=1"


def test_a_long_tracestate_is_cut_to_512_characters() -> None:
    big = "big=" + "x" * 200
    small = [f"k{i}=" + "v" * 20 for i in range(30)]
    out = clean_tracestate(",".join([small[0], big, *small[1:]]))
    assert out is not None and len(out) <= TRACESTATE_MAX_CHARS
    members = out.split(",")
    assert "big=" + "x" * 200 not in members  # entries over 128 characters go first
    assert members == small[: len(members)]  # then from the end
    assert clean_tracestate(",".join(f"k{i}=v" for i in range(40))) == ",".join(
        f"k{i}=v" for i in range(32)
    )


def test_trace_context_of_headers() -> None:
    ctx = trace_context([("host", "x"), ("traceparent", VALID), ("tracestate", "a=1")])
    assert ctx.traceparent == VALID and ctx.tracestate == "a=1"
    assert ctx.headers() == [("traceparent", VALID), ("tracestate", "a=1")]
    both = trace_context([("traceparent", VALID), ("tracestate", "a=1"), ("tracestate", "b=2")])
    assert both.tracestate == "a=1,b=2"


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("tracestate", "a=1")],  # a tracestate alone means nothing
        [("traceparent", "00-nope"), ("tracestate", "a=1")],  # goes with its traceparent
        [("traceparent", VALID), ("traceparent", VALID)],  # repeated: W3C says invalid
    ],
)
def test_no_valid_traceparent_is_no_context(headers: list[tuple[str, str]]) -> None:
    ctx = trace_context(headers)
    assert ctx == NO_CONTEXT and ctx.headers() == []


def test_the_invoke_frame_is_unchanged_without_trace_context() -> None:
    bare = encode_frame(Invoke(id="1", mode="direct", event={}, timeout_s=1.0))
    assert b"traceparent" not in bare and b"tracestate" not in bare
    traced = encode_frame(Invoke(id="1", mode="direct", event={}, timeout_s=1.0, traceparent=VALID))
    assert VALID.encode() in traced


def base() -> NodeConfig:
    return NodeConfig(role="region", name="region-1", data_dir="/tmp/x")


def test_otel_survives_the_node_toml(tmp_path: Path) -> None:
    cfg = apply_settings(
        base(), {"otel": {"endpoint": "http://127.0.0.1:4318/v1/traces", "sample_ratio": 0.5}}
    )
    path = tmp_path / "node.toml"
    path.write_text(dump_toml(cfg))
    assert "[otel]" in path.read_text()
    loaded = load_node_config(path)
    assert loaded.otel == cfg.otel
    assert loaded.otel.endpoint == "http://127.0.0.1:4318/v1/traces"
    assert "[otel]" not in dump_toml(base())


def test_an_otel_table_in_a_node_toml(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        'role = "pop"\nname = "p"\ndata_dir = "/tmp/p"\n\n'
        '[otel]\nendpoint = "https://collector:4318/v1/traces"\n'
    )
    assert load_node_config(path).otel.endpoint == "https://collector:4318/v1/traces"


@pytest.mark.parametrize(
    "otel",
    [
        {"endpoint": "collector:4318"},
        {"sample_ratio": 2.0},
        {"export_interval_s": 0},
        {"endpont": "http://x"},
    ],
)
def test_bad_otel_settings_are_a_clear_error(otel: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="otel"):
        apply_settings(base(), {"otel": otel})


def test_no_endpoint_no_tracer_and_no_sdk() -> None:
    assert OtelConfig().endpoint == ""
    assert make_tracer(base()) is None
    # The SDK and exporter load only for a configured endpoint. (Another test in this
    # process may have loaded them; the import-free claim is checked in a child.)
    import subprocess

    code = (
        "import sys; from edgerun.config import NodeConfig; from edgerun.tracing import "
        "make_tracer; import edgerun.node.app; "
        "make_tracer(NodeConfig(role='pop', name='p', data_dir='/tmp/p')); "
        "print(any(m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter')) "
        "for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- spans, in process ----------------------------------------------------


class _Msg:
    """Stands in for an Invoke message (its mode, event and trace fields)."""

    def __init__(self) -> None:
        self.mode = "http"
        self.event: dict[str, object] = {"headers": {"host": "x"}}
        self.traceparent: str | None = None
        self.tracestate: str | None = None


@pytest.fixture
def spans() -> Iterator[tuple[Tracer, InMemorySpanExporter]]:
    cfg = apply_settings(
        base(),
        # Nothing listens there, and nothing is sent before the test ends.
        {
            "otel": {
                "endpoint": "http://127.0.0.1:9/v1/traces",
                "export_interval_s": 3600,
                "timeout_s": 0.2,
            }
        },
    )
    tracer = make_tracer(cfg)
    assert tracer is not None
    memory = InMemorySpanExporter()
    tracer.provider.add_span_processor(SimpleSpanProcessor(memory))
    yield tracer, memory
    memory.clear()
    tracer.shutdown()


@contextlib.asynccontextmanager
async def _lease(cold: bool, fail: BaseException | None = None) -> AsyncIterator[tuple[str, bool]]:
    if fail is not None:
        raise fail
    cold_started(5.0, zygote_loaded=True)  # as the pool's start callback reports it
    yield "sandbox", cold


def _by_name(memory: InMemorySpanExporter) -> dict[str, Any]:
    return {s.name: s for s in memory.get_finished_spans()}


@pytest.mark.anyio
async def test_queue_cold_start_and_run_under_the_invoke_span(spans) -> None:
    tracer, memory = spans
    trace = tracer.begin(trace_context([("traceparent", VALID)]), "fn", "r1")
    msg = _Msg()
    async with trace.lease(_lease(cold=True), msg) as (sandbox, cold):  # type: ignore[arg-type]
        assert (sandbox, cold) == ("sandbox", True)
    trace.finish(200, [("x-edgerun-placement", "local-cold")])
    got = _by_name(memory)
    invoke, queue, start, run = (got[n] for n in ("invoke fn", "queue", "cold start", "run"))
    assert invoke.parent.span_id == int(SPAN_ID, 16)
    assert invoke.context.trace_id == int(TRACE_ID, 16)
    assert queue.parent.span_id == run.parent.span_id == invoke.context.span_id
    assert start.parent.span_id == queue.context.span_id
    assert start.end_time - start.start_time == 5_000_000
    handed = f"00-{TRACE_ID}-{run.context.span_id:016x}-01"
    assert msg.traceparent == handed and msg.event["headers"]["traceparent"] == handed  # type: ignore[index]
    assert invoke.attributes["edgerun.placement"] == "local-cold"


@pytest.mark.anyio
async def test_a_failed_wait_ends_the_queue_span_as_an_error(spans) -> None:
    tracer, memory = spans
    trace = tracer.begin(NO_CONTEXT, "fn", "r2")
    with pytest.raises(ApiError):
        async with trace.lease(_lease(True, ApiError(429, "TooManyRequests", "full")), _Msg()):  # type: ignore[arg-type]
            pass
    trace.finish(200, [])  # e.g. forwarded after the wait ran out
    got = _by_name(memory)
    assert not got["queue"].status.is_ok and got["queue"].end_time < got["invoke fn"].end_time
    assert "run" not in got and got["invoke fn"].parent is None  # no caller: a new trace


@pytest.mark.anyio
async def test_a_start_in_another_task_is_not_this_calls_cold_start(spans) -> None:
    tracer, memory = spans
    trace = tracer.begin(NO_CONTEXT, "fn", "r3")

    async def background() -> None:  # inherits the context, as a background warm-up does
        cold_started(5.0, zygote_loaded=False)

    trace._queue = trace.start("queue")
    await asyncio.create_task(background())
    trace.fail(RuntimeError("boom"))
    got = _by_name(memory)
    assert "cold start" not in got
    assert not got["invoke fn"].status.is_ok and not got["queue"].status.is_ok
