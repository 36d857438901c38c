"""IPC between a node and a sandbox: length-prefixed msgpack frames.

Each frame is a 4-byte big-endian length followed by one msgspec-encoded
message. The node sends :class:`Invoke`; the sandbox answers with exactly
one :class:`Result` or :class:`Failure` per invoke, after a single
:class:`Ready` or :class:`InitFailed` when it starts.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any, Literal

import msgspec

MAX_FRAME = 16 * 1024 * 1024
"""A request or reply: the 6 MB payload limit, its captured output and room to spare."""
_HEADER = struct.Struct(">I")


class ErrorInfo(msgspec.Struct, kw_only=True):
    type: str
    message: str
    traceback: list[str] = msgspec.field(default_factory=list)


class Invoke(msgspec.Struct, tag="invoke", kw_only=True, omit_defaults=True):
    id: str
    mode: Literal["http", "direct"]
    event: Any
    timeout_s: float
    traceparent: str | None = None
    """W3C trace context for the handler's context (node to sandbox only; checked
    on the node, see :mod:`edgerun.tracing`). Left out of the frame when unset."""
    tracestate: str | None = None
    qualifier: str | None = None
    """The alias or version the caller named, for the context's invoked_function_arn."""


class Ready(msgspec.Struct, tag="ready", kw_only=True):
    pid: int


class InitFailed(msgspec.Struct, tag="init_failed", kw_only=True):
    error: ErrorInfo


class Result(msgspec.Struct, tag="result", kw_only=True):
    id: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    logs: str = ""


class Failure(msgspec.Struct, tag="failure", kw_only=True):
    id: str
    error: ErrorInfo
    logs: str = ""


ToSandbox = Invoke
FromSandbox = Ready | InitFailed | Result | Failure

_encoder = msgspec.msgpack.Encoder()
_to_sandbox = msgspec.msgpack.Decoder(ToSandbox)
_from_sandbox = msgspec.msgpack.Decoder(FromSandbox)


class FrameError(Exception):
    pass


def encode_frame(msg: msgspec.Struct) -> bytes:
    payload = _encoder.encode(msg)
    return _HEADER.pack(len(payload)) + payload


def _check_length(length: int) -> None:
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length} bytes is over the {MAX_FRAME}-byte limit")


async def read_from_sandbox(reader: asyncio.StreamReader) -> FromSandbox:
    (length,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    _check_length(length)
    try:
        msg: FromSandbox = _from_sandbox.decode(await reader.readexactly(length))
    except (
        msgspec.DecodeError,
        msgspec.ValidationError,
        UnicodeDecodeError,
        RecursionError,
    ) as exc:
        # msgspec raises UnicodeDecodeError for a string that is not UTF-8.
        raise FrameError(f"malformed frame: {exc}") from None
    return msg


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("node closed the channel")
        buf += chunk
    return bytes(buf)


def recv_invoke(sock: socket.socket) -> Invoke:
    (length,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
    _check_length(length)
    return _to_sandbox.decode(_recv_exactly(sock, length))


def send_frame(sock: socket.socket, msg: msgspec.Struct) -> None:
    sock.sendall(encode_frame(msg))
