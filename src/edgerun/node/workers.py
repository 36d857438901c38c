"""One node on every core: a supervisor and N worker processes.

Each worker is a whole node (:class:`~edgerun.node.app.NodeApp` on its own
event loop) bound to the node's one port with ``SO_REUSEPORT``, so the kernel
spreads connections over the workers and a dead worker's share goes to the
others at once. What must be the node's and not a worker's is shared:

- **the memory budget**: a shared memory file, one slot per worker
  (:class:`~edgerun.pool.budget.SharedBudget`), read on the warm path,
  locked only to reserve;
- **popularity**: every 100 ms each worker sends the supervisor the hits it
  counted; the supervisor sends each worker the others' sum, which it counts
  as if served itself (:meth:`Placer.merge_hits`), so a function is popular
  at N requests, not N times that;
- **the credential and the uid of each function** (files under the node's
  ``data_dir``, the uid map under a lock).

The supervisor holds the port (bound, never listening: it only keeps port 0
resolved), starts the workers, replaces one that dies (with backoff, its
budget slot cleared: its sandboxes die with it) and stops them all on
SIGTERM or SIGINT. Each worker keeps its own registry copy, code cache and
zygotes under ``data_dir/workers/N``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from edgerun.config import NodeConfig
from edgerun.pool.budget import SharedBudget

log = logging.getLogger("edgerun.workers")

HITS_EVERY_S = 0.1
"""How often hits travel between workers: the lag of shared popularity."""
_MAX_PACKET = 1 << 16
_CHUNK = 256
"""Functions per hits message (names are short: it stays far under a packet)."""
_STOP_GRACE_S = 10.0
_CONFIG_ENV = "EDGERUN_WORKER_CONFIG"
_hits = msgspec.msgpack.Encoder()
_hits_of = msgspec.msgpack.Decoder(dict[str, int])


def worker_count(cfg: NodeConfig) -> int:
    """How many workers a node runs: ``workers``, or the CPUs it may use (0)."""
    if cfg.role == "control":
        return 1
    if cfg.workers > 0:
        return cfg.workers
    return max(1, len(os.sched_getaffinity(0)))


def budget_path(cfg: NodeConfig) -> Path:
    return Path(cfg.data_dir) / "budget.shm"


def worker_dir(cfg: NodeConfig, index: int) -> Path:
    """What one worker keeps to itself: its registry copy, code and sandbox roots."""
    return Path(cfg.data_dir) / "workers" / str(index)


@dataclass(frozen=True, slots=True)
class Seat:
    """Where a worker sits in its node."""

    index: int
    count: int
    coordinator_fd: int

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


def listen_socket(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """A socket on the node's port that the node's other workers may share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    if listen:
        sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def _chunks(hits: dict[str, int]) -> list[bytes]:
    items = list(hits.items())
    return [_hits.encode(dict(items[i : i + _CHUNK])) for i in range(0, len(items), _CHUNK)]


class HitsLink:
    """A worker's end of the popularity exchange with its supervisor."""

    def __init__(
        self, fd: int, take: Callable[[], dict[str, int]], merge: Callable[[dict[str, int]], None]
    ) -> None:
        self._sock = socket.socket(fileno=fd)
        self._sock.setblocking(False)
        self._take = take
        self._merge = merge

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self._sock.fileno(), self._receive)
        try:
            while True:
                await asyncio.sleep(HITS_EVERY_S)
                hits = self._take()
                if hits:
                    for packet in _chunks(hits):
                        with contextlib.suppress(BlockingIOError):  # a full link drops hits
                            self._sock.send(packet)
        finally:
            loop.remove_reader(self._sock.fileno())
            self._sock.close()

    def _receive(self) -> None:
        while True:
            try:
                packet = self._sock.recv(_MAX_PACKET)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
                return
            if not packet:  # the supervisor is gone: this worker is told to stop soon
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
                return
            try:
                self._merge(_hits_of.decode(packet))
            except (msgspec.DecodeError, ValueError):
                log.warning("dropped a malformed hits message")


@dataclass(eq=False)
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    link: socket.socket | None = None
    started: float = 0.0
    backoff_s: float = 0.1
    hits: dict[str, int] | None = None


