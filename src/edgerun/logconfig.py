"""How a node's own log lines look: JSON lines for a collector, or text for a person.

Every line carries the time, level, node and logger; one written while an
invocation is handled also carries its request id and function (from
:data:`invocation`, set by the invoke path), so a node's lines can be joined with
its invocation records.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from typing import Any, Literal

import msgspec

invocation: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "edgerun_invocation", default=None
)
"""(request id, function) of the invocation being handled, if any."""

_encode = msgspec.json.Encoder().encode


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname.lower(),
            "node": self.node,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        current = invocation.get()
        if current is not None:
            line["request_id"], line["function"] = current
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return _encode(line).decode()


class TextFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        where = ""
        current = invocation.get()
        if current is not None:
            where = f" [{current[1]} {current[0]}]"
        text = (
            f"{_iso(record.created)} {record.levelname:<7} {self.node} "
            f"{record.name}{where}: {record.getMessage()}"
        )
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(
    node: str,
    fmt: Literal["json", "text"] = "json",
    level: str = "info",
) -> None:
    """Send every logger's lines (uvicorn's included) to stderr in ``fmt``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(node) if fmt == "json" else TextFormatter(node))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    for name in ("httpx", "httpcore"):  # a line per feed poll, health check and heartbeat
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def _iso(created: float) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
        + f".{int(created % 1 * 1000):03d}Z"
    )
