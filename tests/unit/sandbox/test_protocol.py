"""Frames from a sandbox: whatever bytes arrive, the node sees a reply or a FrameError."""

from __future__ import annotations

import asyncio

import pytest

from edgerun.sandbox.protocol import FrameError, Result, encode_frame, read_from_sandbox


async def read(frame: bytes) -> object:
    reader = asyncio.StreamReader()
    reader.feed_data(frame)
    reader.feed_eof()
    return await read_from_sandbox(reader)


@pytest.mark.anyio
async def test_a_reply_is_read_back() -> None:
    reply = Result(id="1", status=200, headers=[], body=b"ok")
    assert await read(encode_frame(reply)) == reply


@pytest.mark.anyio
async def test_a_string_that_is_not_utf8_is_a_frame_error() -> None:
    """msgspec raises UnicodeDecodeError for it, which escaped as a 500 (the same class of
    bug tests/fuzz found in JSON bodies); a FrameError makes it a crashed sandbox (502)."""
    good = encode_frame(Result(id="abc", status=200, headers=[], body=b""))
    bad = good.replace(b"\xa3abc", b"\xa3\xff\xfe\xfd")
    assert bad != good
    with pytest.raises(FrameError):
        await read(bad)
