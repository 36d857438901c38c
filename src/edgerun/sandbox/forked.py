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

from edgerun.sandbox import ctl
from edgerun.sandbox.base import SandboxCrashed, SandboxInitError, SandboxSpec
from edgerun.sandbox.cgroups import Cgroups, SandboxCgroup
from edgerun.sandbox.channel import ChannelSandbox, describe_status
from edgerun.sandbox.protocol import ErrorInfo, Failure, Invoke, Result
from edgerun.sandbox.uids import UidMap

log = logging.getLogger("edgerun.sandbox")


def _pid_of(pidfd: int) -> int:
    """The pid, in this node's namespace, of the process a pidfd refers to."""
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    raise OSError(f"pidfd {pidfd} has no Pid")


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


@dataclass(eq=False)
class _Zygote:
    spec: SandboxSpec
    chan: ctl.AsyncChannel
    pidfd: int
    pid: int
    cgroup: SandboxCgroup | None
    live: int = 0
    last_used: float = field(default_factory=time.monotonic)
    closed: bool = False
    charge_mb: int = 0
    """What the zygote may hold outside its sandboxes (heap and /tmp), charged to the pool."""

    async def reap(self, local_pid: int) -> int | None:
        if self.closed:
            return None
        try:
            reply, _ = await asyncio.wait_for(self.chan.request(ctl.Reap(pid=local_pid)), 2.0)
        except (TimeoutError, OSError, EOFError):
            return None
        return reply.status if isinstance(reply, ctl.Reaped) else None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.chan.close()
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        os.close(self.pidfd)
        if self.cgroup is not None:
            self.cgroup.destroy()


