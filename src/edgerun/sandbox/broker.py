"""One set of zygotes for all the workers of a node.

A node of N workers (:mod:`edgerun.node.workers`) has one sandbox engine, held
by its supervisor: the template, one zygote per version, their cgroups and the
cgroup move warmer. A worker that needs a sandbox asks the supervisor
(:class:`BrokerClient`, a :class:`~edgerun.sandbox.base.SandboxFactory`); the
supervisor's :class:`ZygoteBroker` forks it from the zygote (loading the
zygote first if need be), puts it in its cgroup and hands the worker the
sandbox's channel and a pidfd over SCM_RIGHTS. From then on the worker talks
to the sandbox directly: warm calls never pass through the supervisor.

What a zygote holds (its heap, its /tmp) is charged once, in the engine's
slot of the node's shared budget (:mod:`edgerun.pool.budget`). Workers learn
which versions are loaded, and what a load would cost, from the deltas the
broker sends every :data:`TICK_S`. A sandbox's end (reap, /tmp, cgroup
removal) is done by the broker when the worker says it released it, and for
every sandbox of a worker that died.

The link is a SOCK_SEQPACKET socketpair, one msgpack message per packet; the
same link carries the popularity hits of :mod:`edgerun.node.workers`.
Both ends are edgerun's own processes, but every wait on the link has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from edgerun.pool.budget import SharedBudget
from edgerun.sandbox.base import (
    SandboxCrashed,
    SandboxError,
    SandboxInitError,
    SandboxSpec,
)
from edgerun.sandbox.cgroups import SandboxCgroup
from edgerun.sandbox.forked import HEAPS_KEPT, ForkedSandbox, ZygoteSandboxFactory, _Zygote
from edgerun.sandbox.protocol import ErrorInfo
from edgerun.sandbox.transport import open_channel

log = logging.getLogger("edgerun.broker")

TICK_S = 0.1
"""How often the broker publishes the engine's state (loaded versions, held MB)."""
_MAX_PACKET = 1 << 16
_MAX_FDS = 4
_CHUNK = 256
_START_TIMEOUT_S = 60.0
"""A start may load a zygote (the template's answer plus the handler's import)."""
_CALL_TIMEOUT_S = 10.0
_TMP_EVERY_S = 0.1
_MAX_BACKLOG = 100_000


# --- messages ------------------------------------------------------------------


class Hits(msgspec.Struct, tag="hits"):
    """Requests counted per function (worker -> supervisor -> the other workers)."""

    hits: dict[str, int]


class Spec(msgspec.Struct):
    function: str
    version: str
    handler: str
    bundle_dir: str
    memory_mb: int
    timeout_s: float
    network: bool


class Start(msgspec.Struct, tag="start"):
    """Fork a sandbox of ``spec``; one fd: a memfd with the msgpack environment."""

    id: int
    spec: Spec


class Started(msgspec.Struct, tag="started"):
    """Two fds: the sandbox's channel and a pidfd of it."""

    id: int
    sid: int
    pid: int
    cgroup_version: int = 0
    cgroup_dirs: dict[str, str] | None = None


class StartFailed(msgspec.Struct, tag="start_failed"):
    id: int
    kind: str
    """``init`` (SandboxInitError) or ``crash`` (anything else)."""
    error_type: str
    message: str


class Reap(msgspec.Struct, tag="reap"):
    id: int
    sid: int


class Reaped(msgspec.Struct, tag="reaped"):
    id: int
    status: int | None


class Released(msgspec.Struct, tag="released"):
    sid: int


class Tmp(msgspec.Struct, tag="tmp"):
    """Charge what the /tmp of the zygote of this spec key holds now."""

    key: str


class Shed(msgspec.Struct, tag="shed"):
    id: int
    need_mb: int


class Freed(msgspec.Struct, tag="freed"):
    id: int
    mb: int


class StopFunction(msgspec.Struct, tag="stop_function"):
    id: int
    function: str


class Done(msgspec.Struct, tag="done"):
    id: int


