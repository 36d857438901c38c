"""Sandboxes forked from per-version zygotes (the default engine on Linux).

The node starts the template process once; per function version it asks
for a zygote, and per cold start for a fork of it. Channels and pidfds come
back over SCM_RIGHTS. The node, which is root, puts each zygote and sandbox
in its own cgroup before any user code runs there.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec

from edgerun.sandbox import ctl
from edgerun.sandbox.base import SandboxCrashed, SandboxInitError, SandboxSpec
from edgerun.sandbox.cgroups import Cgroups, MigrationWarmer, SandboxCgroup
from edgerun.sandbox.channel import ChannelSandbox, describe_status
from edgerun.sandbox.protocol import ErrorInfo, Failure, Invoke, Result
from edgerun.sandbox.transport import FrameChannel, open_channel
from edgerun.sandbox.uids import UidMap

log = logging.getLogger("edgerun.sandbox")
_MB = 1024 * 1024
_TMP_MEASURE_EVERY_S = 0.1
HEAPS_KEPT = 10_000
"""Next-load estimates kept (one per version loaded lately)."""


def _pid_of(pidfd: int) -> int:
    """The pid, in this node's namespace, of the process a pidfd refers to."""
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    raise OSError(f"pidfd {pidfd} has no Pid")


def _threads(pid: int) -> int:
    """How many threads a process runs (1 when it cannot be read: nothing to freeze)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[17])
    except (OSError, ValueError, IndexError):
        return 1


def _status_code(status: int | None) -> int | None:
    if status is None:
        return None
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


@dataclass(frozen=True, slots=True)
class EngineSettings:
    namespaces: bool
    setuid: bool
    seccomp: bool
    tmp_mb: int = 64
    nofile: int = 256
    pids_max: int = 64
    zygote_ttl_s: float = 600.0
    start_timeout_s: float = 10.0
    """The template's answer to StartZygote (no user code runs before it)."""
    init_timeout_s: float = 10.0
    """Importing the handler in a new zygote (Lambda's init limit)."""
    fork_timeout_s: float = 5.0
    reap_timeout_s: float = 2.0
    zygote_estimate_mb: int = 8
    """Room held for a version's first zygote, before its heap was ever measured."""
    zygote_fork_headroom_mb: int = 128
    """A loaded zygote's cgroup may hold this much over the function's memory: the
    pages each fork leaves its sandbox stay charged there while that sandbox lives
    (about 1 MB a sandbox here). Not in the node's budget (the zygote is charged
    its heap as measured when it loaded)."""
    warm_cgroup_moves: bool = True
    """Keep moves into cgroups fast while sandboxes start (see MigrationWarmer)."""


