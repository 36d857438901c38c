"""A node's Prometheus metrics (``GET /metrics``).

What is counted on the request path is counted in plain dicts of ints, not in
prometheus-client's metric objects, and turned into metric families only when
scraped (by :class:`_Collector`, in a :class:`CollectorRegistry` of the
node's own, never the process-global one, so several nodes in one test process
do not clash):

- the event loop is single-threaded, so a count needs no lock: one dict
  lookup and an add per invocation, one :func:`bisect` for its duration (a
  prometheus-client child takes a lock on every ``inc`` and ``observe``);
- the whole state is a few dicts of numbers, which another worker of the
  node can be sent and add up exactly (see *Workers* below).

What can be read when scraped is read then, never updated per request: the
pool (MB used and capacity, sandboxes idle, busy and starting, queue depth),
the regions (up, round trip, failovers), the change feed (revision, the
control plane's, lag, age of the last answer) and the code cache (fetches,
bytes, disk used).

**Bounded labels.** Only the first ``max_functions`` functions that this
node counts get a ``function`` label of their own; every function after them
is counted as ``(other)`` (the tail is aggregated, not dropped, as in
:class:`~edgerun.node.state.Counters`). A function keeps its label for the
node's life, deleted or not, so no counter ever goes backwards. ``status`` is
an HTTP status (at most 500 values); ``placement`` and ``reason`` are what the
answer's ``x-edgerun-placement`` and ``x-edgerun-reason`` said (``local-warm``,
``local-cold`` or ``forwarded:<region>`` of the POP's configured regions; a
placement reason), or ``none`` when it said nothing (refused before a
placement was decided, e.g. a 429 at the function's rate limit). Histograms
have no function label at all.

**Workers.** A node running several worker processes on one port
(:mod:`edgerun.node.workers`) answers a scrape from whichever worker the
kernel picked. That worker asks each of the others for their own metrics
over a Unix socket in the other's worker directory (:class:`Peers`: connect,
read one msgspec frame, done), adds them up with its own (:func:`merge`) and
answers for the whole node. Nothing is paid for this on the request path;
a scrape costs one local round trip per worker. ``edgerun_node_workers`` and
``edgerun_scrape_workers`` say how many workers the node runs and how many
answered (a worker being replaced is missing from that scrape, and its
counts restart from zero with its replacement, which Prometheus' ``rate``
reads as a counter reset). prometheus-client's multiprocess mode was the
alternative: it is process-global (``PROMETHEUS_MULTIPROC_DIR``, which tests
running several nodes in one process cannot share), writes every ``inc``
through an mmap'd file under a lock, and cannot sum scrape-time collectors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from edgerun.node.catalog import Catalog
    from edgerun.node.code_cache import CodeCache
    from edgerun.node.events import EventQueue
    from edgerun.node.regions import Regions
    from edgerun.pool import Pool

log = logging.getLogger("edgerun.node.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OTHER = "(other)"
MAX_FUNCTIONS = 200
"""Functions with a label of their own; with the other labels' values that is at
most a few thousand series per node."""

DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Seconds; from a warm local call (under a millisecond) to the longest timeout."""
START_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds; a fork from a loaded zygote (a few ms) to a new zygote with a slow import."""

GAUGE_MERGE: dict[str, str] = {
    "edgerun_pool_capacity_mb": "max",
    "edgerun_pool_held_mb": "max",
    "edgerun_region_up": "min",
    "edgerun_region_latency_seconds": "mean",
    "edgerun_region_load": "mean",
    "edgerun_feed_revision": "min",
    "edgerun_feed_control_revision": "max",
    "edgerun_feed_revision_lag": "max",
    "edgerun_feed_synced": "min",
    "edgerun_feed_last_answer_age_seconds": "max",
    "edgerun_node_info": "max",
    # One queue file for the whole node: every worker reads the same numbers.
    "edgerun_async_queued": "max",
    "edgerun_async_running": "max",
    "edgerun_async_oldest_age_seconds": "max",
    "edgerun_async_dead_letters": "max",
    "edgerun_async_retries": "max",
    "edgerun_async_succeeded": "max",
}
"""How each worker's gauge adds up to the node's: node-wide values (the budget's
capacity, the engine's held memory) are the same in every worker (max); a region
is up only if every worker reaches it (min), its round trip is the workers'
mean, the feed is as far behind as its most behind worker. Other gauges
(sandboxes, queue, MB used, code cache) are each worker's own share: summed."""

_PLACEMENT_HEADER = "x-edgerun-placement"
_REASON_HEADER = "x-edgerun-reason"
_REGION_PLACEMENT_HEADER = "x-edgerun-region-placement"
_START_OF = {"local-cold": "cold", "local-warm": "warm"}


class _Histogram:
    """Counts per bucket (not cumulative; the last is +Inf) and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)
        self.sum = 0.0


class NodeMetrics:
    """What one node process counts, and its ``/metrics`` answer (see the module doc)."""

    def __init__(self, node: str, role: str, *, max_functions: int = MAX_FUNCTIONS) -> None:
        self.node = node
        self.role = role
        self.max_functions = max_functions
        self._functions: set[str] = set()
        self.invocations: dict[tuple[str, str, str, int], int] = {}
        """(function, placement, reason, status) -> count."""
        self.durations: dict[tuple[str, ...], _Histogram] = {}
        """(where: here | forwarded, start: cold | warm | unknown) -> time to answer."""
        self.starts: dict[str, _Histogram] = {}
        """Sandbox starts by kind: fork (its zygote was loaded) or zygote (a new one)."""
        self.pool: Pool | None = None
        self.regions: Regions | None = None
        self.catalog: Catalog | None = None
        self.code: CodeCache | None = None
        self.events: EventQueue | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def watch(
        self,
        *,
        pool: Pool | None = None,
        regions: Regions | None = None,
        catalog: Catalog | None = None,
        code: CodeCache | None = None,
        events: EventQueue | None = None,
    ) -> None:
        """What to read when scraped."""
        self.pool, self.regions, self.catalog, self.code = pool, regions, catalog, code
        self.events = events

    # --- the request path ------------------------------------------------------
    def function_label(self, name: str) -> str:
        if name in self._functions:
            return name
        if len(self._functions) >= self.max_functions:
            return OTHER
        self._functions.add(name)
        return name

    def replied(
        self, function: str, status: int, headers: Sequence[tuple[str, str]], t0: float
    ) -> None:
        """An invocation answered (by its function, here or in a region) after
        ``time.perf_counter() - t0`` seconds."""
        placement = reason = region = ""
        for k, v in headers:
            if k == _PLACEMENT_HEADER:
                placement = v
            elif k == _REASON_HEADER:
                reason = v
            elif k == _REGION_PLACEMENT_HEADER:
                region = v
            else:
                continue
            if reason and placement.startswith("local"):
                break  # ran here: no region placement to look for
        self._count(function, placement or "none", reason or "none", status)
        if placement.startswith("forwarded"):
            key = ("forwarded", _START_OF.get(region, "unknown"))
        else:
            key = ("here", _START_OF.get(placement, "unknown"))
        seconds = time.perf_counter() - t0
        hist = self.durations.get(key)
        if hist is None:
            hist = self.durations[key] = _Histogram(len(DURATION_BUCKETS))
        hist.counts[bisect_left(DURATION_BUCKETS, seconds)] += 1
        hist.sum += seconds

    def refused(self, function: str, status: int, headers: Mapping[str, str]) -> None:
        """An invocation the node answered with an error of its own (no duration:
        refusals would skew the time to answer)."""
        self._count(
            function,
            headers.get(_PLACEMENT_HEADER, "none"),
            headers.get(_REASON_HEADER, "none"),
            status,
        )

    def _count(self, function: str, placement: str, reason: str, status: int) -> None:
        key = (self.function_label(function), placement, reason, status)
        self.invocations[key] = self.invocations.get(key, 0) + 1

    def started(self, ms: float, zygote_loaded: bool) -> None:
        """A sandbox started (a cold start), in ``ms``; not on the warm path."""
        kind = "fork" if zygote_loaded else "zygote"
        hist = self.starts.get(kind)
        if hist is None:
            hist = self.starts[kind] = _Histogram(len(START_BUCKETS))
        seconds = ms / 1000
        hist.counts[bisect_left(START_BUCKETS, seconds)] += 1
        hist.sum += seconds

    # --- scraping --------------------------------------------------------------
    def families(self) -> list[Metric]:
        """This process's metrics, as prometheus-client's metric families."""
        return list(self.registry.collect())

    def snapshot(self) -> bytes:
        """This process's metrics, for another worker of the node to add up."""
        return encode(self.families())

    def exposition(self, others: Iterable[bytes] = (), *, workers: int = 1) -> bytes:
        """The ``/metrics`` answer: this process's metrics plus ``others`` (the
        snapshots of the node's other workers), in the text format."""
        parts = [self.families()]
        answered = 1
        for raw in others:
            try:
                parts.append(decode(raw))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("a worker's metrics could not be read: %s", exc)
                continue
            answered += 1
        merged = merge(parts)
        node = Metric("edgerun_node_workers", "Worker processes this node runs.", "gauge")
        node.add_sample("edgerun_node_workers", {}, float(workers))
        scraped = Metric(
            "edgerun_scrape_workers",
            "Workers whose counts this answer includes (fewer than edgerun_node_workers "
            "while one is being replaced).",
            "gauge",
        )
        scraped.add_sample("edgerun_scrape_workers", {}, float(answered))
        return generate_latest(_Fixed([*merged, node, scraped]))


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class _Collector(Collector):
    """Builds the families of one process at scrape time."""

    def __init__(self, m: NodeMetrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        m = self.m
        info = Metric("edgerun_node_info", "This node's name and role (always 1).", "gauge")
        info.add_sample("edgerun_node_info", {"node": m.node, "role": m.role}, 1.0)
        yield info
        inv = Metric(
            "edgerun_invocations",
            "Invocations this node answered, by function (the first "
            f"{m.max_functions}; the rest as {OTHER}), placement, reason and HTTP status.",
            "counter",
        )
        for (fn, placement, reason, status), n in sorted(m.invocations.items()):
            labels = {"function": fn, "placement": placement, "reason": reason}
            inv.add_sample("edgerun_invocations_total", {**labels, "status": str(status)}, n)
        yield inv
        yield _histogram(
            "edgerun_invocation_duration_seconds",
            "Time to answer of the invocations a function answered, from the decision to "
            "the reply: where it ran (here or forwarded) and whether it started cold "
            "(for a forward: at the region).",
            ("where", "start"),
            m.durations,
            DURATION_BUCKETS,
        )
        yield _histogram(
            "edgerun_sandbox_start_seconds",
            "Cold starts (sandbox starts, prewarming included): a fork from a loaded "
            "zygote, or a new zygote and the function's import.",
            ("kind",),
            {(k,): h for k, h in m.starts.items()},
            START_BUCKETS,
        )
        cold = Metric(
            "edgerun_cold_starts",
            "Sandboxes started (cold starts), by kind (fork or zygote).",
            "counter",
        )
        for kind, hist in sorted(m.starts.items()):
            cold.add_sample("edgerun_cold_starts_total", {"kind": kind}, sum(hist.counts))
        yield cold
        if m.pool is not None:
            yield from _pool(m.pool)
        if m.events is not None:
            yield from _events(m.events)
        if m.regions is not None and m.regions.regions:
            yield from _regions(m.regions)
        if m.catalog is not None:
            yield from _feed(m.catalog)
        if m.code is not None:
            yield from _code(m.code)


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    metric = Metric(name, doc, "gauge")
    metric.add_sample(name, labels or {}, float(value))
    return metric


def _counter(name: str, doc: str, values: dict[str, float], label: str) -> Metric:
    metric = Metric(name, doc, "counter")
    for value_of, n in sorted(values.items()):
        metric.add_sample(f"{name}_total", {label: value_of} if label else {}, float(n))
    return metric


def _histogram(
    name: str,
    doc: str,
    label_names: tuple[str, ...],
    hists: Mapping[tuple[str, ...], _Histogram],
    buckets: tuple[float, ...],
) -> Metric:
    metric = Metric(name, doc, "histogram")
    bounds = [*(_le(b) for b in buckets), "+Inf"]
    for key, hist in sorted(hists.items()):
        labels = dict(zip(label_names, key, strict=True))
        total = 0
        for bound, n in zip(bounds, hist.counts, strict=True):
            total += n
            metric.add_sample(f"{name}_bucket", {**labels, "le": bound}, float(total))
        metric.add_sample(f"{name}_count", labels, float(total))
        metric.add_sample(f"{name}_sum", labels, hist.sum)
    return metric


def _le(bound: float) -> str:
    return repr(float(bound))


def _events(events: EventQueue) -> Iterator[Metric]:
    stats = events.stats()
    for key, help_ in (
        ("queued", "Asynchronous invocations waiting to run (or to be retried)."),
        ("running", "Asynchronous invocations running now."),
        ("oldest_age_seconds", "Age of the oldest queued event."),
        ("dead_letters", "Events in the dead-letter store."),
        ("retries", "Retries so far (the queue's lifetime; kept across restarts)."),
        ("succeeded", "Events run successfully (the queue's lifetime)."),
    ):
        value = stats["oldest_age_s" if key == "oldest_age_seconds" else key]
        yield _gauge(f"edgerun_async_{key}", help_, float(value))


def _pool(pool: Pool) -> Iterator[Metric]:
    snap = pool.snapshot()

    def num(key: str) -> float:
        value = snap.get(key, 0)
        return float(value) if isinstance(value, int | float) else 0.0

    yield _gauge("edgerun_pool_capacity_mb", "The sandbox memory budget.", num("capacity_mb"))
    yield _gauge("edgerun_pool_used_mb", "Memory charged to sandboxes.", num("used_mb"))
    yield _gauge(
        "edgerun_pool_held_mb", "Memory held outside sandboxes (loaded zygotes).", num("held_mb")
    )
    sandboxes = Metric("edgerun_pool_sandboxes", "Sandboxes by state.", "gauge")
    for state in ("idle", "busy", "starting"):
        sandboxes.add_sample("edgerun_pool_sandboxes", {"state": state}, num(state))
    yield sandboxes
    yield _gauge("edgerun_pool_queue_depth", "Requests waiting for a sandbox here.", num("waiting"))
    yield _counter(
        "edgerun_pool_evictions", "Idle sandboxes evicted for room.", {"": num("evictions")}, ""
    )


def _regions(regions: Regions) -> Iterator[Metric]:
    up = Metric("edgerun_region_up", "1 while this POP counts the region healthy.", "gauge")
    rtt = Metric(
        "edgerun_region_latency_seconds",
        "Measured round trip to the region (moving average of health checks and forwards).",
        "gauge",
    )
    load = Metric("edgerun_region_load", "The region's published load (0..1).", "gauge")
    failovers = Metric(
        "edgerun_region_failovers",
        "Forwards that could not reach the region and went on to the next one.",
        "counter",
    )
    for r in regions.regions:
        labels = {"region": r.name}
        up.add_sample("edgerun_region_up", labels, 1.0 if r.healthy else 0.0)
        rtt.add_sample("edgerun_region_latency_seconds", labels, r.latency_ms / 1000)
        load.add_sample("edgerun_region_load", labels, r.load)
        failovers.add_sample("edgerun_region_failovers_total", labels, float(r.failovers))
    yield from (up, rtt, load, failovers)


def _feed(catalog: Catalog) -> Iterator[Metric]:
    yield _gauge(
        "edgerun_feed_revision", "Registry revision this node has applied.", catalog.revision
    )
    control = max(catalog.control_revision, catalog.revision)
    yield _gauge(
        "edgerun_feed_control_revision",
        "The control plane's revision at its last answer on the change feed.",
        control,
    )
    yield _gauge(
        "edgerun_feed_revision_lag",
        "Revisions the control plane had that this node has not applied (compare "
        "edgerun_control_revision for a lag the control plane could not report).",
        control - catalog.revision,
    )
    yield _gauge(
        "edgerun_feed_synced", "1 while the change feed answers.", 1.0 if catalog.synced else 0.0
    )
    if catalog.answered_at:
        yield _gauge(
            "edgerun_feed_last_answer_age_seconds",
            "Seconds since the change feed last answered.",
            time.monotonic() - catalog.answered_at,
        )


def _code(code: CodeCache) -> Iterator[Metric]:
    yield _counter(
        "edgerun_bundle_fetches",
        "Bundle fetches (code cache misses) by result: ok, or failed (unreachable, "
        "hash mismatch, cannot unpack).",
        {k: float(v) for k, v in code.fetches.items()},
        "result",
    )
    yield _counter(
        "edgerun_bundle_fetch_bytes", "Bytes of bundles downloaded.", {"": code.fetched_bytes}, ""
    )
    yield _gauge("edgerun_code_cache_bytes", "Disk the code cache uses.", code.used_bytes)


# --- adding up the workers of a node --------------------------------------------
class _Sample(msgspec.Struct, array_like=True):
    name: str
    labels: dict[str, str]
    value: float


class _Family(msgspec.Struct, array_like=True):
    name: str
    type: str
    doc: str
    samples: list[_Sample]


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[_Family]).decode


def encode(families: Iterable[Metric]) -> bytes:
    return _encode(
        [
            _Family(f.name, f.type, f.documentation, [_Sample(*s[:3]) for s in f.samples])
            for f in families
        ]
    )


def decode(raw: bytes) -> list[Metric]:
    out = []
    for fam in _decode(raw):
        metric = Metric(fam.name, fam.doc, fam.type)
        for s in fam.samples:
            metric.add_sample(s.name, s.labels, s.value)
        out.append(metric)
    return out


def merge(parts: Sequence[Sequence[Metric]]) -> list[Metric]:
    """Several workers' families as one node's: counters and histograms add up,
    gauges as :data:`GAUGE_MERGE` says (sum unless it says otherwise)."""
    if len(parts) == 1:
        return list(parts[0])
    order: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[float]]] = {}
    for families in parts:
        for fam in families:
            if fam.name not in order:
                order[fam.name] = Metric(fam.name, fam.documentation, fam.type)
                values[fam.name] = {}
            seen = values[fam.name]
            for s in fam.samples:
                seen.setdefault((s.name, tuple(sorted(s.labels.items()))), []).append(s.value)
    out = []
    for name, metric in order.items():
        rule = GAUGE_MERGE.get(name, "sum") if metric.type == "gauge" else "sum"
        for (sample, labels), vals in values[name].items():
            metric.add_sample(sample, dict(labels), _combine(rule, vals))
        out.append(metric)
    return out


