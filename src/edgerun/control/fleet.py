"""Which nodes are alive and where they are, from their heartbeats.

Kept in memory: a control plane that restarts knows every live node again
within one heartbeat interval. A node is ``up`` while its beats arrive, and
``down`` once three intervals pass without one; a node credential that never
beat is ``unknown``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from edgerun.errors import bad_request
from edgerun.models import Heartbeat

MISSED_BEATS = 3
MAX_URL = 2048
RESOLVE_TIMEOUT_S = 2.0


class Fleet:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._seen: dict[str, tuple[Heartbeat, float]] = {}

    def beat(self, key_id: str, hb: Heartbeat) -> None:
        """Record a heartbeat the caller has checked (:func:`check_heartbeat` and
        :func:`url_points_at`)."""
        self._seen[key_id] = (hb, self.clock())

    def forget(self, key_id: str) -> None:
        self._seen.pop(key_id, None)

    def view(self, key_id: str) -> dict[str, object]:
        """What ``GET /v1/nodes`` shows of a node's liveness."""
        seen = self._seen.get(key_id)
        if seen is None:
            return {"state": "unknown", "role": None, "url": None, "last_seen": None}
        hb, at = seen
        age = self.clock() - at
        return {
            "state": "up" if age <= MISSED_BEATS * hb.interval_s else "down",
            "role": hb.role,
            "url": hb.url,
            "last_seen": at,
            "last_seen_s": round(age, 3),
            "revision": hb.revision,
            "synced": hb.synced,
            "workers": hb.workers,
            "load": hb.load,
            "started_at": hb.started_at,
        }


def check_heartbeat(hb: Heartbeat) -> None:
    parts = urlsplit(hb.url)
    if len(hb.url) > MAX_URL or parts.scheme not in ("http", "https") or not parts.hostname:
        raise bad_request("url must be an http(s) URL of at most 2048 characters")
    if hb.role not in ("region", "pop"):
        raise bad_request("role must be region or pop")
    if not 0 <= hb.revision < 2**63 or not 1 <= hb.workers <= 4096:
        raise bad_request("revision or workers out of range")
    if not 0.1 <= hb.interval_s <= 60 or not 0 <= hb.load <= 1e6:
        raise bad_request("interval_s or load out of range")


async def url_points_at(url: str, peer: str) -> bool:
    """Whether ``url``'s host is ``peer`` (the address the heartbeat came from), as an
    address or a name resolving to it: others call a node at its URL with their keys
    (``edgerun logs``), so a node credential may not point them anywhere else."""
    host = urlsplit(url).hostname or ""
    try:
        want = ipaddress.ip_address(peer)
    except ValueError:
        return False
    try:
        return ipaddress.ip_address(host) == want
    except ValueError:
        pass  # a name: resolve it
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):
            found = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError):
        return False
    return any(ipaddress.ip_address(str(addr[4][0])) == want for addr in found)