@dataclass(eq=False)
class _Zygote:
    spec: SandboxSpec
    chan: ctl.AsyncChannel
    pidfd: int
    pid: int
    uid: int | None
    cgroup: SandboxCgroup | None
    settings: EngineSettings
    live: int = 0
    forking: int = 0
    last_used: float = field(default_factory=time.monotonic)
    closed: bool = False
    heap_mb: int = 0
    """Its cgroup's memory once the handler is imported (it runs no user code after,
    but in a fork, and is frozen if the import left a thread running)."""
    tmp_mb: int = 0
    """What its private /tmp holds now (written by its sandboxes, outliving them)."""
    tmp_measured: float = 0.0
    tmp_pending: bool = False

    @property
    def charge_mb(self) -> int:
        return self.heap_mb + self.tmp_mb

    async def ask(
        self, msg: msgspec.Struct, replies: dict[type, int], timeout_s: float
    ) -> tuple[Any, list[int]]:
        """One exchange with the zygote, thawed for it and frozen again after.

        Between requests the zygote is frozen: code it imported (a thread
        started at import, an at-fork hook) never runs outside a fork."""
        async with self.chan.lock:
            if self.cgroup is not None:
                self.cgroup.thaw()
            try:
                return await self.chan.request_locked(msg, replies, timeout_s)
            finally:
                self.settle()

    def settle(self) -> None:
        """Freeze the zygote if its user code left a thread running.

        Only then: a frozen process acts on SIGKILL only once thawed (cgroup
        v1), so a frozen zygote would outlive a node that died, until that
        node's next start sweeps it."""
        if self.cgroup is not None and not self.closed and _threads(self.pid) > 1:
            self.cgroup.freeze()

    async def reap(self, local_pid: int) -> int | None:
        if self.closed or self.chan.broken:
            return None
        try:
            reply, _ = await self.ask(
                ctl.Reap(pid=local_pid), {ctl.Reaped: 0}, self.settings.reap_timeout_s
            )
        except (TimeoutError, OSError, EOFError, ctl.ProtocolError):
            return None
        status: int | None = reply.status
        return status

    def measure_tmp(self, *, every_s: float = 0.0) -> None:
        """Charge what /tmp holds now (a statvfs through the zygote's own root); at most
        once per ``every_s`` (after calls: back-to-back calls pay for one, and /tmp is
        capped at ``tmp_mb`` anyway; a closing sandbox always measures)."""
        if not self.settings.namespaces or self.closed:
            return
        now = time.monotonic()
        wait = self.tmp_measured + every_s - now
        if wait > 0:
            # Skipped now, so measure once when the window ends: what the last call of
            # a burst wrote is charged even if no call or close follows.
            if not self.tmp_pending:
                self.tmp_pending = True
                asyncio.get_running_loop().call_later(wait, self.measure_tmp)
            return
        self.tmp_pending = False
        self.tmp_measured = now
        try:
            st = os.statvfs(f"/proc/{self.pid}/root/tmp")
        except OSError:
            return
        self.tmp_mb = -(-((st.f_blocks - st.f_bfree) * st.f_frsize) // _MB)

    def released(self, cgroup: SandboxCgroup | None) -> None:
        """One of its sandboxes is gone (reaped): charge what it left in /tmp and
        remove its cgroup, off the loop (removal waits for its processes to go)."""
        self.live -= 1
        self.last_used = time.monotonic()
        self.measure_tmp()
        if cgroup is not None:
            asyncio.get_running_loop().run_in_executor(None, cgroup.destroy)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.chan.close()
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        os.close(self.pidfd)
        if self.cgroup is not None:
            cgroup = self.cgroup
            with contextlib.suppress(RuntimeError):  # no loop: destroy right here
                asyncio.get_running_loop().run_in_executor(None, cgroup.destroy)
                return
            cgroup.destroy()


class ZygoteLink(Protocol):
    """What a sandbox needs of the zygote it was forked from: in this process
    (:class:`_Zygote`) or held by the node's supervisor (:mod:`edgerun.sandbox.broker`)."""

    async def reap(self, local_pid: int) -> int | None: ...

    def measure_tmp(self, *, every_s: float = 0.0) -> None: ...

    def released(self, cgroup: SandboxCgroup | None) -> None: ...


@dataclass(eq=False, slots=True)
class Forked:
    """A new sandbox before any channel is opened on it (what a broker hands on)."""

    sock: socket.socket
    pidfd: int
    pid: int
    local_pid: int
    cgroup: SandboxCgroup | None


class ForkedSandbox(ChannelSandbox):
    def __init__(
        self,
        spec: SandboxSpec,
        channel: FrameChannel,
        *,
        zygote: ZygoteLink,
        local_pid: int,
        pid: int,
        pidfd: int,
        cgroup: SandboxCgroup | None,
    ) -> None:
        super().__init__(spec, channel)
        self.zygote = zygote
        self.local_pid = local_pid
        self.pid = pid
        self._pidfd = pidfd
        self.cgroup = cgroup
        self._reaped = False
        self._status: int | None = None

    async def invoke(self, msg: Invoke) -> Result | Failure:
        cgroup = self.cgroup
        if cgroup is not None:
            cgroup.thaw()
        try:
            return await super().invoke(msg)
        finally:
            if cgroup is not None and self.alive:
                # Nothing a call started may run after it: stray processes die,
                # leftover threads are frozen until the next call.
                cgroup.settle(self.pid)
            self.zygote.measure_tmp(every_s=_TMP_MEASURE_EVERY_S)

    async def _terminate(self) -> None:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        if self.cgroup is not None:
            self.cgroup.kill_strays(self.pid)  # children too; no waiting for them to go
            self.cgroup.thaw()  # a frozen task acts on SIGKILL only once thawed

    async def _reap(self) -> int | None:
        """The wait status, asked of the zygote once (a pid may be reused after)."""
        if not self._reaped:
            self._reaped = True
            self._status = await self.zygote.reap(self.local_pid)
        return self._status

    async def _cleanup(self) -> None:
        await self._reap()
        os.close(self._pidfd)
        self.zygote.released(self.cgroup)  # what it wrote in /tmp outlives it: charged

    async def _death_message(self, exc: BaseException) -> str:
        status = _status_code(await self._reap())
        oom = self.cgroup.oom_killed() if self.cgroup is not None else False
        return describe_status(self.spec.function, status, self.spec.memory_mb, oom)


class ZygoteSandboxFactory:
    def __init__(
        self,
        *,
        node: str,
        settings: EngineSettings,
        cgroups: Cgroups | None,
        uids: UidMap,
        root_mount: Path,
    ) -> None:
        """``root_mount``: an empty folder zygotes mount their private roots on."""
        self.node = node
        self.settings = settings
        self.cgroups = cgroups
        self._warmer: MigrationWarmer | None = None
        self.uids = uids
        self.root_mount = root_mount
        self._template: asyncio.subprocess.Process | None = None
        self._chan: ctl.AsyncChannel | None = None
        self._template_lock = asyncio.Lock()
        self.template_starts = 0
        self._closing = False
        self._watcher: asyncio.Task[None] | None = None
        self._zygotes: dict[str, _Zygote] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._ids = itertools.count(1)
        self._heaps: dict[str, int] = {}
        """Heap measured at each version's last load: what its next load will cost."""

    @property
    def zygotes(self) -> dict[str, _Zygote]:
        return self._zygotes

    # --- the template -------------------------------------------------------
    async def open(self) -> None:
        self.root_mount.mkdir(parents=True, exist_ok=True)
        if self.cgroups is not None and self.settings.warm_cgroup_moves:
            self._warmer = self.cgroups.warmer()
        await self._start_template()
        self._watcher = asyncio.create_task(self._watch_template())

    async def _watch_template(self) -> None:
        """Restart the template as soon as it dies, backing off if it keeps dying."""
        backoff = 0.1
        while not self._closing:
            template = self._template
            assert template is not None
            started = time.monotonic()
            await template.wait()
            if time.monotonic() - started > 60:
                backoff = 0.1  # it ran fine for a while: not a crash loop
            if self._closing:
                return
            log.warning("sandbox template exited with %s; restarting it", template.returncode)
            # Its zygotes die with it (parent-death signals); a frozen one only
            # once thawed, which closing it does.
            for key in list(self._zygotes):
                self._drop(key)
            async with self._template_lock:
                if self._template is template and not self._closing:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                    await self._start_template()

    async def _start_template(self) -> None:
        if self._chan is not None:
            self._chan.close()
        if self._template is not None and self._template.returncode is None:
            self._template.kill()
            await self._template.wait()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._template = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-B",
                "-m",
                "edgerun.sandbox.zygote",
                str(child.fileno()),
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            )
        finally:
            child.close()
        self._chan = ctl.AsyncChannel(parent)
        self.template_starts += 1
        if self.template_starts > 1:
            log.warning("sandbox template restarted (start %d)", self.template_starts)

    def _template_up(self) -> bool:
        return (
            self._template is not None
            and self._template.returncode is None
            and self._chan is not None
            and not self._chan.broken
        )

    def problem(self) -> str | None:
        """Why this engine cannot start zygotes now, or None when it can."""
        if self._closing or self._template_up():
            return None
        return "the sandbox template process is not running; it is being restarted"

    async def _template_channel(self) -> ctl.AsyncChannel:
        """The channel to a live template, restarting a dead one first."""
        async with self._template_lock:
            if not self._template_up():
                await self._start_template()
            assert self._chan is not None
            return self._chan

    async def close(self) -> None:
        self._closing = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for z in list(self._zygotes.values()):
            z.close()
        self._zygotes.clear()
        if self._chan is not None:
            self._chan.close()
        if self._template is not None and self._template.returncode is None:
            self._template.kill()
            await self._template.wait()
        if self._warmer is not None:
            await asyncio.to_thread(self._warmer.close)  # out of the node's cgroups first
        if self.cgroups is not None:
            self.cgroups.remove_all()

    # --- sandboxes ----------------------------------------------------------
    async def start(self, spec: SandboxSpec) -> ForkedSandbox:
        zygote, forked = await self.start_raw(spec)
        try:
            channel = await open_channel(forked.sock)
        except BaseException:
            await self.discard(zygote, forked)
            raise
        return ForkedSandbox(
            spec,
            channel,
            zygote=zygote,
            local_pid=forked.local_pid,
            pid=forked.pid,
            pidfd=forked.pidfd,
            cgroup=forked.cgroup,
        )

    async def start_raw(self, spec: SandboxSpec) -> tuple[_Zygote, Forked]:
        """A new sandbox of ``spec``, in its cgroup, counted live in its zygote."""
        for attempt in (1, 2):
            zygote = await self._zygote(spec)
            zygote.forking += 1  # not idle until its sandbox counts as live: shed() waits
            try:
                return zygote, await self._fork(zygote, spec)
            except (OSError, EOFError, TimeoutError, ctl.ProtocolError) as exc:
                # A zygote can die (its sandboxes share its uid) or misbehave (it
                # runs the function's import): start a fresh one once.
                log.warning("zygote of %s failed to fork: %s", spec.function, exc)
                self._drop(spec.key, zygote)
                if attempt == 2:
                    raise SandboxCrashed(
                        f"the zygote of {spec.function!r} failed twice in a row ({exc})"
                    ) from None
            finally:
                zygote.forking -= 1
        raise AssertionError("unreachable")

    async def discard(self, zygote: _Zygote, forked: Forked) -> None:
        """Kill a sandbox nobody will use, reap it and give back what it held."""
        forked.sock.close()
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(forked.pidfd, signal.SIGKILL)
        if forked.cgroup is not None:
            forked.cgroup.kill_strays(forked.pid)
            forked.cgroup.thaw()
        await zygote.reap(forked.local_pid)
        os.close(forked.pidfd)
        zygote.released(forked.cgroup)

    async def _fork(self, zygote: _Zygote, spec: SandboxSpec) -> Forked:
        reply, fds = await zygote.ask(ctl.Fork(), {ctl.Forked: 2}, self.settings.fork_timeout_s)
        chan_fd, pidfd = fds
        try:
            pid = self._check_child(zygote, pidfd)
            sock = socket.socket(fileno=chan_fd)
        except BaseException:
            ctl.close_all(fds)
            raise
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            sock.close()
            os.close(pidfd)
            raise ctl.ProtocolError("the zygote sent something other than a sandbox channel")
        cgroup = None
        try:
            if self.cgroups is not None:
                # Moving a process between cgroups can wait for an RCU grace period
                # (milliseconds): do it off the event loop so other requests go on.
                cgroup = await asyncio.to_thread(
                    self._cgroup_for, f"sb-{next(self._ids)}", spec.memory_mb, pid
                )
            sock.send(ctl.GO)  # in its cgroup: it may start (it waited, touching nothing)
        except BaseException:
            sock.close()
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            os.close(pidfd)
            raise
        zygote.live += 1
        zygote.last_used = time.monotonic()
        return Forked(sock, pidfd, pid, reply.pid, cgroup)

    @staticmethod
    def _check_child(zygote: _Zygote, pidfd: int) -> int:
        """The node-side pid of a new sandbox; the pidfd must name a live
        process of the function's own uid (never the node's or another's)."""
        try:
            pid = _pid_of(pidfd)
            owner = os.stat(f"/proc/{pid}").st_uid
        except (OSError, ValueError):
            raise ctl.ProtocolError("the zygote sent a descriptor that is no live pidfd") from None
        if pid <= 0 or (zygote.uid is not None and owner != zygote.uid):
            raise ctl.ProtocolError(f"the zygote sent the pidfd of a foreign process ({pid})")
        return pid

    def _cgroup_for(self, name: str, memory_mb: int, pid: int) -> SandboxCgroup | None:
        assert self.cgroups is not None
        if self._warmer is not None:
            self._warmer.touch()
        cgroup = self.cgroups.create(name, memory_mb=memory_mb, pids_max=self.settings.pids_max)
        if cgroup is not None:
            cgroup.add(pid)
        return cgroup

    def is_loaded(self, spec: SandboxSpec) -> bool:
        z = self._zygotes.get(spec.key)
        return z is not None and not z.closed

    def _drop(self, key: str, which: _Zygote | None = None) -> None:
        z = self._zygotes.get(key)
        if z is not None and (which is None or z is which):
            del self._zygotes[key]
            z.close()
        elif which is not None:
            which.close()

    # --- zygotes --------------------------------------------------------------
    async def _zygote(self, spec: SandboxSpec) -> _Zygote:
        z = self._zygotes.get(spec.key)
        if z is not None and not z.closed:
            return z
        lock = self._locks.setdefault(spec.key, asyncio.Lock())
        async with lock:
            z = self._zygotes.get(spec.key)
            if z is not None and not z.closed:
                return z
            z = await self._start_zygote(spec)
            self._zygotes[spec.key] = z
        if not lock.locked():
            self._locks.pop(spec.key, None)
        return z

    async def _start_zygote(self, spec: SandboxSpec) -> _Zygote:
        s = self.settings
        uid = self.uids.uid_for(spec.function)
        req = ctl.StartZygote(
            function=spec.function,
            version=spec.version,
            handler=spec.handler,
            bundle_dir=str(spec.bundle_dir),
            memory_mb=spec.memory_mb,
            timeout_s=spec.timeout_s,
            network=spec.network,
            uid=uid,
            gid=uid,
            tmp_mb=s.tmp_mb,
            root_mount=str(self.root_mount),
            nofile=s.nofile,
            nproc=s.pids_max,
            layers=ctl.Layers(
                namespaces=s.namespaces,
                setuid=s.setuid,
                seccomp=s.seccomp,
                rlimit_as=not (self.cgroups and self.cgroups.memory),
            ),
        )
        chan = await self._template_channel()
        try:
            reply, fds = await chan.request(
                req, {ctl.ZygoteStarted: 2, ctl.StartFailed: 0}, s.start_timeout_s
            )
        except (OSError, EOFError, TimeoutError, ctl.ProtocolError) as exc:
            raise SandboxInitError(
                ErrorInfo(type="IsolationError", message=f"the sandbox template failed: {exc}")
            ) from None
        if isinstance(reply, ctl.StartFailed):
            raise SandboxInitError(ErrorInfo(type="IsolationError", message=reply.message))
        chan_fd, pidfd = fds
        try:
            z1 = _pid_of(pidfd)
            cgroup = None
            if self.cgroups is not None:
                cgroup = await asyncio.to_thread(
                    self._cgroup_for, f"zy-{next(self._ids)}", spec.memory_mb, z1
                )
        except BaseException:
            ctl.close_all(fds)
            raise
        z = _Zygote(
            spec,
            ctl.AsyncChannel(socket.socket(fileno=chan_fd)),
            pidfd,
            z1,
            uid if s.setuid else None,
            cgroup,
            s,
        )
        try:
            await self._load(z)
        except BaseException:
            z.close()
            raise
        return z

    async def _load(self, z: _Zygote) -> None:
        """Hand the zygote its environment and let it import the handler."""
        env = os.memfd_create("env", os.MFD_CLOEXEC)
        try:
            os.write(env, msgspec.msgpack.encode(z.spec.env))
            os.lseek(env, 0, os.SEEK_SET)
            async with z.chan.lock:
                reply, _ = await z.chan.request_locked(
                    ctl.Load(),
                    {ctl.Loaded: 0, ctl.LoadFailed: 0},
                    self.settings.init_timeout_s,
                    fds=[env],
                )
        except TimeoutError:
            raise SandboxInitError(
                ErrorInfo(
                    type="InitError",
                    message=f"importing the handler took longer than "
                    f"{self.settings.init_timeout_s:g} s",
                )
            ) from None
        except (OSError, EOFError, ctl.ProtocolError):
            raise SandboxInitError(
                ErrorInfo(type="InitError", message="the zygote died while importing the handler")
            ) from None
        finally:
            os.close(env)
        if isinstance(reply, ctl.LoadFailed):
            raise SandboxInitError(reply.error)
        if z.cgroup is not None:
            # Loaded: from now on the zygote runs no user code but at-fork hooks, and
            # its cgroup also carries the pages each fork leaves its sandbox (copies
            # the zygote makes of what it writes after a fork stay charged here while
            # that sandbox lives): room for them, or a busy version's zygote is
            # killed for memory its sandboxes use.
            with contextlib.suppress(OSError):
                z.cgroup.set_memory_limit(z.spec.memory_mb + self.settings.zygote_fork_headroom_mb)
            used = z.cgroup.memory_bytes()
            if used is not None:
                # Not a new limit: a fork's child is charged here until it is moved.
                z.heap_mb = -(-used // _MB)
                self._heaps[z.spec.key] = z.heap_mb
                if len(self._heaps) > HEAPS_KEPT:
                    del self._heaps[next(iter(self._heaps))]
            z.settle()

    def heap_estimates(self) -> dict[str, int]:
        """What loading each version cost last time (spec key -> MB), a copy."""
        return dict(self._heaps)

    def zygote_mb(self, spec: SandboxSpec) -> int:
        if self.is_loaded(spec):
            return 0
        return self._heaps.get(spec.key, self.settings.zygote_estimate_mb)

    def held_mb(self) -> int:
        return sum(z.charge_mb for z in self._zygotes.values())

    async def shed(self, need_mb: int) -> int:
        freed = 0
        for key, z in sorted(self._zygotes.items(), key=lambda kv: kv[1].last_used):
            if freed >= need_mb:
                break
            if z.live <= 0 and not z.forking:
                freed += z.charge_mb
                self._drop(key)
        return freed

    def loaded_versions(self) -> set[str]:
        return {z.spec.version for z in self._zygotes.values()}

    async def stop_function(self, function: str) -> None:
        for key in [k for k, z in self._zygotes.items() if z.spec.function == function]:
            self._drop(key)

    async def reap_idle(self, now: float | None = None) -> int:
        """Stop zygotes of versions with no sandbox that nobody used for a while."""
        now = time.monotonic() if now is None else now
        idle = [
            k
            for k, z in self._zygotes.items()
            if z.live <= 0 and not z.forking and now - z.last_used > self.settings.zygote_ttl_s
        ]
        for key in idle:
            self._drop(key)
        return len(idle)
