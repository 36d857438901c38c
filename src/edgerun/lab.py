"""A multi-region test bed on one machine: real nodes, emulated distance.

Every node is a real process (as in :mod:`edgerun.cluster`); the links
between clients, POPs and regions go through :class:`Link`, a TCP relay that
adds a one-way delay in each direction and can be cut (connections refused)
or black-holed (accepted, never answered) to test failover. Kernel network
emulation (``tc netem``) would be the first choice, but this machine's kernel
has no ``sch_netem``, so the delay lives in user space: it adds a little CPU
per packet but gives the same round trips to the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgerun.cluster import LocalCluster, free_port
from edgerun.config import ControlSpec, PopSpec, RegionSpec, Topology

WATCH_INTERVAL_S = 0.1


class Link:
    """A relay from a local port to ``target`` with ``delay_ms`` each way."""

    def __init__(self, name: str, target: tuple[str, int], delay_ms: float) -> None:
        self.name = name
        self.target = target
        self.delay_ms = delay_ms
        self.port = free_port()
        self.mode = "up"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._watcher: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        await self._listen()
        self._watcher = asyncio.create_task(self._watch())

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _watch(self) -> None:
        """Mirror the target's reachability: a dead host refuses connections."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                _, w = await asyncio.wait_for(asyncio.open_connection(*self.target), 0.5)
            except (OSError, TimeoutError):
                reachable = False
            else:
                w.close()
                reachable = True
            if self.mode == "up":
                if reachable:
                    await self._listen()
                else:
                    self._close_listener()

    async def set_mode(self, mode: str) -> None:
        """``up``, ``cut`` (refuse connections) or ``blackhole`` (swallow them)."""
        self.mode = mode
        if mode == "cut":
            self._close_listener()
            for w in list(self._writers):
                w.close()
        else:
            await self._listen()
        if mode == "blackhole":
            for w in list(self._writers):
                w.close()

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        await self.set_mode("cut")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.mode == "blackhole":
                await reader.read()  # hold the connection open, answer nothing
                return
            try:
                up_r, up_w = await asyncio.open_connection(*self.target)
            except OSError:
                return
            self._writers.add(up_w)
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
        finally:
            writer.close()
            self._writers.discard(writer)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Copy bytes, each chunk delivered ``delay_ms`` after it was read."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    break
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(chunk)
                await dst.drain()

        sender = asyncio.create_task(deliver())
        try:
            while chunk := await src.read(65536):
                await queue.put((loop.time() + self.delay_ms / 1000, chunk))
        except ConnectionError:
            pass
        finally:
            await queue.put((0.0, b""))
            with contextlib.suppress(ConnectionError):
                await sender
            with contextlib.suppress(Exception):
                dst.close()
            self._writers.discard(dst)


PlacementMode = Literal["edgerun", "always-here", "always-forward"]


@dataclass
class LabSpec:
    """The shape of a lab; ``*_settings`` are extra NodeConfig fields for every
    POP or region (e.g. ``{"idle_ttl_s": 60}``), checked by NodeConfig itself."""

    pops: int = 2
    regions: int = 2
    client_pop_ms: float = 5.0
    pop_region_ms: float = 40.0
    region_region_ms: float = 60.0
    """Regions do not talk to each other yet; kept for when they do."""
    pop_capacity_mb: int = 1024
    region_capacity_mb: int = 8192
    placement_mode: PlacementMode = "edgerun"
    pop_settings: dict[str, object] = field(default_factory=dict)
    region_settings: dict[str, object] = field(default_factory=dict)


@dataclass
class Lab:
    """A running test bed: the cluster, and the links between its nodes."""

    spec: LabSpec
    root: Path
    cluster: LocalCluster = field(init=False)
    links: dict[str, Link] = field(default_factory=dict)
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        s = self.spec
        region_names = [f"region-{i + 1}" for i in range(s.regions)]
        topo = Topology(
            control=ControlSpec(port=free_port()),
            region=[
                RegionSpec(
                    name=n,
                    port=free_port(),
                    capacity_mb=s.region_capacity_mb,
                    settings=dict(s.region_settings),
                )
                for n in region_names
            ],
            pop=[
                PopSpec(
                    name=f"pop-{i + 1}",
                    port=free_port(),
                    capacity_mb=s.pop_capacity_mb,
                    placement_mode=s.placement_mode,
                    regions=region_names[i % s.regions :] + region_names[: i % s.regions],
                    settings=dict(s.pop_settings),
                )
                for i in range(s.pops)
            ],
        )
        ports = {r.name: r.port for r in topo.region} | {p.name: p.port for p in topo.pop}
        for pop in topo.pop:
            self.links[f"client->{pop.name}"] = Link(
                f"client->{pop.name}", ("127.0.0.1", pop.port), s.client_pop_ms / 2
            )
            for region in pop.regions:
                self.links[f"{pop.name}->{region}"] = Link(
                    f"{pop.name}->{region}", ("127.0.0.1", ports[region]), s.pop_region_ms / 2
                )
        self.cluster = LocalCluster(
            topo,
            self.root,
            region_url=lambda pop, region: self.links[f"{pop}->{region}"].url,
        )

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        for link in self.links.values():
            self._run(link.start())
        self.cluster.start()

    def stop(self) -> None:
        self.cluster.stop()
        for link in self.links.values():
            self._run(link.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    def client_url(self, pop: str) -> str:
        """Where a client near ``pop`` sends its requests."""
        return self.links[f"client->{pop}"].url

    def set_link(self, name: str, mode: str) -> None:
        self._run(self.links[name].set_mode(mode))
