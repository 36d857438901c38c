"""A POP's parent regions: health tracking and forwarding with failover.

The placement policy ranks the regions for each request; :meth:`Regions.forward`
tries them in exactly that order. Round trips are measured two ways, by
health checks and by forwarded requests (their time less what the region
reports it spent running and starting the function), into one moving average.

Failover is only automatic when the request cannot have run: a refused or
timed-out *connection* moves on to the next region, while an error after
the request was sent is retried only for functions declared idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from edgerun.config import RegionRef
from edgerun.node.upstream import Broken, NotSent, Upstream

log = logging.getLogger("edgerun.node.regions")

_NOT_SENT = (NotSent,)
_MAYBE_RAN = (Broken, TimeoutError)


_SLOW_CHECKS_TO_DOWN = 3


@dataclass(slots=True)
class RegionReply:
    status: int
    headers: list[tuple[str, str]]
    """Lower-cased names, in order, repeats kept."""
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


class AllRegionsDown(Exception):
    pass


class ForwardFailed(Exception):
    """The request reached a region but no answer came back; it may have run."""


@dataclass(slots=True)
class Region:
    name: str
    url: str
    healthy: bool = True
    latency_ms: float = 0.0
    warm: frozenset[str] = field(default_factory=frozenset)
    failures: int = 0
    load: float = 0.0
    loaded: frozenset[str] = field(default_factory=frozenset)
    """Versions (hash prefixes) whose zygote is loaded there: a start is a fork."""
    fork_ms: float = 5.0
    load_ms: float = 50.0
    """What the region reports a cold start costs there (fork / new zygote)."""
    failovers: int = 0
    """Forwards that could not reach it and went on to the next region (for /metrics)."""

    def observe_rtt(self, ms: float) -> None:
        self.latency_ms = ms if not self.latency_ms else 0.8 * self.latency_ms + 0.2 * ms


class Regions:
    def __init__(
        self,
        refs: Sequence[RegionRef],
        client: httpx.AsyncClient,
        *,
        verify: ssl.SSLContext | None = None,
        max_body: int = 64 * 1024 * 1024,
    ) -> None:
        """``verify``: what forwards trust; the node passes the same context its
        ``client`` (health checks) was built with, so both agree. ``max_body``:
        the largest answer a region may send back."""
        self.regions = [Region(r.name, r.url.rstrip("/")) for r in refs]
        self._client = client
        self._upstream = Upstream(ssl_context=verify, max_body=max_body)

    def by_name(self, name: str) -> Region:
        return next(r for r in self.regions if r.name == name)

    async def check(self, region: Region) -> None:
        start = time.perf_counter()
        try:
            resp = await self._client.get(f"{region.url}/v1/health", timeout=2.0)
            resp.raise_for_status()
            body = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            # A refused connection is certain; a slow answer may be load, so
            # it takes a few in a row before the region counts as down.
            region.failures += 1
            refused = isinstance(exc, httpx.ConnectError)
            if region.healthy and (refused or region.failures >= _SLOW_CHECKS_TO_DOWN):
                # The detail says why, e.g. a certificate the configured CA did not sign.
                log.warning("region %s is down (%s: %s)", region.name, type(exc).__name__, exc)
                region.healthy = False
        else:
            region.failures = 0
            region.observe_rtt((time.perf_counter() - start) * 1000)
            _read_health(region, body)
            if not region.healthy:
                log.info("region %s is back", region.name)
            region.healthy = True

    async def monitor(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.gather(*(self.check(r) for r in self.regions))
            await asyncio.sleep(interval)

    async def close(self) -> None:
        await self._upstream.close()

    async def forward(
        self,
        order: Sequence[str],
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        timeout_s: float,
        idempotent: bool,
    ) -> tuple[Region, RegionReply]:
        """Send the request to the regions in ``order`` (the policy's ranking),
        failing over to the next only when it cannot have run."""
        for name in order:
            region = self.by_name(name)
            started = time.perf_counter()
            try:
                resp = await self._upstream.request(
                    method, f"{region.url}{path}", headers, body, timeout_s=timeout_s + 5.0
                )
                reply = RegionReply(resp.status, resp.headers, resp.body)
            except _NOT_SENT as exc:
                log.warning("region %s unreachable (%s); failing over", region.name, exc)
                region.healthy = False
                region.failovers += 1
                continue
            except _MAYBE_RAN as exc:
                region.failures += 1
                if region.failures >= _SLOW_CHECKS_TO_DOWN:
                    region.healthy = False  # the breaker opens; health checks close it
                if idempotent:
                    region.healthy = False
                    region.failovers += 1
                    continue
                raise ForwardFailed(
                    f"region {region.name} did not answer ({type(exc).__name__}); the request "
                    "may have run, so it was not retried (declare the function idempotent to "
                    "allow retries)"
                ) from None
            region.failures = 0
            _observe_forward(region, reply, (time.perf_counter() - started) * 1000)
            return region, reply
        raise AllRegionsDown("no region could be reached")


def _read_health(region: Region, body: object) -> None:
    """Take what a region's /v1/health publishes, ignoring what is malformed."""
    if not isinstance(body, dict):
        return
    region.warm = _prefixes(body.get("warm"))
    region.loaded = _prefixes(body.get("loaded"))
    region.load = _number(body.get("load"), region.load, 1.0)
    costs = body.get("start_ms")
    if isinstance(costs, dict):
        region.fork_ms = _number(costs.get("fork_ms"), region.fork_ms, 60_000.0)
        region.load_ms = _number(costs.get("load_ms"), region.load_ms, 60_000.0)


def _prefixes(value: object) -> frozenset[str]:
    if not isinstance(value, list):
        return frozenset()
    return frozenset(v for v in value if isinstance(v, str) and len(v) <= 64)


def _number(value: object, default: float, ceiling: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
        return min(max(float(value), 0.0), ceiling)
    return default


def _observe_forward(region: Region, reply: RegionReply, elapsed_ms: float) -> None:
    """A forward's round trip: its time less what the region spent starting and running."""
    spent = 0.0
    for header in ("x-edgerun-duration-ms", "x-edgerun-start-ms"):
        try:
            spent += float(reply.header(header) or 0.0)
        except ValueError:
            return
    trip = elapsed_ms - spent
    if 0.0 <= trip < 60_000.0:
        region.observe_rtt(trip)
