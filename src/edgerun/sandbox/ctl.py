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

GO = b"\x01"
"""The first byte the node sends a new sandbox on its channel, once the sandbox is
in its own cgroup: until then it waits, touching nothing charged to its zygote."""

MAX_PACKET = 1 << 16
"""Control messages carry no user data (the environment travels in a memfd)."""


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
    """Sent straight to the zygote, with one fd: a memfd holding its msgpack environment."""


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
_MAX_FDS = 4


class ProtocolError(Exception):
    """A control message that is too big, malformed or not the one expected.

    Zygotes run user code once they have imported it, so everything they
    send is hostile input: the node refuses it whole and closes any
    descriptor that came with it."""


def send(sock: socket.socket, msg: msgspec.Struct, fds: list[int] | tuple[int, ...] = ()) -> None:
    socket.send_fds(sock, [_encode(msg)], list(fds))


def recv(sock: socket.socket) -> tuple[Any, list[int]]:
    """Blocking (or non-blocking, per the socket) receive of one whole message.

    Raises EOFError when the peer has gone and ProtocolError for a message
    over MAX_PACKET or one that does not decode; either way the message is
    consumed and every descriptor attached to it closed."""
    size = sock.recv_into(bytearray(1), 1, socket.MSG_PEEK | socket.MSG_TRUNC)
    data, fds, flags, _addr = socket.recv_fds(sock, min(max(size, 1), MAX_PACKET), _MAX_FDS)
    if not data:
        close_all(fds)
        raise EOFError("control channel closed")
    if size > MAX_PACKET or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        close_all(fds)
        raise ProtocolError(f"a control message of {size} bytes is over the limit")
    try:
        return _decode(data), fds
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        close_all(fds)
        raise ProtocolError(f"malformed control message: {exc}") from None


def close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class AsyncChannel:
    """One request, one validated reply at a time over a non-blocking SEQPACKET socket.

    A reply that is late, malformed or of the wrong kind breaks the channel
    for good (the next reply could belong to the wrong request), so the
    caller must drop whatever is on the other end."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._fd = sock.fileno()
        sock.setblocking(False)
        self.lock = asyncio.Lock()
        self.broken = False
        self._waiting: asyncio.Future[None] | None = None

    async def request(
        self,
        msg: msgspec.Struct,
        replies: dict[type, int],
        timeout_s: float,
        fds: list[int] | tuple[int, ...] = (),
    ) -> tuple[Any, list[int]]:
        """Send ``msg``; the reply must be one of ``replies`` (type -> number of fds)."""
        async with self.lock:
            return await self.request_locked(msg, replies, timeout_s, fds)

    async def request_locked(
        self,
        msg: msgspec.Struct,
        replies: dict[type, int],
        timeout_s: float,
        fds: list[int] | tuple[int, ...] = (),
    ) -> tuple[Any, list[int]]:
        """:meth:`request` for a caller that already holds :attr:`lock`."""
        if self.broken:
            raise EOFError("control channel closed")
        try:
            socket.send_fds(self.sock, [_encode(msg)], list(fds))
            async with asyncio.timeout(timeout_s):
                reply, got = await self._recv()
        except BaseException:
            self.broken = True
            raise
        if replies.get(type(reply)) != len(got):
            self.broken = True
            close_all(got)
            raise ProtocolError(
                f"expected {' or '.join(t.__name__ for t in replies)}, got "
                f"{type(reply).__name__} with {len(got)} descriptor(s)"
            )
        return reply, got

    async def _recv(self) -> tuple[Any, list[int]]:
        loop = asyncio.get_running_loop()
        while True:
            if self.sock.fileno() < 0:
                raise EOFError("control channel closed")
            try:
                return recv(self.sock)
            except BlockingIOError:
                pass
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self._fd, _wake, ready)
            self._waiting = ready
            try:
                await ready
            finally:
                if self._waiting is ready:
                    self._waiting = None
                    loop.remove_reader(self._fd)

    def close(self) -> None:
        """Close, failing a request in flight with EOFError (the zygote was stopped)."""
        self.broken = True
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().remove_reader(self._fd)
            if not waiting.done():
                waiting.set_exception(EOFError("control channel closed"))
        self.sock.close()
