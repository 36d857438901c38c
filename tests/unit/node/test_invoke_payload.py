"""A direct invocation's payload: what is refused with a 400 before it reaches a sandbox."""

from __future__ import annotations

import msgspec
import pytest

from edgerun.errors import ApiError
from edgerun.node.invoke import _decode_payload
from edgerun.sandbox.protocol import Invoke, encode_frame


def refused(body: bytes) -> str:
    with pytest.raises(ApiError) as exc:
        _decode_payload(body)
    assert exc.value.status == 400
    return exc.value.message


@pytest.mark.parametrize(
    "body",
    [
        b"18446744073709551616",
        b"-9223372036854775809",
        b'{"a": [1, {"b": 1e2, "c": -256646411572052582465536}]}',
    ],
)
def test_an_integer_past_64_bits_is_a_400_not_a_500(body: bytes) -> None:
    """JSON allows it but msgpack (the sandbox protocol) cannot carry it; found by tests/fuzz."""
    assert "integer outside" in refused(body)


@pytest.mark.parametrize(
    "body",
    [
        b"18446744073709551615",
        b"-9223372036854775808",
        b'{"id": "12345678901234567890123", "n": 1.5e300}',  # long digits in a string, a float
        b"[1234567890123456789, -1234567890123456789]",
    ],
)
def test_payloads_that_fit_are_passed_on(body: bytes) -> None:
    event = _decode_payload(body)
    assert event == msgspec.json.decode(body)
    encode_frame(Invoke(id="1", mode="direct", event=event, timeout_s=1.0))


def test_invalid_utf8_in_a_payload_string_is_a_400_not_a_500() -> None:
    assert "not valid UTF-8" in refused(b'{"a": "\xff"}')
