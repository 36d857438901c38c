"""uvicorn's httptools protocol with the limits it lacks: read deadlines and a head size.

uvicorn closes idle keep-alive connections but puts no deadline on reading a
request, so a client that sends half a request line holds a connection (and
a descriptor) forever. :class:`GuardedProtocol` arms a timer when a
connection opens or a request starts, which the last header disarms; a
second timer bounds the body while it is being read (not while the request
waits behind another). The request line and headers are counted as the
parser reports them, and a head with more than ``max_headers`` headers or
``max_header_bytes`` bytes is refused as soon as it passes the limit; a
header still arriving is bounded too, since httptools buffers it whole.
Every refusal, malformed requests included, is a JSON error.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from edgerun.config import NodeConfig


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100

    @classmethod
    def of(cls, cfg: NodeConfig) -> Limits:
        return cls(cfg.header_timeout_s, cfg.body_timeout_s, cfg.max_header_bytes, cfg.max_headers)


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing a refused head."""


def error_bytes(status: int, reason: str, type: str, message: str) -> bytes:
    """A complete HTTP/1.1 answer with the JSON error body, that closes the connection."""
    body = msgspec.json.encode({"error": {"type": type, "message": message}})
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class GuardedProtocol(HttpToolsProtocol):
    limits = Limits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = True
        self._head_bytes = 0
        """Bytes of the current head the parser has reported (request line, headers)."""
        self._headers = 0
        self._partial = 0
        """Bytes received since the parser last reported part of the head: at most
        what it buffers of a header still arriving (uncounted until it completes)."""
        self._head_progress = False
        self._discarding = False
        self._refusal: bytes | None = None
        """A refusal waiting for the response under way to finish."""

    @classmethod
    def with_limits(cls, limits: Limits) -> type[GuardedProtocol]:
        return type("GuardedProtocol", (cls,), {"limits": limits})

    def _arm(self, seconds: float, expired: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire, expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _arm_body(self) -> None:
        # One second after the apps' own body deadline, which answers a JSON 408.
        self._arm(self.limits.body_timeout_s + 1.0, "request's body")

    def _expire(self, what: str) -> None:
        self._deadline = None
        if self._in_head:
            self._refuse(408, "Request Timeout", "RequestTimeout", f"the {what} took too long")
        else:  # the app is reading the body: closing makes it see a disconnect
            self.transport.close()

    def _refuse(self, status: int, reason: str, type: str, message: str) -> None:
        """Answer and close the connection; a response under way finishes first.

        What the client is still sending is read and dropped for a moment (a
        lingering close), so that closing does not reset the connection before
        the client has read the answer.
        """
        if self.transport.is_closing() or self._discarding:
            return
        self._disarm()
        self._discarding = True
        answer = error_bytes(status, reason, type, message)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if self._in_head:  # a pipelined request: answer after the one under way
                self._refusal = answer
                return
            if cycle.response_started or any(c is cycle for c, _ in self.pipeline):
                self.transport.close()  # an answer now would land inside another one
                return
            cycle.disconnected = True  # the app's answer to this request is dropped
            cycle.message_event.set()
        self._answer(answer)

    def _answer(self, answer: bytes) -> None:
        self.transport.write(answer)
        self.transport.write_eof()
        self.loop.call_later(1.0, self.transport.close)

    def _check_head(self, partial: int = 0) -> None:
        limits = self.limits
        if (
            self._headers > limits.max_headers
            or self._head_bytes + partial > limits.max_header_bytes
        ):
            self._refuse(
                431,
                "Request Header Fields Too Large",
                "HeadersTooLarge",
                f"a request may carry at most {limits.max_headers} headers of "
                f"{limits.max_header_bytes} bytes in all",
            )
            raise _HeadTooLarge

    def send_400_response(self, msg: str) -> None:
        """A malformed request (uvicorn answers text/plain): a JSON 400."""
        self._refuse(400, "Bad Request", "BadRequest", "the request is not valid HTTP/1.1")

    # --- asyncio.Protocol and parser callbacks ---------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm(self.limits.header_timeout_s, "request's headers")

    def eof_received(self) -> None:
        if self._discarding and self._refusal is None:
            self.transport.close()
            return
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        self._head_progress = False
        super().data_received(data)  # a refusal in a callback ends up in send_400_response
        if self._in_head and not self._discarding:
            self._partial = 0 if self._head_progress else self._partial + len(data)
            with contextlib.suppress(_HeadTooLarge):
                self._check_head(self._partial)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._headers = True, 0, 0
        self._head_progress = True
        if self._deadline is None:  # a connection's first request keeps its first deadline
            self._arm(self.limits.header_timeout_s, "request's headers")

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        self._head_progress = True
        self._check_head()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        self._headers += 1
        self._head_progress = True
        self._check_head()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        super().on_headers_complete()
        if not any(c is self.cycle for c, _ in self.pipeline):
            self._arm_body()  # a queued request's body is read (and timed) once it starts

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        queued = self.pipeline[-1][0] if self.pipeline else None
        super().on_response_complete()
        if queued is None:
            if self._refusal is not None and not self.transport.is_closing():
                self._answer(self._refusal)
        elif queued is self.cycle and queued.more_body:
            self._arm_body()  # it has started, and its body is still arriving
