"""The node's end of a sandbox channel: frames in, one future per call.

An :class:`asyncio.Protocol` parses length-prefixed frames as bytes arrive
and hands each to the call waiting for it, so a round trip costs one write,
one wake-up and one decode: no StreamReader buffers, no ``readexactly``
coroutines, and a deadline that is one timer handle rather than an
``asyncio.timeout`` context per call.

Every byte comes from hostile code: a frame's length is checked before it is
buffered, a frame nobody asked for is held (one at most, and small) and then refused,
and once anything is wrong the channel is broken for good and its transport
closed: every later call fails at once with the same error.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

import msgspec

from edgerun.sandbox.protocol import _HEADER, MAX_FRAME, FrameError, FromSandbox, _from_sandbox

_NO_FRAME = object()
MAX_UNASKED = 64 * 1024
"""The largest frame taken while no call waits: a start-up hello, never a reply. A
sandbox could otherwise park megabytes in the node between its calls."""


class ChannelClosed(ConnectionError):
    """The sandbox closed its end (it exited, crashed or was killed)."""


class FrameChannel(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._need = -1
        """Payload bytes the frame being read still needs; -1 while reading a header."""
        self._waiter: asyncio.Future[FromSandbox] | None = None
        self._early: Any = _NO_FRAME
        """A frame that arrived before anyone asked for it (a start-up hello may)."""
        self._error: BaseException | None = None

    # --- asyncio.Protocol ---------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return
        buf = self._buf
        buf += data
        while True:
            if self._need < 0:
                if len(buf) < _HEADER.size:
                    return
                (length,) = _HEADER.unpack_from(buf)
                if length > MAX_FRAME:
                    self._break(
                        FrameError(f"frame of {length} bytes is over the {MAX_FRAME}-byte limit")
                    )
                    return
                if length > MAX_UNASKED and self._waiter is None:
                    self._break(FrameError(f"the sandbox sent {length} bytes nobody asked for"))
                    return
                del buf[: _HEADER.size]
                self._need = length
            if len(buf) < self._need:
                return
            try:
                msg = _decode_in_place(buf, self._need)
            except (
                msgspec.DecodeError,
                msgspec.ValidationError,
                UnicodeDecodeError,
                RecursionError,
            ) as exc:
                self._break(FrameError(f"malformed frame: {exc}"))
                return
            del buf[: self._need]
            self._need = -1
            self._deliver(msg)
            if self._error is not None:
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self._break(ChannelClosed("the sandbox closed its channel"))

    # --- the node's side ---------------------------------------------------------
    @property
    def broken(self) -> bool:
        return self._error is not None

    @property
    def held(self) -> bool:
        """Whether a frame arrived before anyone asked for it (and waits for the next call)."""
        return self._early is not _NO_FRAME

    async def request(self, frame: bytes, timeout_s: float) -> FromSandbox:
        """Send one frame and wait for the one that answers it."""
        self.send(frame)
        return await self.receive(timeout_s)

    def send(self, frame: bytes) -> None:
        if self._error is not None:
            raise self._error
        assert self._transport is not None
        self._transport.write(frame)

    async def receive(self, timeout_s: float) -> FromSandbox:
        """The next frame; TimeoutError after ``timeout_s`` (the channel stays usable
        only if the caller does not go on, so callers stop the sandbox on a timeout)."""
        if self._error is not None:
            raise self._error
        if self._early is not _NO_FRAME:
            msg: FromSandbox = self._early
            self._early = _NO_FRAME
            return msg
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[FromSandbox] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(timeout_s, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def close(self) -> None:
        self._break(ChannelClosed("the channel was closed"))

    # --- internals -----------------------------------------------------------------
    def _deliver(self, msg: FromSandbox) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(msg)
        elif self._early is _NO_FRAME:
            self._early = msg
        else:
            self._break(FrameError("the sandbox sent frames nobody asked for"))

    def _break(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
            self._buf.clear()
            self._early = _NO_FRAME
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_exception(self._error)
        if self._transport is not None:
            self._transport.close()


def _decode_in_place(buf: bytearray, length: int) -> FromSandbox:
    """Decode the frame at the start of ``buf`` without copying it; every view on the
    buffer is released before returning, so it can be trimmed (or cleared) after."""
    with memoryview(buf) as view, view[:length] as frame:
        msg: FromSandbox = _from_sandbox.decode(frame)
    return msg


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


async def open_channel(sock: socket.socket) -> FrameChannel:
    """Take over a connected Unix stream socket as a frame channel."""
    loop = asyncio.get_running_loop()
    _, channel = await loop.create_unix_connection(FrameChannel, sock=sock)
    return channel
