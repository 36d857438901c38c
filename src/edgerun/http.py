"""HTTP helpers shared by the control plane and node apps.

Every answer is JSON (msgspec-encoded), every failure has the shape of
:class:`edgerun.errors.ApiError`, and request bodies are read with a hard
limit so a large upload cannot exhaust a node's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from array import array
from collections.abc import AsyncIterator, Mapping
from itertools import accumulate
from typing import Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from edgerun.errors import ApiError, bad_request

log = logging.getLogger("edgerun.http")
_encode = msgspec.json.Encoder().encode

MAX_JSON_DEPTH = 256
"""Deepest nesting of arrays and objects accepted in a JSON body: far below
the interpreter's recursion limit, so decoding and re-encoding never fail."""
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encode(obj), status, headers=headers, media_type="application/json")


def error_response(err: ApiError, headers: dict[str, str] | None = None) -> Response:
    return json_response(err.body(), err.status, {**err.headers, **(headers or {})})


BODY_TIMEOUT_S = 60.0


async def read_body(request: Request, limit: int, timeout_s: float = BODY_TIMEOUT_S) -> bytes:
    """Read the request body, refusing with 413 once it passes ``limit`` bytes
    and with 408 if it takes longer than ``timeout_s`` to arrive."""
    check_content_length(request.headers.get("content-length"), limit)
    chunks: list[bytes] = []
    size = 0
    async with body_deadline(timeout_s):
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(limit)
            chunks.append(chunk)
    return b"".join(chunks)


@contextlib.asynccontextmanager
async def body_deadline(timeout_s: float) -> AsyncIterator[None]:
    """Turn reading a request's body for longer than ``timeout_s`` into a JSON 408."""
    try:
        async with asyncio.timeout(timeout_s):
            yield
    except TimeoutError:
        raise ApiError(
            408, "RequestTimeout", f"the request's body took longer than {timeout_s}s to arrive"
        ) from None


def check_content_length(length: str | None, limit: int) -> None:
    """Refuse a body by its declared size before reading any of it."""
    if length is None:
        return
    if length.isascii() and length.isdigit() and len(length) > 18:
        raise too_large(limit)
    if parse_int(length, "content-length", lo=0, hi=10**18) > limit:
        raise too_large(limit)


def parse_int(raw: str, what: str, *, lo: int, hi: int) -> int:
    """An integer in ``[lo, hi]`` written in ASCII digits, or a 400 saying what is wrong.

    ``str.isdigit`` alone accepts ``"²"`` and ``int`` accepts ``"1_000"`` and
    ``" 1"``; neither belongs in a request, so only ``[0-9]+`` is read.
    """
    if not raw or not raw.isascii() or not raw.isdigit():
        raise bad_request(f"{what} must be an integer in ASCII digits, got {raw[:40]!r}")
    if len(raw) > len(str(hi)) or not lo <= int(raw) <= hi:
        raise bad_request(f"{what} must be between {lo} and {hi}, got {raw[:40]}")
    return int(raw)


FLAG_VALUES = {"true": True, "1": True, "false": False, "0": False}


def query_flag(params: Mapping[str, str], key: str, default: bool) -> bool:
    """Query parameter ``key`` as true/false (1/0); a 400 for anything else."""
    raw = params.get(key)
    if raw is None:
        return default
    if raw not in FLAG_VALUES:
        raise bad_request(f"query parameter {key!r} must be true or false, not {raw[:40]!r}")
    return FLAG_VALUES[raw]


def query_int(params: Mapping[str, str], key: str, default: int, *, lo: int, hi: int) -> int:
    """Query parameter ``key`` as a bounded integer (``default`` when absent)."""
    raw = params.get(key)
    if raw is None:
        return default
    return parse_int(raw, f"query parameter {key!r}", lo=lo, hi=hi)


def too_large(limit: int) -> ApiError:
    return ApiError(413, "PayloadTooLarge", f"request body is larger than the {limit}-byte limit")


def decode_json(data: bytes, type: Any = Any, what: str = "request body") -> Any:
    """Decode JSON into ``type``, turning every decoding problem into a 400."""
    if not data.strip():
        raise ApiError(400, "BadRequest", f"{what} is empty; expected JSON")
    try:
        value = msgspec.json.decode(data, type=type)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "BadRequest", f"{what} is invalid: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "BadRequest", f"{what} is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:  # msgspec's error for invalid UTF-8 in a string
        raise ApiError(400, "BadRequest", f"{what} is not valid UTF-8: {exc.reason}") from None
    except RecursionError:
        raise too_deep(what) from None
    check_json_depth(data, what)
    return value


def check_json_depth(data: bytes, what: str = "request body") -> None:
    """Refuse valid JSON that nests deeper than :data:`MAX_JSON_DEPTH` with a 400."""
    if data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH and json_depth(data) > MAX_JSON_DEPTH:
        raise too_deep(what)


def too_deep(what: str) -> ApiError:
    return bad_request(f"{what} nests arrays and objects deeper than {MAX_JSON_DEPTH} levels")


def json_depth(data: bytes) -> int:
    """How deep arrays and objects nest in a valid JSON document (C-speed scan)."""
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside_strings = b"".join(unescaped.split(b'"')[::2])
    brackets = outside_strings.translate(None, _NOT_BRACKETS)
    steps = array("b", brackets.translate(_BRACKET_STEPS))
    return max(accumulate(steps), default=0)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
    message = exc.detail
    if exc.status_code == 404:
        message = f"no route for {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    return error_response(ApiError(exc.status_code, kind, message), headers=dict(exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(ApiError(500, "InternalError", f"internal error: {type(exc).__name__}"))


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ApiError: _api_error,
    HTTPException: _http_exception,
    Exception: _internal_error,
}