def _combine(rule: str, vals: list[float]) -> float:
    if rule == "max":
        return max(vals)
    if rule == "min":
        return min(vals)
    if rule == "mean":
        return sum(vals) / len(vals)
    return sum(vals)


# --- the other workers ------------------------------------------------------------
SOCKET_NAME = "metrics.sock"
PEER_TIMEOUT_S = 2.0
MAX_PEER_SNAPSHOT = 16 << 20
"""A worker's snapshot is a few hundred KB at most (label sets are capped)."""


def _short(path: Path) -> tuple[str, int | None]:
    """A path ``bind``/``connect`` accept: a Unix socket's path is limited to 107
    bytes, so a longer one goes through an open descriptor of its directory."""
    if len(os.fsencode(path)) < 100:
        return str(path), None
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{path.name}", fd


class Peers:
    """The node's other workers, each serving its own metrics on a Unix socket in its
    worker directory (mode 0600: only the node's own user, which can read the
    worker's registry copy anyway)."""

    def __init__(self, dirs: Sequence[Path], index: int, snapshot: Callable[[], bytes]) -> None:
        self.dirs = list(dirs)
        self.index = index
        self._snapshot = snapshot

    @property
    def count(self) -> int:
        return len(self.dirs)

    async def serve(self) -> None:
        """Answer the other workers until cancelled."""
        path = self.dirs[self.index] / SOCKET_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by the worker this one replaces
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            where, fd = _short(path)
            try:
                sock.bind(where)
            finally:
                if fd is not None:
                    os.close(fd)
            os.chmod(path, 0o600)
        except OSError as exc:
            sock.close()
            log.error("metrics: the other workers cannot reach this one at %s: %s", path, exc)
            return
        server = await asyncio.start_unix_server(self._answer, sock=sock)
        try:
            await asyncio.Future()
        finally:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self._snapshot())
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def gather(self) -> list[bytes]:
        """The snapshots of every other worker that answers in time."""
        others = [d for i, d in enumerate(self.dirs) if i != self.index]
        got = await asyncio.gather(*(self._ask(d / SOCKET_NAME) for d in others))
        return [raw for raw in got if raw is not None]

    async def _ask(self, path: Path) -> bytes | None:
        try:
            async with asyncio.timeout(PEER_TIMEOUT_S):
                where, fd = _short(path)
                try:
                    reader, writer = await asyncio.open_unix_connection(where)
                finally:
                    if fd is not None:
                        os.close(fd)
                try:
                    chunks: list[bytes] = []
                    size = 0
                    while chunk := await reader.read(1 << 16):  # to EOF, within the cap
                        size += len(chunk)
                        if size > MAX_PEER_SNAPSHOT:
                            raise OSError("a snapshot larger than MAX_PEER_SNAPSHOT")
                        chunks.append(chunk)
                    return b"".join(chunks)
                finally:
                    writer.close()
        except (OSError, TimeoutError) as exc:
            log.info("worker metrics at %s did not answer: %s", path, exc)
            return None
