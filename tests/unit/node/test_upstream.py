"""The forwarding client against real sockets on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from edgerun.node.upstream import Broken, NotSent, Upstream

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(params=[{}, {"use_uvloop": True}], ids=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return "asyncio", request.param  # the nodes run on uvloop


class Server:
    """A tiny HTTP/1.1 server whose answers each test scripts."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def keep_alive(body: bytes = b"hello", status: str = "200 OK") -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            head = f"HTTP/1.1 {status}\r\ncontent-length: {len(body)}\r\n"
            writer.write(head.encode() + b"x-a: 1\r\nx-a: 2\r\n\r\n" + body)
            await writer.drain()

    return handler


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    u = Upstream(max_body=1024)
    yield u
    await u.close()


async def test_an_answer_comes_back_whole_with_repeated_headers_in_order(
    upstream: Upstream,
) -> None:
    async with Server(keep_alive(b"hi there")) as server:
        resp = await upstream.request("POST", server.url("/a?b=c"), [], b"body", timeout_s=5)
    assert (resp.status, resp.body) == (200, b"hi there")
    assert [v for k, v in resp.headers if k == "x-a"] == ["1", "2"]


async def test_the_request_carries_its_target_headers_and_body() -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    async with Server(record) as server:
        u = Upstream()
        resp = await u.request("PUT", server.url("/x?y=1"), [("x-k", "v")], b"abc", timeout_s=5)
        await u.close()
    assert resp.status == 204
    assert seen[0].startswith(b"PUT /x?y=1 HTTP/1.1\r\n")
    assert b"\r\nx-k: v\r\n" in seen[0]
    assert seen[0].endswith(b"\r\n\r\nabc")


async def test_a_connection_is_kept_and_reused(upstream: Upstream) -> None:
    async with Server(keep_alive()) as server:
        for _ in range(5):
            await upstream.request("GET", server.url(), [], b"", timeout_s=5)
    assert server.connections == 1


async def test_a_connection_idle_too_long_is_not_reused() -> None:
    async with Server(keep_alive()) as server:
        u = Upstream(max_idle_s=0.0)
        await u.request("GET", server.url(), [], b"", timeout_s=5)
        await u.request("GET", server.url(), [], b"", timeout_s=5)
        await u.close()
    assert server.connections == 2


async def test_a_chunked_answer_is_decoded(upstream: Upstream) -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        await writer.drain()
        await reader.read()

    async with Server(chunked) as server:
        resp = await upstream.request("GET", server.url(), [], b"", timeout_s=5)
    assert resp.body == b"abcde"


async def test_a_head_answer_does_not_wait_for_a_body(upstream: Upstream) -> None:
    async def head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with Server(head) as server:
        resp = await asyncio.wait_for(
            upstream.request("HEAD", server.url(), [], b"", timeout_s=5), 3
        )
    assert (resp.status, resp.body) == (200, b"")


async def test_a_refused_connection_is_not_sent(upstream: Upstream) -> None:
    async with Server(keep_alive()) as server:
        port = server.port
    with pytest.raises(NotSent):
        await upstream.request("GET", f"http://127.0.0.1:{port}/", [], b"", timeout_s=5)


async def test_a_close_before_the_answer_is_broken(upstream: Upstream) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with Server(hang_up) as server:
        with pytest.raises(Broken):
            await upstream.request("GET", server.url(), [], b"", timeout_s=5)


async def test_no_answer_in_time_is_a_timeout(upstream: Upstream) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(10)

    async with Server(silent) as server:
        with pytest.raises(TimeoutError):
            await upstream.request("GET", server.url(), [], b"", timeout_s=0.2)


async def test_an_answer_over_the_limit_is_broken(upstream: Upstream) -> None:
    async with Server(keep_alive(b"x" * 4096)) as server:
        with pytest.raises(Broken, match="over 1024 bytes"):
            await upstream.request("GET", server.url(), [], b"", timeout_s=5)


async def test_garbage_for_an_answer_is_broken(upstream: Upstream) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with Server(garbage) as server:
        with pytest.raises(Broken):
            await upstream.request("GET", server.url(), [], b"", timeout_s=5)


@pytest.mark.parametrize(
    "header", [("x-a", "b\r\nx-injected: 1"), ("x-a\r\nx", "b"), ("x:y", "b"), ("x", "a\0b")]
)
async def test_a_header_that_could_split_the_request_is_refused(
    upstream: Upstream, header: tuple[str, str]
) -> None:
    with pytest.raises(ValueError, match="forbids"):
        await upstream.request("GET", "http://127.0.0.1:9/", [header], b"", timeout_s=5)


async def test_an_interim_answer_is_skipped_and_never_taken_for_the_next_request(
    upstream: Upstream,
) -> None:
    async def continues(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        while True:
            await read_request(reader)
            n += 1
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)
            body = f"answer-{n}".encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()

    async with Server(continues) as server:
        first = await upstream.request("POST", server.url(), [], b"a", timeout_s=5)
        second = await upstream.request("POST", server.url(), [], b"b", timeout_s=5)
    assert (first.status, first.body) == (200, b"answer-1")
    assert (second.status, second.body) == (200, b"answer-2")


async def test_expect_is_not_passed_on() -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()

    async with Server(record) as server:
        u = Upstream()
        await u.request("POST", server.url(), [("Expect", "100-continue")], b"x", timeout_s=5)
        await u.close()
    assert b"expect" not in seen[0].lower()


async def test_a_connection_with_bytes_after_the_answer_is_not_reused(upstream: Upstream) -> None:
    async def two_answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nA"
                b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecret"
            )
            await writer.drain()

    async with Server(two_answers) as server:
        first = await upstream.request("GET", server.url(), [], b"", timeout_s=5)
        second = await upstream.request("GET", server.url(), [], b"", timeout_s=5)
    assert first.body == b"A"
    assert second.body == b"A"  # from a new connection, never the smuggled "secret"
    assert server.connections == 2


async def test_headers_over_the_limit_are_broken(upstream: Upstream) -> None:
    async def big_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 70_000 + b"\r\ncontent-length: 0\r\n\r\n"
        )
        await writer.drain()
        await reader.read()

    async with Server(big_headers) as server:
        with pytest.raises(Broken, match="header bytes"):
            await upstream.request("GET", server.url(), [], b"", timeout_s=5)


async def test_connections_to_one_region_are_capped() -> None:
    open_now = 0
    most = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, most
        open_now += 1
        most = max(most, open_now)
        try:
            while True:
                await read_request(reader)
                await asyncio.sleep(0.02)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        finally:
            open_now -= 1

    async with Server(slow) as server:
        u = Upstream(max_per_origin=3)
        await asyncio.gather(
            *(u.request("GET", server.url(), [], b"", timeout_s=5) for _ in range(12))
        )
        await u.close()
    assert most <= 3
    assert server.connections == 3


async def test_a_cancelled_request_does_not_leave_its_connection_for_the_next(
    upstream: Upstream,
) -> None:
    async def late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = 0
        while True:
            await read_request(reader)
            n += 1
            await asyncio.sleep(0.2 if n == 1 else 0)
            body = f"for-{n}".encode()
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()

    async with Server(late) as server:
        task = asyncio.ensure_future(upstream.request("GET", server.url(), [], b"", timeout_s=5))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        resp = await upstream.request("GET", server.url(), [], b"", timeout_s=5)
    assert resp.body == b"for-1"  # a new connection's first request, not the old answer
