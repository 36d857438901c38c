"""The AWS Lambda function-URL contract (payload format 2.0), with no I/O.

:func:`build_event` turns an HTTP request into the event a Lambda handler
expects; :func:`to_http_response` turns whatever the handler returned into a
status, headers and body, following the rules Lambda applies to function
URLs, so existing handlers run unchanged.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

import msgspec

_TEXT_TYPES = (
    "text/",
    "application/json",
    "application/xml",
    "application/javascript",
    "application/x-www-form-urlencoded",
)
_json_encode = msgspec.json.Encoder().encode


def build_event(
    *,
    method: str,
    path: str,
    query_string: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    source_ip: str,
    request_id: str,
    domain: str,
    now: float | None = None,
) -> dict[str, Any]:
    now = time.time() if now is None else now
    merged: dict[str, str] = {}
    cookies: list[str] = []
    for key, value in headers:
        k = key.lower()
        if k == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        merged[k] = f"{merged[k]},{value}" if k in merged else value
    query: dict[str, str] = {}
    for k, v in parse_qsl(query_string, keep_blank_values=True):
        query[k] = f"{query[k]},{v}" if k in query else v
    content_type = merged.get("content-type", "")
    is_text = not body or _is_text(body, content_type)
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query_string,
        "headers": merged,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": domain.split(".")[0],
            "domainName": domain,
            "domainPrefix": domain.split(".")[0],
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": merged.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": not is_text,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if body:
        event["body"] = body.decode() if is_text else base64.b64encode(body).decode()
    return event


def _is_text(body: bytes, content_type: str) -> bool:
    """Text goes in the event as-is; anything else (or undecodable) as base64."""
    textual = content_type.startswith(_TEXT_TYPES)
    if content_type and not textual:
        return False
    try:
        body.decode()
    except UnicodeDecodeError:
        return False
    return True


class ResponseError(ValueError):
    """The handler's return value cannot be turned into an HTTP response."""


def to_http_response(value: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """Map a handler's return value to ``(status, headers, body)``.

    A dict with ``statusCode`` is an explicit response; any other value is
    JSON-encoded with status 200, except ``str`` (text) and ``bytes``.
    """
    if isinstance(value, dict) and "statusCode" in value:
        return _explicit(value)
    if isinstance(value, bytes):
        return 200, [("content-type", "application/octet-stream")], value
    if isinstance(value, str):
        return 200, [("content-type", "text/plain; charset=utf-8")], value.encode()
    return 200, [("content-type", "application/json")], encode_json(value)


def encode_json(value: Any) -> bytes:
    try:
        return _json_encode(value)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ResponseError(
            f"handler returned a value that is not JSON-serialisable: {exc}"
        ) from None


def _explicit(value: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    status = value["statusCode"]
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise ResponseError(f"statusCode must be an integer between 100 and 599, got {status!r}")
    raw_headers = value.get("headers") or {}
    if not isinstance(raw_headers, dict):
        raise ResponseError("headers must be an object of header names to values")
    headers = [(str(k).lower(), str(v)) for k, v in raw_headers.items()]
    cookies = value.get("cookies") or []
    if not isinstance(cookies, list):
        raise ResponseError("cookies must be a list of Set-Cookie strings")
    for cookie in cookies:
        headers.append(("set-cookie", str(cookie)))
    body = value.get("body")
    if body is None:
        data = b""
    elif value.get("isBase64Encoded"):
        if not isinstance(body, str):
            raise ResponseError("a base64-encoded body must be a string")
        try:
            data = base64.b64decode(body, validate=True)
        except ValueError:
            raise ResponseError("isBase64Encoded is true but body is not valid base64") from None
    elif isinstance(body, str):
        data = body.encode()
    elif isinstance(body, bytes):
        data = body
    else:
        data = encode_json(body)
        if not any(k == "content-type" for k, _ in headers):
            headers.append(("content-type", "application/json"))
    if not any(k == "content-type" for k, _ in headers):
        headers.append(
            (
                "content-type",
                "application/json" if data[:1] in (b"{", b"[") else "text/plain; charset=utf-8",
            )
        )
    return status, headers, data
