"""The popularity exchange between a node's workers and their supervisor."""

from __future__ import annotations

import socket

import anyio
import msgspec
import pytest

from edgerun.node.workers import HitsLink, _chunks

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

    link = HitsLink(worker_end.detach(), take, merged.append)
    supervisor_end.sendall(msgspec.msgpack.encode({"g": 5}))
    async with anyio.create_task_group() as tg:
        tg.start_soon(link.run)
        with anyio.fail_after(5):
            while not merged:
                await anyio.sleep(0.01)
            sent = await anyio.to_thread.run_sync(supervisor_end.recv, 65536)
        tg.cancel_scope.cancel()
    assert merged == [{"g": 5}]
    assert msgspec.msgpack.decode(sent) == {"f": 3}
    supervisor_end.close()


async def test_a_malformed_message_is_dropped_not_fatal() -> None:
    worker_end, supervisor_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    merged: list[dict[str, int]] = []
    link = HitsLink(worker_end.detach(), dict, merged.append)
    supervisor_end.sendall(b"\xc1not msgpack")
    supervisor_end.sendall(msgspec.msgpack.encode({"ok": 1}))
    async with anyio.create_task_group() as tg:
        tg.start_soon(link.run)
        with anyio.fail_after(5):
            while not merged:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert merged == [{"ok": 1}]
    supervisor_end.close()


def test_many_functions_travel_in_packets_that_fit() -> None:
    hits = {f"function-{i:05d}-{'x' * 50}": i for i in range(2000)}
    packets = _chunks(hits)
    assert all(len(p) < 65536 for p in packets)
    merged: dict[str, int] = {}
    for p in packets:
        merged.update(msgspec.msgpack.decode(p))
    assert merged == hits
