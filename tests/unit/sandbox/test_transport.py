"""The node's end of a sandbox channel, against a peer that sends whatever it likes."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest

from edgerun.sandbox.base import SandboxSpec
from edgerun.sandbox.channel import ChannelSandbox
from edgerun.sandbox.protocol import MAX_FRAME, FrameError, Ready, Result, encode_frame
from edgerun.sandbox.transport import MAX_UNASKED, ChannelClosed, FrameChannel, open_channel

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FrameChannel, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = await open_channel(ours)
    try:
        yield channel, theirs
    finally:
        channel.close()
        theirs.close()


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.001)


def result(i: int) -> bytes:
    return encode_frame(Result(id=str(i), status=200, headers=[], body=b"ok"))


async def test_a_frame_split_across_reads_is_one_reply(
    pair: tuple[FrameChannel, socket.socket],
) -> None:
    channel, peer = pair
    frame = result(1)
    waiting = asyncio.ensure_future(channel.receive(5.0))
    for i in range(len(frame)):
        peer.send(frame[i : i + 1])
        await asyncio.sleep(0)
    reply = await waiting
    assert isinstance(reply, Result) and reply.id == "1"


async def test_a_frame_sent_before_anyone_asks_is_kept_for_the_next_call(
    pair: tuple[FrameChannel, socket.socket],
) -> None:
    channel, peer = pair
    peer.send(encode_frame(Ready(pid=1)))
    await until(lambda: channel.held)
    assert isinstance(await channel.receive(5.0), Ready)


async def test_frames_nobody_asked_for_break_the_channel(
    pair: tuple[FrameChannel, socket.socket],
) -> None:
    channel, peer = pair
    peer.send(result(1) + result(2))
    await until(lambda: channel.broken)
    with pytest.raises(FrameError):
        await channel.receive(5.0)
    assert channel.broken


async def test_an_oversized_length_is_refused_before_anything_is_buffered(
    pair: tuple[FrameChannel, socket.socket],
) -> None:
    channel, peer = pair
    peer.send(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(FrameError, match="over the"):
        await channel.receive(5.0)
    with pytest.raises(FrameError):
        channel.send(b"x")  # broken for good


async def test_a_malformed_frame_is_a_frame_error(pair: tuple[FrameChannel, socket.socket]) -> None:
    channel, peer = pair
    body = msgspec.msgpack.encode({"type": "result", "id": 1})
    peer.send(struct.pack(">I", len(body)) + body)
    with pytest.raises(FrameError, match="malformed"):
        await channel.receive(5.0)


async def test_a_peer_that_goes_away_fails_the_waiting_call(
    pair: tuple[FrameChannel, socket.socket],
) -> None:
    channel, peer = pair
    waiting = asyncio.ensure_future(channel.receive(5.0))
    await asyncio.sleep(0)
    peer.send(result(1)[:3])
    peer.close()
    with pytest.raises(ChannelClosed):
        await waiting


async def test_a_silent_peer_times_out(pair: tuple[FrameChannel, socket.socket]) -> None:
    channel, _ = pair
    with pytest.raises(TimeoutError):
        await channel.receive(0.05)


async def test_a_request_writes_the_frame_and_returns_the_answer(
    pair: tuple[FrameChannel, socket.socket],
) -> None:
    channel, peer = pair
    peer.setblocking(False)
    loop = asyncio.get_running_loop()

    async def echo_once() -> None:
        data = await loop.sock_recv(peer, 65536)
        assert data == b"ping"
        await loop.sock_sendall(peer, result(7))

    answering = asyncio.ensure_future(echo_once())
    reply = await channel.request(b"ping", 5.0)
    await answering
    assert isinstance(reply, Result) and reply.id == "7"


async def test_a_large_frame_nobody_asked_for_breaks_the_channel_before_it_is_read(
    pair: tuple[FrameChannel, socket.socket],
) -> None:
    channel, peer = pair
    peer.send(struct.pack(">I", MAX_UNASKED + 1))  # its bytes never need to arrive
    await until(lambda: channel.broken)
    with pytest.raises(FrameError, match="nobody asked for"):
        await channel.receive(5.0)


async def test_a_frame_nested_past_the_recursion_limit_is_a_frame_error(
    pair: tuple[FrameChannel, socket.socket],
) -> None:
    channel, peer = pair
    head = msgspec.msgpack.encode({"type": "result", "id": "1", "status": 200, "headers": []})
    deep = b"\\x81" + head[1:]  # placeholder, replaced below
    body = bytearray(head)
    body[0] += 1  # one more key in the map
    body += msgspec.msgpack.encode("x") + b"\\x91" * 200_000 + b"\\xc0"
    deep = bytes(body)
    waiting = asyncio.ensure_future(channel.receive(5.0))
    peer.setblocking(False)
    await asyncio.get_running_loop().sock_sendall(peer, struct.pack(">I", len(deep)) + deep)
    with pytest.raises(FrameError, match="malformed"):
        await waiting


async def test_a_sandbox_whose_channel_broke_is_no_longer_alive(
    pair: tuple[FrameChannel, socket.socket], tmp_path: Path
) -> None:
    channel, peer = pair
    spec = SandboxSpec(function="f", version="v", handler="m.h", bundle_dir=tmp_path,
                       memory_mb=64, timeout_s=1.0)  # fmt: skip
    sandbox = ChannelSandbox(spec, channel)
    assert sandbox.alive
    peer.send(struct.pack(">I", MAX_FRAME + 1))
    await until(lambda: channel.broken)
    assert not sandbox.alive  # the pool drops it instead of handing it to the next call
