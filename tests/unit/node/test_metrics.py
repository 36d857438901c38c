"""The node's metrics: bounded labels, histogram buckets, and adding up workers."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from edgerun.node.metrics import (
    DURATION_BUCKETS,
    OTHER,
    NodeMetrics,
    Peers,
    decode,
    merge,
)

HERE_WARM = [("x-edgerun-placement", "local-warm"), ("x-edgerun-reason", "warm")]
HERE_COLD = [("x-edgerun-placement", "local-cold"), ("x-edgerun-reason", "cold-start-cheaper")]
FORWARDED = [
    ("x-edgerun-placement", "forwarded:region-1"),
    ("x-edgerun-reason", "trip-cheaper"),
    ("content-type", "application/json"),
    ("x-edgerun-region-placement", "local-cold"),
]


def samples(text: bytes, name: str) -> list[Sample]:
    return [
        s
        for fam in text_string_to_metric_families(text.decode())
        for s in fam.samples
        if s.name == name
    ]


def value(text: bytes, name: str, **labels: str) -> float:
    found = [s.value for s in samples(text, name) if s.labels == labels]
    assert len(found) == 1, (name, labels, samples(text, name))
    return found[0]


def test_counts_by_function_placement_reason_and_status() -> None:
    m = NodeMetrics("pop-1", "pop")
    t0 = time.perf_counter()
    for _ in range(3):
        m.replied("hello", 200, HERE_WARM, t0)
    m.replied("hello", 500, HERE_COLD, t0)
    m.replied("big", 200, FORWARDED, t0)
    m.refused("hello", 429, {"retry-after": "1"})
    text = m.exposition()
    inv = "edgerun_invocations_total"
    assert (
        value(text, inv, function="hello", placement="local-warm", reason="warm", status="200") == 3
    )
    assert (
        value(text, inv, function="hello", placement="local-cold", reason="cold-start-cheaper",
              status="500") == 1
    )  # fmt: skip
    assert (
        value(text, inv, function="big", placement="forwarded:region-1", reason="trip-cheaper",
              status="200") == 1
    )  # fmt: skip
    assert value(text, inv, function="hello", placement="none", reason="none", status="429") == 1
    assert sum(s.value for s in samples(text, inv)) == 6
    # The refusal has no duration; the forward's start is the region's.
    count = "edgerun_invocation_duration_seconds_count"
    assert value(text, count, where="here", start="warm") == 3
    assert value(text, count, where="here", start="cold") == 1
    assert value(text, count, where="forwarded", start="cold") == 1
    assert sum(s.value for s in samples(text, count)) == 5


def test_functions_after_the_cap_are_counted_as_other() -> None:
    m = NodeMetrics("pop-1", "pop", max_functions=3)
    t0 = time.perf_counter()
    for i in range(10):
        m.replied(f"fn{i}", 200, HERE_WARM, t0)
    m.replied("fn1", 200, HERE_WARM, t0)  # admitted before the cap: keeps its label
    m.refused("fn9", 503, {})
    text = m.exposition()
    by_fn: dict[str, float] = {}
    for s in samples(text, "edgerun_invocations_total"):
        by_fn[s.labels["function"]] = by_fn.get(s.labels["function"], 0) + s.value
    assert by_fn == {"fn0": 1, "fn1": 2, "fn2": 1, OTHER: 8}
    # Bounded however many functions come: a thousand more add no series.
    before = len(samples(text, "edgerun_invocations_total"))
    for i in range(1000):
        m.replied(f"more{i}", 200, HERE_WARM, t0)
    after = samples(m.exposition(), "edgerun_invocations_total")
    assert len(after) == before
    assert sum(s.value for s in after) == 12 + 1000


def test_durations_land_in_their_bucket() -> None:
    m = NodeMetrics("pop-1", "pop")
    now = time.perf_counter()
    m.replied("f", 200, HERE_WARM, now - 0.003)  # 3 ms: in le=0.005, not in le=0.0025
    m.replied("f", 200, HERE_WARM, now - 0.2)  # 200 ms: in le=0.25
    text = m.exposition()
    buckets = {
        s.labels["le"]: s.value
        for s in samples(text, "edgerun_invocation_duration_seconds_bucket")
        if s.labels["where"] == "here" and s.labels["start"] == "warm"
    }
    assert list(buckets) == [*(repr(b) for b in DURATION_BUCKETS), "+Inf"]
    assert buckets["0.0025"] == 0
    assert buckets["0.005"] == 1
    assert buckets["0.1"] == 1
    assert buckets["0.25"] == 2
    assert buckets["+Inf"] == 2
    total = value(text, "edgerun_invocation_duration_seconds_sum", where="here", start="warm")
    assert 0.203 <= total < 0.3


def test_cold_starts_by_kind() -> None:
    m = NodeMetrics("region-1", "region")
    m.started(4.0, True)
    m.started(120.0, False)
    m.started(3.0, True)
    text = m.exposition()
    assert value(text, "edgerun_cold_starts_total", kind="fork") == 2
    assert value(text, "edgerun_cold_starts_total", kind="zygote") == 1
    assert value(text, "edgerun_sandbox_start_seconds_bucket", kind="fork", le="0.005") == 2
    assert value(text, "edgerun_sandbox_start_seconds_bucket", kind="zygote", le="0.1") == 0
    assert value(text, "edgerun_sandbox_start_seconds_bucket", kind="zygote", le="0.25") == 1


def test_workers_add_up() -> None:
    """Counters and histograms sum; gauges follow their rule."""
    a, b = NodeMetrics("pop-1", "pop"), NodeMetrics("pop-1", "pop")
    t0 = time.perf_counter()
    a.replied("f", 200, HERE_WARM, t0)
    b.replied("f", 200, HERE_WARM, t0)
    b.replied("g", 200, HERE_COLD, t0)
    b.started(4.0, True)
    text = a.exposition([b.snapshot()], workers=3)
    assert value(text, "edgerun_invocations_total", function="f", placement="local-warm",
                 reason="warm", status="200") == 2  # fmt: skip
    assert value(text, "edgerun_invocations_total", function="g", placement="local-cold",
                 reason="cold-start-cheaper", status="200") == 1  # fmt: skip
    assert value(text, "edgerun_invocation_duration_seconds_count", where="here", start="warm") == 2
    assert value(text, "edgerun_cold_starts_total", kind="fork") == 1
    assert value(text, "edgerun_node_info", node="pop-1", role="pop") == 1  # max, not 2
    assert value(text, "edgerun_node_workers") == 3
    assert value(text, "edgerun_scrape_workers") == 2


def test_gauges_merge_by_their_rule() -> None:
    a, b = NodeMetrics("pop-1", "pop"), NodeMetrics("pop-1", "pop")
    fams = [decode(a.snapshot()), decode(b.snapshot())]
    for fams_of, (up, rtt, idle) in zip(fams, [(1.0, 0.010, 2.0), (0.0, 0.030, 3.0)], strict=True):
        for fam, v in zip(
            ("edgerun_region_up", "edgerun_region_latency_seconds", "edgerun_pool_sandboxes"),
            (up, rtt, idle),
            strict=True,
        ):
            metric = Metric(fam, "x", "gauge")
            metric.add_sample(fam, {"k": "v"}, v)
            fams_of.append(metric)
    merged = {f.name: f.samples[0].value for f in merge(fams) if f.samples}
    assert merged["edgerun_region_up"] == 0.0  # up only if every worker reaches it
    assert merged["edgerun_region_latency_seconds"] == pytest.approx(0.020)  # mean
    assert merged["edgerun_pool_sandboxes"] == 5.0  # each worker's own: summed


@pytest.mark.anyio
async def test_peers_answer_over_unix_sockets_even_in_deep_folders(tmp_path: Path) -> None:
    """A worker directory deeper than a Unix socket path may be (107 bytes) still works."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    dirs = [deep / "0", deep / "1", deep / "2"]
    assert len(os.fsencode(dirs[0] / "metrics.sock")) > 110
    a, b = NodeMetrics("pop-1", "pop"), NodeMetrics("pop-1", "pop")
    b.replied("f", 201, HERE_WARM, time.perf_counter())
    peer_a = Peers(dirs, 0, a.snapshot)
    peer_b = Peers(dirs, 1, b.snapshot)  # worker 2 is down
    task = asyncio.create_task(peer_b.serve())
    try:
        deadline = time.monotonic() + 5
        while not (dirs[1] / "metrics.sock").exists():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert (dirs[1] / "metrics.sock").stat().st_mode & 0o777 == 0o600
        others = await peer_a.gather()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert len(others) == 1
    text = a.exposition(others, workers=3)
    assert value(text, "edgerun_invocations_total", function="f", placement="local-warm",
                 reason="warm", status="201") == 1  # fmt: skip
    assert value(text, "edgerun_scrape_workers") == 2
    assert not (dirs[1] / "metrics.sock").exists()
