"""The AWS Lambda Invoke API on every node, so boto3 and the aws CLI call edgerun
functions: ``POST /2015-03-31/functions/{name}/invocations[?Qualifier=...]``.

A request is signed with SigV4 (the access key id is an edgerun key id, the secret
that key's secret) or carries an edgerun bearer key. It then takes the same path
as a direct invoke (:class:`~edgerun.node.invoke.Invoker`: placement, pool,
forwarding, limits, logs), and its answer is put in Lambda's shapes: a handler
that raised is a 200 with ``X-Amz-Function-Error: Unhandled``; edgerun's own
refusals carry Lambda's error types in ``x-amzn-ErrorType``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import quote

import msgspec

from edgerun.auth import Kind, Principal, sigv4
from edgerun.errors import ApiError, error_in
from edgerun.node.invoke import (
    FUNCTION_ERROR_HEADER,
    INVOCATION_TYPE_HEADER,
    LOG_RESULT_HEADER,
    LOG_TAIL_HEADER,
    Checked,
    Incoming,
    Reply,
)

if TYPE_CHECKING:
    from edgerun.node.invoke import Invoker
    from edgerun.node.signing import SigningKeys

PREFIX = "/2015-03-31/functions/"
SUFFIX = "/invocations"
INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")
_encode = msgspec.json.Encoder().encode

ReadBody = Callable[[Incoming], Awaitable[bytes]]
"""Reads the request's body under the node's payload limit and deadline."""


class LambdaError(Exception):
    """A refusal in Lambda's words: its status, error type and message."""

    def __init__(self, status: int, type: str, message: str, retry_after: str | None = None):
        super().__init__(message)
        self.status, self.type, self.message = status, type, message
        self.retry_after = retry_after

    def reply(self) -> Reply:
        headers = [("x-amzn-errortype", self.type), ("content-type", "application/json")]
        if self.retry_after:
            headers.append(("retry-after", self.retry_after))
        kind = "Service" if self.status >= 500 else "User"
        return Reply(self.status, headers, _encode({"Type": kind, "message": self.message}))


def lambda_error(status: int, edgerun_type: str, message: str) -> LambdaError:
    """edgerun's refusal as the Lambda error a Lambda client expects."""
    if status == 404:
        return LambdaError(404, "ResourceNotFoundException", message)
    if status == 413:
        return LambdaError(413, "RequestTooLargeException", message)
    if status == 429:
        return LambdaError(429, "TooManyRequestsException", message)
    if status == 401:
        return LambdaError(403, "UnrecognizedClientException", message)
    if status == 403:
        return LambdaError(403, "AccessDeniedException", message)
    if status == 400 and edgerun_type == "BadRequest" and "payload" in message:
        return LambdaError(400, "InvalidRequestContentException", message)
    if 400 <= status < 500:
        return LambdaError(400, "InvalidParameterValueException", message)
    return LambdaError(500, "ServiceException", f"{edgerun_type}: {message}")


