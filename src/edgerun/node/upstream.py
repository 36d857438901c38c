"""A lean HTTP/1.1 client for the forwards from a POP to its regions.

Forwarding is the hot path of every request a POP does not run itself, and a
general client spends most of a forward's CPU on what a forward never needs
(cookies, redirects, payload abstractions, per-request tasks): measured in
bench/RESULTS.md, aiohttp's client was 42% of a forwarding POP's event loop.
This one does one thing: keep-alive connections per region, the request
written in one piece, the response parsed by httptools (the parser uvicorn
serves with) straight into a future.

Errors say whether the request can have run: :class:`NotSent` (no connection
could be made: fail over freely) or :class:`Broken` (it was sent, no whole
answer came back). Idle connections are dropped after ``max_idle_s``, under
the 5 s a uvicorn server keeps them, so a pooled connection is not reused as
the server closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools


class NotSent(Exception):
    """No connection could be made: the request cannot have run."""


class Broken(Exception):
    """The request was sent and no whole answer came back: it may have run."""


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]]
    """Lower-cased names, in order, repeats kept."""
    body: bytes


_BAD_HEADER_CHARS = ("\r", "\n", "\0")
_MAX_HEADER_BYTES = 64 * 1024
_NOT_PASSED = frozenset({"host", "content-length", "transfer-encoding", "connection", "expect"})
"""Set here (framing) or meaningless for a body sent whole (``expect``: a 100
Continue would come back as an answer of its own)."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = time.monotonic()
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._size = 0
        self._status = 0
        self._head_only = False
        self._answered = False

    # --- asyncio.Protocol --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the connection is unusable
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(Broken("the region answered with a protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(Broken(f"the region's answer is not valid HTTP ({exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(Broken("the region closed the connection before answering"))

    # --- httptools callbacks --------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._answered:  # bytes after the answer: never reuse this connection
            self._fail(Broken("the region sent more than one answer"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > _MAX_HEADER_BYTES:
            self._fail(Broken(f"the region's answer has over {_MAX_HEADER_BYTES} header bytes"))
            return
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        if self._head_only and not self._interim:
            self._complete(keep_alive=False)  # a HEAD answer has no body, whatever it says

    @property
    def _interim(self) -> bool:
        """A 1xx answer (100 Continue...): the final one follows on the same connection."""
        return 100 <= self._status < 200

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_body:
            self._fail(Broken(f"the region's answer is over {self._max_body} bytes"))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._headers, self._header_bytes, self._body, self._size = [], 0, [], 0
            self._status = 0
            return
        self._complete(keep_alive=self._parser.should_keep_alive())

    # --- requests ---------------------------------------------------------------------
    def _complete(self, *, keep_alive: bool) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        self._answered = True
        waiter.set_result(Response(self._status, list(self._headers), b"".join(self._body)))
        if not keep_alive:
            self.close()

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def send(self, request: bytes, *, head: bool, timeout_s: float) -> Response:
        assert self.transport is not None and self._waiter is None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Response] = loop.create_future()
        self._waiter = waiter
        self._head_only = head
        self._parser = httptools.HttpResponseParser(self)
        timer = loop.call_later(timeout_s, self._time_out, timeout_s)
        try:
            self.transport.write(request)
            return await waiter
        finally:
            timer.cancel()
            self._reset()
            self.idle_since = time.monotonic()

    def _time_out(self, timeout_s: float) -> None:
        self._fail(TimeoutError(f"the region did not answer within {timeout_s:g} s"))


class Upstream:
    """Keep-alive HTTP/1.1 connections to a POP's regions (see module doc)."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_body: int = 64 * 1024 * 1024,
        max_idle: int = 64,
        max_idle_s: float = 4.0,
        max_per_origin: int = 128,
    ) -> None:
        """``max_per_origin``: connections open to one region at most (more requests
        wait for one, within their deadline)."""
        self._ssl = ssl_context
        self._max_per_origin = max_per_origin
        self._slots: dict[tuple[str, str, int], asyncio.Semaphore] = {}
        self._max_body = max_body
        self._max_idle = max_idle
        self._max_idle_s = max_idle_s
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        timeout_s: float,
        connect_timeout_s: float = 1.0,
    ) -> Response:
        """Send one request and read its whole answer (raises NotSent, Broken or
        TimeoutError, the last when the request was sent)."""
        parts = urlsplit(url)
        scheme, host = parts.scheme, parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        request = _serialise(method, target, parts.netloc, headers, body)
        origin = (scheme, host, port)
        deadline = time.monotonic() + timeout_s
        slots = self._slots.get(origin)
        if slots is None:
            slots = self._slots[origin] = asyncio.Semaphore(self._max_per_origin)
        try:
            await asyncio.wait_for(slots.acquire(), timeout_s)
        except TimeoutError:
            raise NotSent(f"no free connection to {host}:{port} within {timeout_s:g} s") from None
        try:
            # Never sent twice, not even after a reused connection failed: the region
            # may have read it before closing (idle ones are dropped before it would).
            conn = self._pooled(origin) or await self._connect(origin, connect_timeout_s)
            return await self._exchange(origin, conn, request, method, deadline)
        finally:
            slots.release()

    async def _exchange(
        self,
        origin: tuple[str, str, int],
        conn: _Connection,
        request: bytes,
        method: str,
        deadline: float,
    ) -> Response:
        try:
            response = await conn.send(
                request, head=method == "HEAD", timeout_s=max(0.001, deadline - time.monotonic())
            )
        except BaseException:
            conn.close()  # cancelled or failed mid-exchange: its state is unknown
            raise
        if not conn.closed:
            self._park(origin, conn)
        return response

    def _pooled(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            transport = conn.transport
            fresh = now - conn.idle_since < self._max_idle_s
            if not conn.closed and fresh and transport is not None and not transport.is_closing():
                return conn
            conn.close()
        return None

    def _park(self, origin: tuple[str, str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if self._closed or len(idle) >= self._max_idle:
            conn.close()
            return
        idle.append(conn)

    async def _connect(self, origin: tuple[str, str, int], timeout_s: float) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        tls = None
        if scheme == "https":
            tls = self._ssl or ssl.create_default_context()
        try:
            _transport, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self._max_body),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=host if tls else None,
                ),
                timeout_s,
            )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise NotSent(
                f"cannot connect to {host}:{port} ({type(exc).__name__}: {exc})"
            ) from None
        return conn

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)  # let transports finish closing


def _serialise(
    method: str, target: str, netloc: str, headers: list[tuple[str, str]], body: bytes
) -> bytes:
    """The request in one buffer; a header that could split the request is refused."""
    lines = [f"{method} {target} HTTP/1.1", f"host: {netloc}", f"content-length: {len(body)}"]
    for name, value in headers:
        if any(c in name or c in value for c in _BAD_HEADER_CHARS) or ":" in name:
            raise ValueError(f"header {name!r} holds a character HTTP/1.1 forbids")
        if name.lower() in _NOT_PASSED:
            continue
        lines.append(f"{name}: {value}")
    lines.append("")
    lines.append("")
    return "\r\n".join(lines).encode("latin-1") + body