class Supervisor:
    """Runs a node as ``count`` workers (see the module doc)."""

    def __init__(self, cfg: NodeConfig, count: int) -> None:
        self.cfg = cfg
        self.count = count
        self._workers = [_Worker(i) for i in range(count)]
        self._stopping = asyncio.Event()
        self._port_holder: socket.socket | None = None

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._port_holder = listen_socket(self.cfg.host, self.cfg.port, listen=False)
        port = self._port_holder.getsockname()[1]
        cfg = msgspec.structs.replace(self.cfg, port=port)
        SharedBudget.create(budget_path(cfg), cfg.capacity_mb, self.count)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        env_config = msgspec.json.encode(cfg).decode()
        watchers = [asyncio.create_task(self._keep(w, env_config)) for w in self._workers]
        relay = asyncio.create_task(self._relay())
        try:
            await self._stopping.wait()
        finally:
            relay.cancel()
            await self._stop_all()
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, relay, return_exceptions=True)
            self._port_holder.close()

    async def _keep(self, w: _Worker, env_config: str) -> None:
        """Start worker ``w`` and start it again whenever it exits, backing off
        while it keeps dying young."""
        while not self._stopping.is_set():
            await self._spawn(w, env_config)
            assert w.process is not None
            status = await w.process.wait()
            if self._stopping.is_set():
                return
            lived = time.monotonic() - w.started
            log.warning("worker %d (pid %d) exited with %s", w.index, w.process.pid, status)
            self._drop_link(w)
            SharedBudget.clear_slot(budget_path(self.cfg), w.index)
            if lived > 60:
                w.backoff_s = 0.1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), w.backoff_s)
            w.backoff_s = min(w.backoff_s * 2, 5.0)

    async def _spawn(self, w: _Worker, env_config: str) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            w.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "edgerun.node.worker",
                str(w.index),
                str(self.count),
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                env={**os.environ, _CONFIG_ENV: env_config},
            )
        finally:
            theirs.close()
        mine.setblocking(False)
        w.link, w.hits, w.started = mine, {}, time.monotonic()
        asyncio.get_running_loop().add_reader(mine.fileno(), self._receive, w)

    def _drop_link(self, w: _Worker) -> None:
        if w.link is not None:
            asyncio.get_running_loop().remove_reader(w.link.fileno())
            w.link.close()
            w.link, w.hits = None, None

    def _receive(self, w: _Worker) -> None:
        link = w.link
        if link is None:
            return
        while True:
            try:
                packet = link.recv(_MAX_PACKET)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                packet = b""
            if not packet:
                self._drop_link(w)
                return
            try:
                hits = _hits_of.decode(packet)
            except (msgspec.DecodeError, ValueError):
                continue
            if w.hits is not None:
                for name, n in hits.items():
                    if n > 0:
                        w.hits[name] = w.hits.get(name, 0) + n

    async def _relay(self) -> None:
        """Every tick, tell each worker what the others counted since the last."""
        while True:
            await asyncio.sleep(HITS_EVERY_S)
            total: dict[str, int] = {}
            for w in self._workers:
                for name, n in (w.hits or {}).items():
                    total[name] = total.get(name, 0) + n
            if not total:
                continue
            for w in self._workers:
                if w.link is None:
                    continue
                own = w.hits or {}
                others = {k: n - own.get(k, 0) for k, n in total.items() if n > own.get(k, 0)}
                if others:
                    for packet in _chunks(others):
                        with contextlib.suppress(BlockingIOError, OSError):
                            w.link.send(packet)
            for w in self._workers:
                if w.hits is not None:
                    w.hits = {}

    async def _stop_all(self) -> None:
        live = [w.process for w in self._workers if w.process and w.process.returncode is None]
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in live)), _STOP_GRACE_S)
        except TimeoutError:
            for p in live:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
            await asyncio.gather(*(p.wait() for p in live))
        for w in self._workers:
            self._drop_link(w)


def config_from_env() -> NodeConfig:
    return msgspec.json.decode(os.environ[_CONFIG_ENV], type=NodeConfig)
