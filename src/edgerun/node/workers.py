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
- **the zygotes**: the supervisor holds the sandbox engine (template, zygotes,
  cgroups) and lends each worker the sandboxes it asks for
  (:mod:`edgerun.sandbox.broker`); warm calls go from worker to sandbox;
- **the credential and the uid of each function** (files under the node's
  ``data_dir``, the uid map under a lock).

The supervisor holds the port (bound, never listening: it only keeps port 0
resolved), starts the workers, replaces one that dies (with backoff, its
budget slot cleared and the sandboxes it held killed) and stops them all on
SIGTERM or SIGINT. Each worker keeps its own registry copy and code cache
under ``data_dir/workers/N``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from edgerun.config import NodeConfig
from edgerun.pool.budget import SharedBudget
from edgerun.sandbox.broker import Hits, Link, ZygoteBroker, hits_packets
from edgerun.sandbox.forked import ZygoteSandboxFactory
from edgerun.sandbox.isolation import Layer, as_dicts

log = logging.getLogger("edgerun.workers")

HITS_EVERY_S = 0.1
"""How often hits travel between workers: the lag of shared popularity."""
_STOP_GRACE_S = 10.0
_CONFIG_ENV = "EDGERUN_WORKER_CONFIG"
BROKER_ENV = "EDGERUN_WORKER_ENGINE"
"""Set (to the engine's isolation layers) when the supervisor holds the zygote engine."""


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


class HitsLink:
    """Sends the hits a worker counted to its supervisor every :data:`HITS_EVERY_S`."""

    def __init__(self, send: Callable[[Hits], bool], take: Callable[[], dict[str, int]]) -> None:
        self._send = send
        self._take = take

    async def run(self) -> None:
        while True:
            await asyncio.sleep(HITS_EVERY_S)
            hits = self._take()
            for msg in hits_packets(hits) if hits else ():
                self._send(msg)  # a full link drops hits: popularity is an estimate


def hits_only(on_hits: Callable[[dict[str, int]], None]) -> Callable[[object, list[int]], None]:
    """A link handler for a worker without a shared engine: hits, nothing else."""

    def handle(msg: object, fds: list[int]) -> None:
        for fd in fds:
            os.close(fd)
        if isinstance(msg, Hits):
            on_hits(msg.hits)

    return handle


@dataclass(eq=False)
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    link: Link | None = None
    started: float = 0.0
    backoff_s: float = 0.1
    hits: dict[str, int] = field(default_factory=dict)


class Supervisor:
    """Runs a node as ``count`` workers (see the module doc)."""

    def __init__(self, cfg: NodeConfig, count: int) -> None:
        self.cfg = cfg
        self.count = count
        self._workers = [_Worker(i) for i in range(count)]
        self._stopping = asyncio.Event()
        self._broker: ZygoteBroker | None = None
        self._env: dict[str, str] = {}

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        holder = listen_socket(self.cfg.host, self.cfg.port, listen=False)
        cfg = msgspec.structs.replace(self.cfg, port=holder.getsockname()[1])
        self.cfg = cfg
        SharedBudget.create(budget_path(cfg), cfg.capacity_mb, self.count)
        self._env = {_CONFIG_ENV: msgspec.json.encode(cfg).decode()}
        tasks = [asyncio.create_task(self._relay())]
        await self._open_engine(tasks)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        tasks += [asyncio.create_task(self._keep(w)) for w in self._workers]
        try:
            await self._stopping.wait()
        finally:
            await self._stop_all()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._broker is not None:
                await self._broker.close()
            holder.close()

    async def _open_engine(self, tasks: list[asyncio.Task[None]]) -> None:
        """Start the node's one sandbox engine here, when it is the zygote engine."""
        from edgerun.server import make_engine  # the server module runs supervisors

        factory, layers = make_engine(self.cfg)
        if not isinstance(factory, ZygoteSandboxFactory):
            await factory.close()
            return  # the portable engine: each worker runs its own processes
        await factory.open()
        self._broker = ZygoteBroker(factory, SharedBudget(budget_path(self.cfg), self.count))
        self._broker.on_hits = self._hits_from
        self._env[BROKER_ENV] = json.dumps(as_dicts(layers))
        reap_every = min(30.0, self.cfg.zygote_ttl_s / 2)
        tasks.append(asyncio.create_task(self._broker.run(reap_every)))

    async def _keep(self, w: _Worker) -> None:
        """Start worker ``w`` and start it again whenever it exits, backing off
        while it keeps dying young."""
        while not self._stopping.is_set():
            try:
                await self._spawn(w)
            except OSError as exc:  # no fds, no memory: try again after the backoff
                log.error("could not start worker %d: %s", w.index, exc)
                lived = 0.0
            else:
                assert w.process is not None
                status = await w.process.wait()
                if self._stopping.is_set():
                    return
                lived = time.monotonic() - w.started
                log.warning("worker %d (pid %d) exited with %s", w.index, w.process.pid, status)
            if w.link is not None:
                w.link.close()  # the broker ends the sandboxes it had lent it
                w.link = None
            SharedBudget.clear_slot(budget_path(self.cfg), w.index)
            if lived > 60:
                w.backoff_s = 0.1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), w.backoff_s)
            w.backoff_s = min(w.backoff_s * 2, 5.0)

    async def _spawn(self, w: _Worker) -> None:
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
                env={**os.environ, **self._env},
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        w.started, w.hits = time.monotonic(), {}
        if self._broker is not None:
            w.link = self._broker.attach(w.index, mine)
        else:
            w.link = Link(mine, hits_only(lambda hits: self._hits_from(w.index, hits)))
            w.link.start()

    def _hits_from(self, index: int, hits: dict[str, int]) -> None:
        own = self._workers[index].hits
        for name, n in hits.items():
            if n > 0:
                own[name] = own.get(name, 0) + n

    async def _relay(self) -> None:
        """Every tick, tell each worker what the others counted since the last."""
        while True:
            await asyncio.sleep(HITS_EVERY_S)
            total: dict[str, int] = {}
            for w in self._workers:
                for name, n in w.hits.items():
                    total[name] = total.get(name, 0) + n
            if not total:
                continue
            for w in self._workers:
                others = {k: n - w.hits.get(k, 0) for k, n in total.items() if n > w.hits.get(k, 0)}
                if others and w.link is not None:
                    for msg in hits_packets(others):
                        w.link.send(msg)
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
            if w.link is not None:
                w.link.close()


def engine_layers() -> list[Layer] | None:
    """In a worker: the isolation layers of the supervisor's engine, or None when
    the worker runs its own (portable) engine."""
    raw = os.environ.get(BROKER_ENV)
    if raw is None:
        return None
    return [Layer(**d) for d in json.loads(raw)]


def config_from_env() -> NodeConfig:
    return msgspec.json.decode(os.environ[_CONFIG_ENV], type=NodeConfig)
