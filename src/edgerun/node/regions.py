"""A POP's parent regions: health tracking and forwarding with failover.

Failover is only automatic when the request cannot have run: a refused or
timed-out *connection* moves on to the next region, while an error after
the request was sent is retried only for functions declared idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import httpx

from edgerun.config import RegionRef

log = logging.getLogger("edgerun.node.regions")

_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
_MAYBE_RAN = (aiohttp.ClientError, TimeoutError)


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


class Regions:
    def __init__(self, refs: Sequence[RegionRef], client: httpx.AsyncClient) -> None:
        self.regions = [Region(r.name, r.url.rstrip("/")) for r in refs]
        self._client = client
        self._forwarder: aiohttp.ClientSession | None = None

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
                log.warning("region %s is down (%s)", region.name, type(exc).__name__)
                region.healthy = False
        else:
            region.failures = 0
            rtt = (time.perf_counter() - start) * 1000
            region.latency_ms = (
                rtt if not region.latency_ms else 0.8 * region.latency_ms + 0.2 * rtt
            )
            region.warm = frozenset(body.get("warm", []))
            region.load = float(body.get("load", 0.0))
            if not region.healthy:
                log.info("region %s is back", region.name)
            region.healthy = True

    async def monitor(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.gather(*(self.check(r) for r in self.regions))
            await asyncio.sleep(interval)

    def _session(self) -> aiohttp.ClientSession:
        """The forwarding client: aiohttp measured several times faster than httpx
        here under concurrent load (bench/RESULTS.md), so the hot path uses it."""
        if self._forwarder is None or self._forwarder.closed:
            self._forwarder = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, limit_per_host=128, keepalive_timeout=30),
                auto_decompress=False,
            )
        return self._forwarder

    async def close(self) -> None:
        if self._forwarder is not None:
            await self._forwarder.close()

    async def forward(
        self,
        first: str,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        timeout_s: float,
        idempotent: bool,
    ) -> tuple[Region, RegionReply]:
        """Send the request to ``first``, failing over to the other regions."""
        order = [
            self.by_name(first),
            *sorted((r for r in self.regions if r.name != first), key=lambda r: not r.healthy),
        ]
        timeout = aiohttp.ClientTimeout(total=timeout_s + 5.0, connect=1.0)
        session = self._session()
        for region in order:
            try:
                async with session.request(
                    method, f"{region.url}{path}", headers=headers, data=body, timeout=timeout
                ) as resp:
                    reply = RegionReply(
                        resp.status,
                        [
                            (k.decode("latin-1").lower(), v.decode("latin-1"))
                            for k, v in resp.raw_headers
                        ],
                        await resp.read(),
                    )
            except _NOT_SENT as exc:
                log.warning("region %s unreachable (%s); failing over", region.name, exc)
                region.healthy = False
                continue
            except _MAYBE_RAN as exc:
                region.failures += 1
                if region.failures >= _SLOW_CHECKS_TO_DOWN:
                    region.healthy = False  # the breaker opens; health checks close it
                if idempotent:
                    region.healthy = False
                    continue
                raise ForwardFailed(
                    f"region {region.name} did not answer ({type(exc).__name__}); the request "
                    "may have run, so it was not retried (declare the function idempotent to "
                    "allow retries)"
                ) from None
            region.failures = 0
            return region, reply
        raise AllRegionsDown("no region could be reached")
