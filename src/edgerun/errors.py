"""One error type for every API answer that is not a success.

Handlers raise :class:`ApiError`; the apps turn it into a JSON body of the
shape ``{"error": {"type": ..., "message": ...}}`` so clients never have to
parse HTML or plain-text failures.
"""

from __future__ import annotations

import json
from typing import Any


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.headers = headers or {}
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.type, "message": self.message, **self.extra}}


def error_in(body: bytes) -> dict[str, Any]:
    """The ``error`` object of a reply :meth:`ApiError.body` made (``type``,
    ``message``, extras), read back from its JSON; empty for anything else."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error if isinstance(error, dict) else {}


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "NotFound", message)


def unauthorized(message: str) -> ApiError:
    """No credentials, or ones that are not a live key."""
    return ApiError(401, "Unauthorized", message, headers={"www-authenticate": "Bearer"})


def forbidden(message: str) -> ApiError:
    """A live key that may not do this."""
    return ApiError(403, "Forbidden", message)
