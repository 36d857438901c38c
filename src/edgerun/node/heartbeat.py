"""A region or POP tells the control plane where it is and that it is alive.

The control plane learns each node's URL from these (``GET /v1/nodes``), so the
CLI can follow logs across the fleet and the dashboard can show the topology;
a node that stops beating shows as ``down`` there. A failed beat is only
logged: the node serves the same without the control plane (static stability).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import httpx
import msgspec

from edgerun.models import Heartbeat

if TYPE_CHECKING:
    from edgerun.node.app import NodeApp

log = logging.getLogger("edgerun.node")


def node_url(node: NodeApp) -> str:
    cfg = node.cfg
    if cfg.advertise_url:
        return cfg.advertise_url.rstrip("/")
    scheme = "https" if cfg.tls.cert else "http"
    return f"{scheme}://{cfg.host}:{cfg.port}"


def beat(node: NodeApp, started_at: float) -> Heartbeat:
    return Heartbeat(
        url=node_url(node),
        role=node.cfg.role,
        revision=node.catalog.revision,
        synced=node.catalog.synced,
        workers=node.seat.count if node.seat else 1,
        load=round(node.pool.load(), 3),
        started_at=started_at,
        interval_s=node.cfg.heartbeat_s,
    )


async def heartbeat_forever(node: NodeApp) -> None:
    started_at = time.time()
    target = node.cfg.control_url.rstrip("/") + "/v1/nodes/heartbeat"
    failing = False
    while True:
        try:
            resp = await node.client.post(
                target,
                content=msgspec.json.encode(beat(node, started_at)),
                headers={"content-type": "application/json"},
                timeout=max(1.0, node.cfg.heartbeat_s),
            )
            ok = resp.status_code == 204
            problem = f"HTTP {resp.status_code}"
        except httpx.HTTPError as exc:
            ok, problem = False, str(exc) or type(exc).__name__
        if not ok and not failing:
            log.warning("heartbeat to the control plane failed: %s", problem)
        elif ok and failing:
            log.info("heartbeat to the control plane works again")
        failing = not ok
        await asyncio.sleep(node.cfg.heartbeat_s)