class LambdaInvoke:
    def __init__(self, invoker: Invoker, signing: SigningKeys) -> None:
        self.invoker = invoker
        self.signing = signing

    async def __call__(self, method: str, path: str, req: Incoming, read: ReadBody) -> Reply:
        """``req``: the request's head as the frontend parsed it; ``read`` its body."""
        try:
            return await self._invoke(method, path, req, read)
        except LambdaError as exc:
            return exc.reply()
        except ApiError as exc:
            err = lambda_error(exc.status, exc.type, exc.message)
            err.retry_after = exc.headers.get("retry-after")
            return err.reply()

    async def _invoke(self, method: str, path: str, req: Incoming, read: ReadBody) -> Reply:
        if method != "POST":
            raise LambdaError(405, "InvalidParameterValueException", f"{method} is not Invoke")
        if not path.endswith(SUFFIX):
            raise LambdaError(404, "UnknownOperationException", "only Invoke is served here")
        name = path[len(PREFIX) : -len(SUFFIX)]
        if not name or "/" in name:
            raise LambdaError(400, "InvalidParameterValueException", "no function name")
        qualifier = _only_query(req, "Qualifier")
        kind = req.header("x-amz-invocation-type") or "RequestResponse"
        if kind not in INVOCATION_TYPES:
            raise LambdaError(
                400, "InvalidParameterValueException",
                f"X-Amz-Invocation-Type must be one of {', '.join(INVOCATION_TYPES)}",
            )  # fmt: skip
        log_type = req.header("x-amz-log-type") or "None"
        if log_type not in ("None", "Tail"):
            raise LambdaError(400, "InvalidParameterValueException", "X-Amz-Log-Type: None|Tail")
        signed = req.header("authorization")
        # The rest of the node sees a direct invoke of edgerun's own API (what a POP
        # forwards to its region too), minus what only the Lambda API means.
        direct = Incoming(
            trigger="direct",
            target=name,
            path="/",
            method="POST",
            raw_path=f"/v1/functions/{quote(name, safe='')}/invocations",
            query=f"qualifier={quote(qualifier, safe='')}" if qualifier else "",
            headers=[  # x-edgerun-* are the direct API's: only what was said in Lambda's terms
                (k, v)
                for k, v in req.headers
                if not k.startswith(("x-amz-", "x-edgerun-")) and k != "authorization"
            ],
            client=req.client,
        )
        principal: Principal | None
        if sigv4.is_sigv4(signed):
            body, principal = await self._signed(req, read)
        else:
            direct.headers.append(("authorization", signed or ""))
            principal = self.invoker.authorize(direct, name)
            body = await read(req)
        assert principal is not None  # a direct invoke always needs a key
        direct.key_id = principal.key_id
        principal.check(Kind.INVOKE, name)
        checked = Checked(name, qualifier, self.invoker.origin(direct), principal)
        if kind == "DryRun":
            self.invoker.resolve(name, qualifier)  # 404 for what does not exist
            return Reply(204, [], b"")
        if kind == "Event":
            direct.headers.append((INVOCATION_TYPE_HEADER, "Event"))
        if log_type == "Tail":
            direct.headers.append((LOG_TAIL_HEADER, "1"))
        reply = await self.invoker(direct, body, checked)
        return _as_lambda(reply)

    async def _signed(self, req: Incoming, read: ReadBody) -> tuple[bytes, Principal]:
        """Check a SigV4 request: its key and clock first (before reading a body), then
        the signature over everything, with the day's signing key from the control plane."""
        try:
            cred = sigv4.parse(req.headers, datetime.now(UTC))
        except sigv4.SigV4Error as exc:
            raise LambdaError(403, "InvalidSignatureException", str(exc)) from None
        principal = self.invoker.keyring.principal_of_id(cred.key_id)
        if principal is None or principal.is_node:
            raise LambdaError(
                403, "UnrecognizedClientException", "the access key id is not a live edgerun key"
            )
        body = await read(req)
        key = await self.signing.get(cred.key_id, cred.date, cred.region)
        if key is None:
            raise LambdaError(
                403, "InvalidSignatureException",
                "this key cannot sign requests here now (made before edgerun kept secrets "
                "for SigV4, or the control plane is unreachable): create a new key",
            )  # fmt: skip
        try:
            sigv4.verify(
                cred, key, method="POST", raw_path=req.raw_path, query=req.query,
                headers=req.headers, body=body,
            )  # fmt: skip
        except sigv4.SigV4Error as exc:
            raise LambdaError(403, "InvalidSignatureException", str(exc)) from None
        return body, principal


def _only_query(req: Incoming, name: str) -> str | None:
    from urllib.parse import parse_qsl

    values = [v for k, v in parse_qsl(req.query, keep_blank_values=True) if k == name]
    if len(values) > 1:
        raise LambdaError(400, "InvalidParameterValueException", f"{name} given twice")
    return values[0] or None if values else None


def _as_lambda(reply: Reply) -> Reply:
    """The direct invoke's reply in the Invoke API's shape."""
    headers = [(k, v) for k, v in reply.headers if k not in (LOG_RESULT_HEADER,)]
    extra: list[tuple[str, str]] = []
    for k, v in reply.headers:
        if k == "x-edgerun-version":
            extra.append(("x-amz-executed-version", v))
        elif k == LOG_RESULT_HEADER:
            extra.append(("x-amz-log-result", v))
    if reply.status == 200:
        return Reply(200, headers + extra, reply.body)
    if reply.status == 202:  # queued: Lambda answers an Event with no body
        return Reply(202, [(k, v) for k, v in headers if k != "content-type"], b"")
    error = error_in(reply.body)
    if any(k == FUNCTION_ERROR_HEADER for k, _ in reply.headers):
        body = {
            "errorMessage": error.get("message", ""),
            "errorType": error.get("type", "Exception"),
            "stackTrace": error.get("traceback", []),
        }
        extra += [("x-amz-function-error", "Unhandled"), ("content-type", "application/json")]
        kept = [(k, v) for k, v in headers if k != "content-type"]
        return Reply(200, kept + extra, _encode(body))
    err = lambda_error(reply.status, str(error.get("type", "")), str(error.get("message", "")))
    for k, v in reply.headers:
        if k == "retry-after":
            err.retry_after = v
    out = err.reply()
    out.headers += [(k, v) for k, v in headers if k.startswith("x-edgerun-")]
    return out