class Engine(msgspec.Struct, tag="engine"):
    """What changed in the engine since the last message: loaded zygotes (key ->
    [version, MB]), dropped ones, next-load estimates (key -> MB) and its problem."""

    loaded: dict[str, tuple[str, int]] = {}
    dropped: list[str] = []
    heaps: dict[str, int] = {}
    problem: str | None = None


Message = (
    Hits
    | Start
    | Started
    | StartFailed
    | Reap
    | Reaped
    | Released
    | Tmp
    | Shed
    | Freed
    | StopFunction
    | Done
    | Engine
)
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Message).decode


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class Link:
    """One end of a worker<->supervisor link (see module doc)."""

    def __init__(self, sock: socket.socket, on_message: Callable[[Any, list[int]], None]) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._fd = sock.fileno()
        self._on_message = on_message
        self.closed = False
        self.on_close: Callable[[], None] | None = None
        self._backlog: deque[bytes] = deque()
        """Messages that must arrive, waiting for room in a full socket (in order)."""

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self._fd, self._readable)

    def send(self, msg: msgspec.Struct, fds: list[int] | tuple[int, ...] = ()) -> bool:
        """Send one message now; False when the link is closed or full (for the
        messages that may be dropped: hits and /tmp hints)."""
        if self.closed:
            return False
        try:
            socket.send_fds(self.sock, [_encode(msg)], list(fds))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self.close()
            return False
        return True

    def deliver(self, msg: msgspec.Struct) -> None:
        """Send a message that must arrive (no fds): queued, in order, while the
        socket is full. A peer that stops reading for good is cut off."""
        if self.closed:
            return
        if not self._backlog and self.send(msg):
            return
        if self.closed:
            return
        if len(self._backlog) >= _MAX_BACKLOG:
            log.warning("a worker link stayed full: closing it")
            self.close()
            return
        self._backlog.append(_encode(msg))
        if len(self._backlog) == 1:
            asyncio.get_running_loop().add_writer(self._fd, self._flush)

    def _flush(self) -> None:
        while self._backlog and not self.closed:
            try:
                self.sock.send(self._backlog[0])
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            self._backlog.popleft()
        with contextlib.suppress(RuntimeError, ValueError):
            asyncio.get_running_loop().remove_writer(self._fd)

    async def send_wait(
        self, msg: msgspec.Struct, fds: list[int] | tuple[int, ...] = (), timeout_s: float = 5.0
    ) -> None:
        """Send one message, waiting (bounded) for room in a full link."""
        deadline = time.monotonic() + timeout_s
        while not self.send(msg, fds):
            if self.closed:
                raise EOFError("the link to the node's supervisor is closed")
            if time.monotonic() > deadline:
                raise TimeoutError("the link to the node's supervisor stayed full")
            await asyncio.sleep(0.001)

    def _readable(self) -> None:
        while not self.closed:
            try:
                data, fds, flags, _ = socket.recv_fds(self.sock, _MAX_PACKET, _MAX_FDS)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds, flags = b"", [], 0
            if not data:
                _close_all(fds)
                self.close()
                return
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                _close_all(fds)
                log.warning("dropped an oversized message on a worker link")
                continue
            try:
                msg = _decode(data)
            except (msgspec.DecodeError, msgspec.ValidationError):
                _close_all(fds)
                log.warning("dropped a malformed message on a worker link")
                continue
            try:
                self._on_message(msg, fds)
            except Exception:
                _close_all(fds)
                log.exception("handling %s failed", type(msg).__name__)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._backlog.clear()
        with contextlib.suppress(RuntimeError, ValueError):
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._fd)
            loop.remove_writer(self._fd)
        self.sock.close()
        if self.on_close is not None:
            self.on_close()


def hits_packets(hits: dict[str, int]) -> list[Hits]:
    """Hits split in messages that fit a packet (function names are short)."""
    items = list(hits.items())
    return [Hits(dict(items[i : i + _CHUNK])) for i in range(0, len(items), _CHUNK)]


# --- the supervisor's side -------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Lent:
    """A sandbox handed to a worker: what the broker needs to end it."""

    zygote: _Zygote
    pidfd: int
    pid: int
    local_pid: int
    cgroup: SandboxCgroup | None
    reaped: bool = False


