"""The popularity exchange between a node's workers and their supervisor."""

from __future__ import annotations

import socket

import anyio
import msgspec
import pytest

from edgerun.node.workers import HitsLink, hits_only
from edgerun.sandbox.broker import Hits, Link, hits_packets

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_worker_sends_its_hits_and_counts_what_it_receives() -> None:
    worker_end, supervisor_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    outbox = {"f": 3}
    merged: list[dict[str, int]] = []

    def take() -> dict[str, int]:
        nonlocal outbox
        out, outbox = outbox, {}
        return out

    link = Link(worker_end, hits_only(merged.append))
    link.start()
    supervisor_end.sendall(msgspec.msgpack.encode(Hits({"g": 5})))
    async with anyio.create_task_group() as tg:
        tg.start_soon(HitsLink(link.send, take).run)
        with anyio.fail_after(5):
            while not merged:
                await anyio.sleep(0.01)
            sent = await anyio.to_thread.run_sync(supervisor_end.recv, 65536)
        tg.cancel_scope.cancel()
    assert merged == [{"g": 5}]
    assert msgspec.msgpack.decode(sent, type=Hits).hits == {"f": 3}
    link.close()
    supervisor_end.close()


async def test_a_malformed_message_is_dropped_not_fatal() -> None:
    worker_end, supervisor_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    merged: list[dict[str, int]] = []
    link = Link(worker_end, hits_only(merged.append))
    link.start()
    supervisor_end.sendall(b"\xc1not msgpack")
    supervisor_end.sendall(msgspec.msgpack.encode(Hits({"ok": 1})))
    with anyio.fail_after(5):
        while not merged:
            await anyio.sleep(0.01)
    assert merged == [{"ok": 1}]
    assert not link.closed
    link.close()
    supervisor_end.close()


async def test_a_closed_peer_closes_the_link() -> None:
    worker_end, supervisor_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    closed: list[bool] = []
    link = Link(worker_end, hits_only(lambda _h: None))
    link.on_close = lambda: closed.append(True)
    link.start()
    supervisor_end.close()
    with anyio.fail_after(5):
        while not closed:
            await anyio.sleep(0.01)
    assert link.closed
    assert link.send(Hits({"f": 1})) is False


def test_many_functions_travel_in_packets_that_fit() -> None:
    hits = {f"function-{i:05d}-{'x' * 50}": i for i in range(2000)}
    packets = [msgspec.msgpack.encode(m) for m in hits_packets(hits)]
    assert all(len(p) < 65536 for p in packets)
    merged: dict[str, int] = {}
    for p in packets:
        merged.update(msgspec.msgpack.decode(p, type=Hits).hits)
    assert merged == hits
