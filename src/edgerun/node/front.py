"""The node's ASGI entry: invocations on a raw fast path, the rest via Starlette.

Invocations are the hot path, so they skip the router, request and response
objects: the scope is read directly, the body is gathered under the payload
limit, and the reply goes out as two ``send`` calls. Every other route (the
admin and status API) is ordinary Starlette.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

import msgspec

from edgerun.errors import ApiError
from edgerun.http import body_deadline, check_content_length, too_large
from edgerun.node.invoke import FORWARDED_BY_HEADER, NODE_TOKEN_HEADER, Checked, Incoming, Reply

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Check = Callable[[Incoming], Checked]
"""Authenticates and authorises an invocation from its headers (before its body is read)."""
Invoke = Callable[[Incoming, bytes, Checked], Awaitable[Reply]]
"""Runs one invocation (:class:`edgerun.node.invoke.Invoker`)."""
LambdaApi = Callable[[str, str, Incoming, Callable[[Incoming], Awaitable[bytes]]], Awaitable[Reply]]
"""Serves the Lambda Invoke API (:class:`edgerun.node.lambda_api.LambdaInvoke`)."""
LAMBDA_PREFIX = "/2015-03-31/functions/"

log = logging.getLogger("edgerun.node")
_encode = msgspec.json.Encoder().encode
_INVOCATIONS = "/invocations"
_FORWARD_MARKS = (NODE_TOKEN_HEADER.encode(), FORWARDED_BY_HEADER.encode())


class Front:
    def __init__(
        self,
        check: Check,
        invoke: Invoke,
        fallback: ASGIApp,
        *,
        max_payload_bytes: int,
        body_timeout_s: float,
        lambda_api: LambdaApi | None = None,
    ) -> None:
        """``lambda_api``: serves the Lambda Invoke API's path (with the request's
        parsed head and a reader for its body)."""
        self.check = check
        self.invoke = invoke
        self.fallback = fallback
        self.lambda_api = lambda_api
        self.limit = max_payload_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/fn/") or (
                path.startswith("/v1/functions/") and path.endswith(_INVOCATIONS)
            ):
                await self._invoke(scope, receive, send, path)
                return
            if self.lambda_api is not None and path.startswith(LAMBDA_PREFIX):
                await self._lambda(scope, receive, send, path)
                return
            if any(k in _FORWARD_MARKS for k, _ in scope["headers"]):
                # A POP forwards invocations only: nothing it relays reaches the admin API.
                err = ApiError(404, "NotFound", f"no route for forwarded {scope['method']} {path}")
                await _send(send, _error_reply(err))
                return
        await self.fallback(scope, receive, send)

    async def _invoke(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        try:
            req = _incoming(scope, path)
            checked = self.check(req)
            body = await self._body(req, receive)
            reply = await self.invoke(req, body, checked)
        except Exception as exc:
            reply = _failure_reply(exc, scope, path)
        await _send(send, reply)

    async def _lambda(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        assert self.lambda_api is not None
        try:
            req = _head(scope, "direct", path, "/")
            reply = await self.lambda_api(
                scope["method"], path, req, lambda r: self._body(r, receive)
            )
        except Exception as exc:
            reply = _failure_reply(exc, scope, path)
        await _send(send, reply)

    async def _body(self, req: Incoming, receive: Receive) -> bytes:
        length = req.header("content-length")
        if (length is None or length == "0") and req.header("transfer-encoding") is None:
            # No body (a GET, mostly): the server has the empty one already, so the
            # common case takes no deadline; anything more is read as below.
            message = await receive()
            if not message.get("more_body", False) and message["type"] != "http.disconnect":
                return bytes(message.get("body", b""))
            return await self._rest(message, receive)
        check_content_length(length, self.limit)
        return await self._rest(None, receive)

    async def _rest(self, first: Message | None, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async with body_deadline(self.body_timeout_s):
            while True:
                message = first if first is not None else await receive()
                first = None
                if message["type"] == "http.disconnect":
                    raise ApiError(400, "BadRequest", "the client went away")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.limit:
                    raise too_large(self.limit)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)


def _incoming(scope: Scope, path: str) -> Incoming:
    """The invocation a request asks for; 4xx when the path or method cannot be one."""
    method: str = scope["method"]
    trigger: Literal["http", "direct"]
    if path.startswith("/fn/"):
        target, _, rest = path[4:].partition("/")
        if not target:
            raise ApiError(404, "NotFound", "no function named in the path: /fn/{name}/")
        if any(part in (".", "..") for part in rest.split("/")):
            raise ApiError(400, "BadRequest", "the path has '.' or '..' segments")
        trigger, fn_path = "http", "/" + rest
    else:
        if method != "POST":
            raise ApiError(405, "MethodNotAllowed", f"{method} is not allowed on {path}")
        target, trigger, fn_path = path[len("/v1/functions/") : -len(_INVOCATIONS)], "direct", "/"
    return _head(scope, trigger, target, fn_path)


def _head(scope: Scope, trigger: Literal["http", "direct"], target: str, fn_path: str) -> Incoming:
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    return Incoming(
        trigger=trigger,
        target=target,
        path=fn_path,
        method=scope["method"],
        raw_path=raw_path.decode("latin-1"),
        query=scope["query_string"].decode("latin-1"),
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
        client=scope["client"][0] if scope.get("client") else "",
    )


def _failure_reply(exc: Exception, scope: Scope, path: str) -> Reply:
    """The JSON error one of edgerun's refusals, or a bug, becomes."""
    if isinstance(exc, ApiError):
        return _error_reply(exc)
    log.error("unhandled error on %s %s", scope.get("method"), path, exc_info=exc)
    return _error_reply(ApiError(500, "InternalError", "internal error"))


def _error_reply(exc: ApiError) -> Reply:
    return Reply(
        exc.status,
        [*exc.headers.items(), ("content-type", "application/json")],
        _encode(exc.body()),
    )


async def _send(send: Send, reply: Reply) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": reply.status,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers],
        }
    )
    await send({"type": "http.response.body", "body": reply.body})