class ZygoteBroker:
    """The node's one engine, serving its workers' links (see module doc)."""

    def __init__(self, factory: ZygoteSandboxFactory, budget: SharedBudget) -> None:
        self.factory = factory
        self.budget = budget
        self._links: dict[int, Link] = {}
        self._lent: dict[int, dict[int, _Lent]] = {}
        self._sids = itertools.count(1)
        self._sent_loaded: dict[str, tuple[str, int]] = {}
        self._sent_heaps: dict[str, int] = {}
        self._sent_problem: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_hits: Callable[[int, dict[str, int]], None] = lambda _w, _h: None

    def attach(self, worker: int, sock: socket.socket) -> Link:
        """Serve a (new) worker on ``sock``; it first learns the whole engine state."""
        link = Link(sock, lambda msg, fds: self._handle(worker, link, msg, fds))
        link.on_close = lambda: self._gone(worker, link)
        self._links[worker] = link
        self._lent.setdefault(worker, {})
        link.start()
        loaded = self._loaded_now()
        self._send_engine(link, loaded, [], self.factory.heap_estimates(), self.factory.problem())
        return link

    def _gone(self, worker: int, link: Link) -> None:
        if self._links.get(worker) is link:
            del self._links[worker]
        lent = self._lent.pop(worker, {})
        if lent:
            self._spawn(self._end_all(list(lent.values())))

    async def _end(self, item: _Lent) -> None:
        """Give back a sandbox its worker let go of (reaped here if it was not)."""
        if not item.reaped:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(item.pidfd, signal.SIGKILL)
            await item.zygote.reap(item.local_pid)
        os.close(item.pidfd)
        item.zygote.released(item.cgroup)

    async def _end_all(self, lent: list[_Lent]) -> None:
        """Kill and give back every sandbox a dead worker held."""
        for item in lent:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(item.pidfd, signal.SIGKILL)
            if item.cgroup is not None:
                item.cgroup.kill_strays(item.pid)
                item.cgroup.thaw()
        for item in lent:
            await item.zygote.reap(item.local_pid)
            os.close(item.pidfd)
            item.zygote.released(item.cgroup)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _handle(self, worker: int, link: Link, msg: Any, fds: list[int]) -> None:
        if isinstance(msg, Start) and len(fds) == 1:
            self._spawn(self._start(worker, link, msg, fds[0]))
            return
        _close_all(fds)
        lent = self._lent.get(worker, {})
        if isinstance(msg, Hits):
            self.on_hits(worker, msg.hits)
        elif isinstance(msg, Reap):
            self._spawn(self._reap(link, msg, lent.get(msg.sid)))
        elif isinstance(msg, Released):
            item = lent.pop(msg.sid, None)
            if item is not None:
                self._spawn(self._end(item))
        elif isinstance(msg, Tmp):
            zygote = self.factory.zygotes.get(msg.key)
            if zygote is not None:
                zygote.measure_tmp(every_s=_TMP_EVERY_S)
        elif isinstance(msg, Shed):
            self._spawn(self._shed(link, msg))
        elif isinstance(msg, StopFunction):
            self._spawn(self._stop(link, msg))
        else:
            log.warning("worker %d sent an unexpected %s", worker, type(msg).__name__)

    async def _start(self, worker: int, link: Link, msg: Start, env_fd: int) -> None:
        try:
            with os.fdopen(env_fd, "rb") as f:
                env = msgspec.msgpack.decode(f.read(), type=dict[str, str])
            s = msg.spec
            spec = SandboxSpec(
                s.function,
                s.version,
                s.handler,
                Path(s.bundle_dir),
                s.memory_mb,
                s.timeout_s,
                env=env,
                network=s.network,
            )
            zygote, forked = await self.factory.start_raw(spec)
        except SandboxInitError as exc:
            link.deliver(StartFailed(msg.id, "init", exc.info.type, exc.info.message))
            return
        except Exception as exc:
            message = str(exc) if isinstance(exc, SandboxError) else f"{type(exc).__name__}: {exc}"
            link.deliver(StartFailed(msg.id, "crash", "SandboxCrashed", message))
            return
        self._publish()
        if link.closed:  # the worker died meanwhile
            await self.factory.discard(zygote, forked)
            return
        sid = next(self._sids)
        cgroup = forked.cgroup
        reply = Started(
            msg.id,
            sid,
            forked.pid,
            cgroup.version if cgroup else 0,
            {k: str(v) for k, v in cgroup.dirs.items()} if cgroup else None,
        )
        item = _Lent(zygote, forked.pidfd, forked.pid, forked.local_pid, cgroup)
        self._lent[worker][sid] = item
        worker_pidfd = os.dup(forked.pidfd)
        try:
            await link.send_wait(reply, [forked.sock.fileno(), worker_pidfd])
        except TimeoutError:  # the link stayed full: nobody will use this sandbox
            if self._lent.get(worker, {}).pop(sid, None) is not None:
                await self._end(item)
        except EOFError:
            pass  # the link closed: _gone() ends what was lent, this one included
        finally:
            os.close(worker_pidfd)
            forked.sock.close()

    async def _reap(self, link: Link, msg: Reap, item: _Lent | None) -> None:
        status = None
        if item is not None and not item.reaped:
            item.reaped = True
            status = await item.zygote.reap(item.local_pid)
        link.deliver(Reaped(msg.id, status))

    async def _shed(self, link: Link, msg: Shed) -> None:
        freed = await self.factory.shed(max(0, msg.need_mb))
        self._publish()
        link.deliver(Freed(msg.id, freed))

    async def _stop(self, link: Link, msg: StopFunction) -> None:
        await self.factory.stop_function(msg.function)
        self._publish()
        link.deliver(Done(msg.id))

    # --- the engine's state, published -------------------------------------
    def _loaded_now(self) -> dict[str, tuple[str, int]]:
        return {
            k: (z.spec.version, z.charge_mb)
            for k, z in self.factory.zygotes.items()
            if not z.closed
        }

    def _publish(self) -> None:
        self.budget.publish(self.factory.held_mb())

    def tick(self) -> None:
        """Publish what the engine holds and tell every worker what changed."""
        self._publish()
        loaded = self._loaded_now()
        heaps = self.factory.heap_estimates()
        problem = self.factory.problem()
        changed = {k: v for k, v in loaded.items() if self._sent_loaded.get(k) != v}
        dropped = [k for k in self._sent_loaded if k not in loaded]
        new_heaps = {k: v for k, v in heaps.items() if self._sent_heaps.get(k) != v}
        if changed or dropped or new_heaps or problem != self._sent_problem:
            for link in list(self._links.values()):
                self._send_engine(link, changed, dropped, new_heaps, problem)
        self._sent_loaded, self._sent_heaps, self._sent_problem = loaded, heaps, problem

    @staticmethod
    def _send_engine(
        link: Link,
        loaded: dict[str, tuple[str, int]],
        dropped: list[str],
        heaps: dict[str, int],
        problem: str | None,
    ) -> None:
        items = list(loaded.items())
        heap_items = list(heaps.items())
        chunks = max(1, -(-len(items) // _CHUNK), -(-len(dropped) // _CHUNK))
        chunks = max(chunks, -(-len(heap_items) // _CHUNK))
        for i in range(chunks):
            part = slice(i * _CHUNK, (i + 1) * _CHUNK)
            link.deliver(Engine(dict(items[part]), dropped[part], dict(heap_items[part]), problem))

    async def run(self, reap_every_s: float) -> None:
        last_reap = time.monotonic()
        while True:
            await asyncio.sleep(TICK_S)
            if time.monotonic() - last_reap >= reap_every_s:
                last_reap = time.monotonic()
                await self.factory.reap_idle()
            self.tick()

    async def close(self) -> None:
        for link in list(self._links.values()):
            link.close()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.factory.close()


# --- a worker's side ---------------------------------------------------------------


class _RemoteZygote:
    """A lent sandbox's zygote, as seen from the worker (a ZygoteLink)."""

    def __init__(self, client: BrokerClient, sid: int, key: str) -> None:
        self._client = client
        self._sid = sid
        self._key = key

    async def reap(self, local_pid: int) -> int | None:
        try:
            reply = await self._client.call(Reap(0, self._sid), _CALL_TIMEOUT_S)
        except (EOFError, TimeoutError, SandboxError):
            return None
        return reply.status if isinstance(reply, Reaped) else None

    def measure_tmp(self, *, every_s: float = 0.0) -> None:
        self._client.measure_tmp(self._key, every_s)

    def released(self, cgroup: SandboxCgroup | None) -> None:
        if cgroup is not None:
            cgroup.forget()
        self._client.link.deliver(Released(self._sid))


class BrokerClient:
    """A worker's sandbox factory: sandboxes come from the supervisor's engine."""

    def __init__(
        self,
        sock: socket.socket,
        budget: SharedBudget,
        *,
        zygote_estimate_mb: int,
    ) -> None:
        self.budget = budget
        self._estimate_mb = zygote_estimate_mb
        self.on_hits: Callable[[dict[str, int]], None] = lambda _hits: None
        """Where the other workers' hits go (the worker's placer)."""
        self.link = Link(sock, self._received)
        self.link.on_close = self._link_closed
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[tuple[Any, list[int]]]] = {}
        self._loaded: dict[str, tuple[str, int]] = {}
        self._heaps: dict[str, int] = {}
        self._problem: str | None = None
        self._tmp_sent: dict[str, float] = {}
        self._tmp_pending: set[str] = set()
        self._closing = False

    # --- the link -----------------------------------------------------------------
    def _received(self, msg: Any, fds: list[int]) -> None:
        if isinstance(msg, Hits):
            _close_all(fds)
            self.on_hits(msg.hits)
        elif isinstance(msg, Engine):
            _close_all(fds)
            for key in msg.dropped:
                self._loaded.pop(key, None)
            self._loaded.update(msg.loaded)
            self._heaps.update(msg.heaps)
            while len(self._heaps) > HEAPS_KEPT:
                del self._heaps[next(iter(self._heaps))]
            self._problem = msg.problem
        else:
            fut = self._calls.pop(getattr(msg, "id", -1), None)
            if fut is not None and not fut.done():
                fut.set_result((msg, fds))
                return
            self._orphan(msg, fds)  # its call timed out or was cancelled here

    def _orphan(self, msg: Any, fds: list[int]) -> None:
        """A reply nobody waits for any more; a sandbox it lent is given back."""
        if isinstance(msg, Started) and len(fds) == 2:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(fds[1], signal.SIGKILL)
            self.link.deliver(Released(msg.sid))
        _close_all(fds)

    def _link_closed(self) -> None:
        self._problem = "this worker lost its node's supervisor"
        for fut in self._calls.values():
            if not fut.done():
                fut.set_exception(EOFError("the link to the node's supervisor is closed"))
        self._calls.clear()
        if not self._closing:
            # Without its supervisor this worker can start nothing: it stops, and the
            # supervisor (if it lives) starts a new one.
            log.error("the link to the node's supervisor closed: stopping this worker")
            os.kill(os.getpid(), signal.SIGTERM)

    async def call(self, msg: Any, timeout_s: float, fds: list[int] | tuple[int, ...] = ()) -> Any:
        """Send a request (its id is set here) and wait for its reply."""
        reply, got = await self.call_fds(msg, timeout_s, fds)
        _close_all(got)
        return reply

    async def call_fds(
        self, msg: Any, timeout_s: float, fds: list[int] | tuple[int, ...] = ()
    ) -> tuple[Any, list[int]]:
        msg.id = next(self._ids)
        fut: asyncio.Future[tuple[Any, list[int]]] = asyncio.get_running_loop().create_future()
        self._calls[msg.id] = fut
        try:
            await self.link.send_wait(msg, fds)
            return await asyncio.wait_for(fut, timeout_s)
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._orphan(*fut.result())  # answered, then cancelled before it was read
            raise
        finally:
            self._calls.pop(msg.id, None)

    def measure_tmp(self, key: str, every_s: float) -> None:
        """Ask the engine to charge what a zygote's /tmp holds: at most once per
        ``every_s`` per version (its sandboxes share one /tmp), and once more when
        the window ends (what the last call of a burst wrote is charged too)."""
        now = time.monotonic()
        wait = self._tmp_sent.get(key, 0.0) + every_s - now
        if wait > 0:
            if key not in self._tmp_pending:
                self._tmp_pending.add(key)
                asyncio.get_running_loop().call_later(wait, self._tmp_due, key)
            return
        self._tmp_sent[key] = now
        if len(self._tmp_sent) > 4 * _CHUNK * 16:
            self._tmp_sent.clear()  # bounded: forgetting only allows one early measure
        self.link.send(Tmp(key))

    def _tmp_due(self, key: str) -> None:
        self._tmp_pending.discard(key)
        self.measure_tmp(key, 0.0)

    def send_hits(self, hits: dict[str, int]) -> None:
        for msg in hits_packets(hits):
            self.link.send(msg)

    # --- SandboxFactory -------------------------------------------------------------
    async def open(self) -> None:
        self.link.start()

    async def start(self, spec: SandboxSpec) -> ForkedSandbox:
        env = os.memfd_create("env", os.MFD_CLOEXEC)
        try:
            os.write(env, msgspec.msgpack.encode(spec.env))
            os.lseek(env, 0, os.SEEK_SET)
            msg = Start(
                0,
                Spec(
                    spec.function,
                    spec.version,
                    spec.handler,
                    str(spec.bundle_dir),
                    spec.memory_mb,
                    spec.timeout_s,
                    spec.network,
                ),
            )
            try:
                reply, fds = await self.call_fds(msg, _START_TIMEOUT_S, [env])
            except (EOFError, TimeoutError) as exc:
                raise SandboxCrashed(f"the node's sandbox engine did not answer ({exc})") from None
        finally:
            os.close(env)
        if isinstance(reply, StartFailed):
            _close_all(fds)
            if reply.kind == "init":
                raise SandboxInitError(ErrorInfo(type=reply.error_type, message=reply.message))
            raise SandboxCrashed(reply.message)
        if not isinstance(reply, Started) or len(fds) != 2:
            _close_all(fds)
            raise SandboxCrashed("the node's sandbox engine sent a malformed answer")
        self._loaded.setdefault(spec.key, (spec.version, 0))
        chan_fd, pidfd = fds
        cgroup = None
        if reply.cgroup_dirs:
            cgroup = SandboxCgroup(
                reply.cgroup_version, {k: Path(v) for k, v in reply.cgroup_dirs.items()}
            )
        zygote = _RemoteZygote(self, reply.sid, spec.key)
        sock = socket.socket(fileno=chan_fd)
        try:
            channel = await open_channel(sock)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
            zygote.released(cgroup)
            raise
        return ForkedSandbox(
            spec,
            channel,
            zygote=zygote,
            local_pid=0,
            pid=reply.pid,
            pidfd=pidfd,
            cgroup=cgroup,
        )

    def is_loaded(self, spec: SandboxSpec) -> bool:
        return spec.key in self._loaded

    async def reap_idle(self, now: float | None = None) -> int:
        return 0  # the broker reaps the engine's zygotes

    def problem(self) -> str | None:
        return self._problem

    def zygote_mb(self, spec: SandboxSpec) -> int:
        if spec.key in self._loaded:
            return 0
        return self._heaps.get(spec.key, self._estimate_mb)

    def held_mb(self) -> int:
        return self.budget.engine_mb()

    async def shed(self, need_mb: int) -> int:
        try:
            reply = await self.call(Shed(0, need_mb), _CALL_TIMEOUT_S)
        except (EOFError, TimeoutError):
            return 0
        return reply.mb if isinstance(reply, Freed) else 0

    def loaded_versions(self) -> set[str]:
        return {version for version, _mb in self._loaded.values()}

    async def stop_function(self, function: str) -> None:
        with contextlib.suppress(EOFError, TimeoutError):
            await self.call(StopFunction(0, function), _CALL_TIMEOUT_S)

    async def close(self) -> None:
        self._closing = True
        self.link.close()
