"""The node's checks of what a sandbox answers.

A sandbox runs user code, which can forge any frame it likes: every field of
a :class:`Result` or :class:`Failure` is hostile input. A reply that could
break the HTTP answer (a status out of range, CR/LF or a non-latin-1
character in a header, a header too long for a peer's parser) is refused
here, as a JSON 502 the caller can read, before it reaches any socket. The
function's own output is capped here too, not only inside the sandbox.
"""

from __future__ import annotations

import re

from edgerun.sandbox.base import SandboxError
from edgerun.sandbox.protocol import ErrorInfo, Failure, Result

LOG_LIMIT = 256 * 1024
"""Output kept per invocation (the sandbox applies the same cap; this one holds)."""
MAX_HEADERS = 100
MAX_HEADER_LINE = 8 * 1024
"""Name and value of one header: what common HTTP parsers (aiohttp, nginx) accept."""
MAX_HEADER_BYTES = 32 * 1024
_ERROR_TEXT_LIMIT = 4096
_TRACEBACK_LINES = 100
_TRUNCATED = "\n[edgerun: output truncated at 256 KiB]\n"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_FRAMING = frozenset(
    {
        "connection",
        "content-length",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers that describe the connection, not the answer: the node's server sets them."""
_OURS = "x-edgerun-"


class InvalidResponse(SandboxError):
    """The function answered something no HTTP response can carry."""

    status = 502
    type = "InvalidResponse"


def check_result(result: Result) -> Result:
    """The result with header names lower-cased and framing headers dropped;
    raises InvalidResponse for anything else the caller could not be sent."""
    if not 200 <= result.status <= 599:
        raise InvalidResponse(f"the function answered status {result.status}, not 200-599")
    if len(result.headers) > MAX_HEADERS:
        raise InvalidResponse(
            f"the function answered {len(result.headers)} headers; at most {MAX_HEADERS}"
        )
    headers: list[tuple[str, str]] = []
    total = 0
    for name, value in result.headers:
        if not _TOKEN.fullmatch(name):
            raise InvalidResponse(f"the function answered an invalid header name {name[:64]!r}")
        if not _FIELD_VALUE.fullmatch(value):
            raise InvalidResponse(
                f"the header {name[:64]!r} holds a control character or a character outside latin-1"
            )
        size = len(name) + len(value)
        if size > MAX_HEADER_LINE:
            raise InvalidResponse(
                f"the header {name[:64]!r} is {size} bytes long; at most {MAX_HEADER_LINE}"
            )
        total += size
        lower = name.lower()
        if lower in _FRAMING or lower.startswith(_OURS):
            continue
        headers.append((lower, value))
    if total > MAX_HEADER_BYTES:
        raise InvalidResponse(
            f"the function's headers total {total} bytes; at most {MAX_HEADER_BYTES}"
        )
    result.headers = headers
    result.logs = cap_logs(result.logs)
    return result


def check_failure(failure: Failure) -> Failure:
    """The failure with its error text and output cut to sizes a caller can read."""
    err = failure.error
    failure.error = ErrorInfo(
        type=_cut(err.type, 128),
        message=_cut(err.message, _ERROR_TEXT_LIMIT),
        traceback=[_cut(line, _ERROR_TEXT_LIMIT) for line in err.traceback[-_TRACEBACK_LINES:]],
    )
    failure.logs = cap_logs(failure.logs)
    return failure


def cap_logs(logs: str) -> str:
    if len(logs) <= LOG_LIMIT + len(_TRUNCATED):
        return logs
    return logs[:LOG_LIMIT] + _TRUNCATED


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
