"""HTTP helpers shared by the control plane and node apps.

Every answer is JSON (msgspec-encoded), every failure has the shape of
:class:`edgerun.errors.ApiError`, and request bodies are read with a hard
limit so a large upload cannot exhaust a node's memory.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from edgerun.errors import ApiError

log = logging.getLogger("edgerun.http")
_encode = msgspec.json.Encoder().encode


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encode(obj), status, headers=headers, media_type="application/json")


def error_response(err: ApiError, headers: dict[str, str] | None = None) -> Response:
    return json_response(err.body(), err.status, {**err.headers, **(headers or {})})


async def read_body(request: Request, limit: int) -> bytes:
    """Read the request body, refusing with 413 once it passes ``limit`` bytes."""
    check_content_length(request.headers.get("content-length"), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def check_content_length(length: str | None, limit: int) -> None:
    """Refuse a body by its declared size before reading any of it."""
    if length is None:
        return
    if not length.isdigit():
        raise ApiError(400, "BadRequest", "content-length is not a number")
    if int(length) > limit:
        raise too_large(limit)


def too_large(limit: int) -> ApiError:
    return ApiError(413, "PayloadTooLarge", f"request body is larger than the {limit}-byte limit")


def decode_json(data: bytes, type: Any = Any, what: str = "request body") -> Any:
    """Decode JSON into ``type``, turning every decoding problem into a 400."""
    if not data:
        raise ApiError(400, "BadRequest", f"{what} is empty; expected JSON")
    try:
        return msgspec.json.decode(data, type=type)
    except msgspec.ValidationError as exc:
        raise ApiError(400, "BadRequest", f"{what} is invalid: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "BadRequest", f"{what} is not valid JSON: {exc}") from None


def check_bearer(request: Request, token: str) -> None:
    auth = request.headers.get("authorization", "")
    scheme, _, given = auth.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise ApiError(
            401,
            "Unauthorized",
            "this call needs an admin token: send 'Authorization: Bearer <token>'",
            headers={"www-authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(403, "Forbidden", "the token is not valid for this cluster")


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