class ForkedSandbox(ChannelSandbox):
    def __init__(
        self,
        spec: SandboxSpec,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        zygote: _Zygote,
        local_pid: int,
        pid: int,
        pidfd: int,
        cgroup: SandboxCgroup | None,
    ) -> None:
        super().__init__(spec, reader, writer)
        self.zygote = zygote
        self.local_pid = local_pid
        self.pid = pid
        self._pidfd = pidfd
        self.cgroup = cgroup
        self._reaped = False
        self._status: int | None = None

    async def invoke(self, msg: Invoke) -> Result | Failure:
        reply = await super().invoke(msg)
        if self.cgroup is not None:
            # Nothing a call started may outlive it: stop stray processes now.
            self.cgroup.kill_strays(self.pid)
        return reply

    async def _terminate(self) -> None:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        if self.cgroup is not None:
            self.cgroup.kill_strays(self.pid)  # children too; no waiting for them to go

    async def _reap(self) -> int | None:
        """The wait status, asked of the zygote once (a pid may be reused after)."""
        if not self._reaped:
            self._reaped = True
            self._status = await self.zygote.reap(self.local_pid)
        return self._status

    async def _cleanup(self) -> None:
        await self._reap()
        os.close(self._pidfd)
        if self.cgroup is not None:
            # Removing a cgroup waits for its processes to be gone: not our caller's
            # problem (an eviction should not wait for it), so it finishes in a thread.
            asyncio.get_running_loop().run_in_executor(None, self.cgroup.destroy)
        self.zygote.live -= 1
        self.zygote.last_used = time.monotonic()

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
        self.uids = uids
        self._template: asyncio.subprocess.Process | None = None
        self._chan: ctl.AsyncChannel | None = None
        self._zygotes: dict[str, _Zygote] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._ids = itertools.count(1)
        self.root_mount = root_mount

    @property
    def zygotes(self) -> dict[str, _Zygote]:
        return self._zygotes

    async def open(self) -> None:
        self.root_mount.mkdir(parents=True, exist_ok=True)
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
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            )
        finally:
            child.close()
        self._chan = ctl.AsyncChannel(parent)

    async def close(self) -> None:
        for z in list(self._zygotes.values()):
            z.close()
        self._zygotes.clear()
        if self._chan is not None:
            self._chan.close()
        if self._template is not None and self._template.returncode is None:
            self._template.kill()
            await self._template.wait()
        if self.cgroups is not None:
            self.cgroups.remove_all()

    async def start(self, spec: SandboxSpec) -> ForkedSandbox:
        for attempt in (1, 2):
            zygote = await self._zygote(spec)
            try:
                reply, fds = await zygote.chan.request(ctl.Fork())
            except (OSError, EOFError):
                reply, fds = None, []
            if isinstance(reply, ctl.Forked) and len(fds) == 2:
                break
            # A zygote can die (its sandboxes share its uid); start a fresh one once.
            for fd in fds:
                os.close(fd)
            self._drop(spec.key)
            if attempt == 2:
                raise SandboxCrashed(f"the zygote of {spec.function!r} died twice in a row")
        assert isinstance(reply, ctl.Forked)
        chan_fd, pidfd = fds
        pid = _pid_of(pidfd)
        cgroup = None
        if self.cgroups is not None:
            # Moving a process between cgroups can wait for an RCU grace period
            # (milliseconds): do it off the event loop so other requests go on.
            cgroup = await asyncio.to_thread(
                self._cgroup_for, f"sb-{next(self._ids)}", spec.memory_mb, pid
            )
        reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=chan_fd))
        zygote.live += 1
        zygote.last_used = time.monotonic()
        return ForkedSandbox(
            spec,
            reader,
            writer,
            zygote=zygote,
            local_pid=reply.pid,
            pid=pid,
            pidfd=pidfd,
            cgroup=cgroup,
        )

    def _cgroup_for(self, name: str, memory_mb: int, pid: int) -> SandboxCgroup | None:
        assert self.cgroups is not None
        cgroup = self.cgroups.create(name, memory_mb=memory_mb, pids_max=self.settings.pids_max)
        if cgroup is not None:
            cgroup.add(pid)
        return cgroup

    def is_loaded(self, spec: SandboxSpec) -> bool:
        z = self._zygotes.get(spec.key)
        return z is not None and not z.closed

    def _drop(self, key: str) -> None:
        z = self._zygotes.pop(key, None)
        if z is not None:
            z.close()

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
            return z

    async def _start_zygote(self, spec: SandboxSpec) -> _Zygote:
        assert self._chan is not None, "open() the factory first"
        s = self.settings
        uid = self.uids.uid_for(spec.function)
        req = ctl.StartZygote(
            function=spec.function,
            version=spec.version,
            handler=spec.handler,
            bundle_dir=str(spec.bundle_dir),
            memory_mb=spec.memory_mb,
            timeout_s=spec.timeout_s,
            env=spec.env,
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
        reply, fds = await self._chan.request(req)
        if isinstance(reply, ctl.StartFailed):
            raise SandboxInitError(ErrorInfo(type="IsolationError", message=reply.message))
        chan_fd, pidfd = fds
        cgroup = None
        if self.cgroups is not None:
            cgroup = await asyncio.to_thread(
                self._cgroup_for, f"zy-{next(self._ids)}", spec.memory_mb, _pid_of(pidfd)
            )
        z = _Zygote(spec, ctl.AsyncChannel(socket.socket(fileno=chan_fd)), pidfd, reply.pid, cgroup)
        try:
            loaded, _ = await asyncio.wait_for(z.chan.request(ctl.Load()), 60)
        except (TimeoutError, OSError, EOFError):
            z.close()
            raise SandboxInitError(
                ErrorInfo(type="InitError", message="the zygote died while importing the handler")
            ) from None
        if isinstance(loaded, ctl.LoadFailed):
            z.close()
            raise SandboxInitError(loaded.error)
        return z

    def held_mb(self) -> int:
        return sum(z.charge_mb for z in self._zygotes.values())

    async def shed(self, need_mb: int) -> int:
        freed = 0
        for key, z in sorted(self._zygotes.items(), key=lambda kv: kv[1].last_used):
            if freed >= need_mb:
                break
            if z.live <= 0:
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
            if z.live <= 0 and now - z.last_used > self.settings.zygote_ttl_s
        ]
        for key in idle:
            self._drop(key)
        return len(idle)
