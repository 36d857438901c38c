"""uvicorn's httptools protocol with the limits it lacks: read deadlines and a head size.

uvicorn closes idle keep-alive connections but puts no deadline on reading a
request, so a client that sends half a request line holds a connection (and
a descriptor) forever. :class:`GuardedProtocol` arms a timer when a
connection opens or a request starts, which the last header disarms; a
second timer bounds the body. It also refuses a request head (request line
and headers) larger than ``max_header_bytes`` before the parser has buffered
it, since httptools itself has no bound. The node's front checks the parsed
headers again (count and size) for heads that arrive in one piece.
"""

from __future__ import annotations

import asyncio
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

    @classmethod
    def of(cls, cfg: NodeConfig) -> Limits:
        return cls(cfg.header_timeout_s, cfg.body_timeout_s, cfg.max_header_bytes)


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
        self._discarding = False

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

    def _expire(self, what: str) -> None:
        self._deadline = None
        if self._in_head:
            self._refuse(408, "Request Timeout", "RequestTimeout", f"the {what} took too long")
        else:  # the app is reading the body: closing makes it see a disconnect
            self.transport.close()

    def _refuse(self, status: int, reason: str, type: str, message: str) -> None:
        """Answer (unless a response is already under way) and close the connection.

        What the client is still sending is read and dropped for a moment (a
        lingering close), so that closing does not reset the connection before
        the client has read the answer.
        """
        if self.transport.is_closing() or self._discarding:
            return
        self._disarm()
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()
            return
        self._discarding = True
        self.transport.write(error_bytes(status, reason, type, message))
        self.transport.write_eof()
        self.loop.call_later(1.0, self.transport.close)

    # --- asyncio.Protocol and parser callbacks ---------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm(self.limits.header_timeout_s, "request's headers")

    def eof_received(self) -> None:
        if self._discarding:
            self.transport.close()
            return
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.limits.max_header_bytes:
            self._refuse(
                431,
                "Request Header Fields Too Large",
                "HeadersTooLarge",
                f"the request's headers are larger than {self.limits.max_header_bytes} bytes",
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a connection's first request keeps its first deadline
            self._arm(self.limits.header_timeout_s, "request's headers")

    def on_headers_complete(self) -> None:
        self._in_head = False
        # One second after the front's own body deadline, which answers a JSON 408.
        self._arm(self.limits.body_timeout_s + 1.0, "request's body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_head, self._head_bytes = True, 0
        super().on_message_complete()
