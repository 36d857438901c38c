"""Request parsing shared by every API: numbers, content-length, JSON depth (issue 8: 16, 17)."""

from __future__ import annotations

import pytest

from edgerun.errors import ApiError
from edgerun.http import (
    MAX_JSON_DEPTH,
    check_content_length,
    decode_json,
    json_depth,
    parse_int,
    query_int,
)


def bad(fn: object, *args: object, **kw: object) -> ApiError:
    with pytest.raises(ApiError) as exc:
        fn(*args, **kw)  # type: ignore[operator]
    assert exc.value.status == 400
    return exc.value


@pytest.mark.parametrize(
    "raw",
    ["\u00b2", "\u00b9", "\u0661", "\uff11", "1_000", " 1", "1 ", "+1", "-1", "", "1e3", "0x10"],
)
def test_only_ascii_digits_are_integers(raw: str) -> None:
    assert "ASCII digits" in bad(parse_int, raw, "wait", lo=0, hi=60).message


@pytest.mark.parametrize("raw", ["100000000000000000000000", "61", "9" * 5000])
def test_integers_out_of_range_are_400(raw: str) -> None:
    assert "between 0 and 60" in bad(parse_int, raw, "wait", lo=0, hi=60).message


def test_query_int_reads_defaults_and_bounds() -> None:
    assert query_int({}, "limit", 100, lo=1, hi=1000) == 100
    assert query_int({"limit": "007"}, "limit", 100, lo=1, hi=1000) == 7
    err = bad(query_int, {"limit": "0"}, "limit", 100, lo=1, hi=1000)
    assert "'limit'" in err.message


def test_content_length_must_be_ascii_digits() -> None:
    bad(check_content_length, "\u00b2", 100)
    bad(check_content_length, "1_0", 100)
    check_content_length("100", 100)
    with pytest.raises(ApiError) as exc:
        check_content_length("1" * 40, 100)
    assert exc.value.status == 413


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 100_000])
def test_deep_json_is_a_400_not_a_recursion_error(depth: int) -> None:
    body = b'{"a": ' * depth + b"1" + b"}" * depth
    assert "deeper" in bad(decode_json, body).message


def test_json_at_the_depth_limit_is_fine() -> None:
    body = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert decode_json(body) is not None


@pytest.mark.parametrize(
    ("data", "depth"),
    [
        (b"1", 0),
        (b"[[],[[]]]", 3),
        (b'{"a": "[[[[{{{{"}', 1),
        (b'["\\\\", ["\\"[", "]"]]', 2),
        (b'["\\\\\\"[[["]', 1),
    ],
)
def test_json_depth_ignores_brackets_in_strings(data: bytes, depth: int) -> None:
    assert json_depth(data) == depth


@pytest.mark.parametrize(
    "body", [b'"\xff"', b'{"name": "e\x91o"}', b'{"k\xc0y": 1}', b'["\xed\xa0\x80"]']
)
def test_invalid_utf8_in_a_json_string_is_a_400_not_a_500(body: bytes) -> None:
    """msgspec raises UnicodeDecodeError (not DecodeError) for these; found by tests/fuzz."""
    assert "not valid UTF-8" in bad(decode_json, body).message
