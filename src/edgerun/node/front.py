"""The node's ASGI entry: invocations on a raw fast path, the rest via Starlette.

Invocations are the hot path, so they skip the router, request and response
objects: the scope is read directly, the body is gathered under the payload
limit, and the reply goes out as two ``send`` calls. Every other route (the
admin and status API) is ordinary Starlette.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import msgspec

from edgerun.errors import ApiError
from edgerun.http import check_content_length, too_large

if TYPE_CHECKING:
    from edgerun.node.app import NodeApp

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("edgerun.node")
_encode = msgspec.json.Encoder().encode
_INVOCATIONS = "/invocations"


@dataclass(slots=True)
class Incoming:
    """What the invoke path needs to know about an HTTP request."""

    method: str
    raw_path: str
    query: str
    headers: list[tuple[str, str]]
    client: str

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def query_param(self, name: str) -> str | None:
        for k, v in parse_qsl(self.query):
            if k == name:
                return v
        return None


@dataclass(slots=True)
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Front:
    def __init__(self, node: NodeApp, fallback: ASGIApp) -> None:
        self.node = node
        self.fallback = fallback
        self.limit = node.cfg.max_payload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/fn/") or (
                path.startswith("/v1/functions/") and path.endswith(_INVOCATIONS)
            ):
                await self._invoke(scope, receive, send, path)
                return
        await self.fallback(scope, receive, send)

    async def _invoke(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        try:
            req = Incoming(
                method=scope["method"],
                raw_path=path,
                query=scope["query_string"].decode("latin-1"),
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
                client=scope["client"][0] if scope.get("client") else "",
            )
            body = await self._body(req, receive)
            if path.startswith("/fn/"):
                target, _, rest = path[4:].partition("/")
                if not target:
                    raise ApiError(404, "NotFound", "no function named in the path: /fn/{name}/")
                reply = await self.node.invoke_http(req, target, "/" + rest, body)
            else:
                if req.method != "POST":
                    raise ApiError(
                        405, "MethodNotAllowed", f"{req.method} is not allowed on {path}"
                    )
                name = path[len("/v1/functions/") : -len(_INVOCATIONS)]
                reply = await self.node.invoke_direct(req, name, body)
        except ApiError as exc:
            reply = Reply(
                exc.status,
                [*exc.headers.items(), ("content-type", "application/json")],
                _encode(exc.body()),
            )
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), path)
            err = ApiError(500, "InternalError", "internal error")
            reply = Reply(500, [("content-type", "application/json")], _encode(err.body()))
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers],
            }
        )
        await send({"type": "http.response.body", "body": reply.body})

    async def _body(self, req: Incoming, receive: Receive) -> bytes:
        check_content_length(req.header("content-length"), self.limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ApiError(400, "BadRequest", "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise too_large(self.limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
