"""Control messages between a node, its template process and version zygotes.

They travel as one msgpack message per SOCK_SEQPACKET packet, with file
descriptors (sandbox channels, pidfds) attached through SCM_RIGHTS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any

import msgspec

from edgerun.sandbox.protocol import ErrorInfo

MAX_PACKET = 1 << 16


class Layers(msgspec.Struct, kw_only=True):
    """Which isolation layers a zygote applies (decided by the node)."""

    namespaces: bool = False
    setuid: bool = False
    seccomp: bool = False
    rlimit_as: bool = True
    """Use RLIMIT_AS as the memory guard (when there is no memory cgroup)."""


class StartZygote(msgspec.Struct, tag="start_zygote", kw_only=True):
    function: str
    version: str
    handler: str
    bundle_dir: str
    memory_mb: int
    timeout_s: float
    env: dict[str, str]
    network: bool
    uid: int
    gid: int
    tmp_mb: int
    root_mount: str
    """An empty folder the zygote mounts its new root on (inside its own namespace)."""
    nofile: int
    nproc: int
    layers: Layers


class ZygoteStarted(msgspec.Struct, tag="zygote_started", kw_only=True):
    """Reply with fds [zygote control channel, zygote pidfd]."""

    pid: int


class StartFailed(msgspec.Struct, tag="start_failed", kw_only=True):
    message: str


class Load(msgspec.Struct, tag="load", kw_only=True):
    pass


class Fork(msgspec.Struct, tag="fork", kw_only=True):
    pass


class Forked(msgspec.Struct, tag="forked", kw_only=True):
    """Reply with fds [sandbox channel, sandbox pidfd]; pid is zygote-local."""

    pid: int


class Reap(msgspec.Struct, tag="reap", kw_only=True):
    pid: int


class Reaped(msgspec.Struct, tag="reaped", kw_only=True):
    status: int | None
    """The raw wait status, or None if the zygote did not know the pid."""


class Loaded(msgspec.Struct, tag="loaded", kw_only=True):
    pid: int


class LoadFailed(msgspec.Struct, tag="load_failed", kw_only=True):
    error: ErrorInfo


Message = (
    StartZygote
    | ZygoteStarted
    | StartFailed
    | Load
    | Loaded
    | LoadFailed
    | Fork
    | Forked
    | Reap
    | Reaped
)

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Message).decode


def send(sock: socket.socket, msg: msgspec.Struct, fds: list[int] | tuple[int, ...] = ()) -> None:
    socket.send_fds(sock, [_encode(msg)], list(fds))


def recv(sock: socket.socket) -> tuple[Any, list[int]]:
    """Blocking receive; raises EOFError when the peer has gone."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_PACKET, 4)
    if not data:
        for fd in fds:
            _close(fd)
        raise EOFError("control channel closed")
    return _decode(data), fds


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


class AsyncChannel:
    """One request, one reply at a time over a non-blocking SEQPACKET socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        self._lock = asyncio.Lock()

    async def request(self, msg: msgspec.Struct) -> tuple[Any, list[int]]:
        async with self._lock:
            socket.send_fds(self.sock, [_encode(msg)], [])
            return await self._recv()

    async def _recv(self) -> tuple[Any, list[int]]:
        loop = asyncio.get_running_loop()
        while True:
            try:
                return recv(self.sock)
            except BlockingIOError:
                pass
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self.sock.fileno(), _wake, ready)
            try:
                await ready
            finally:
                loop.remove_reader(self.sock.fileno())

    def close(self) -> None:
        self.sock.close()
