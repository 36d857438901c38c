"""The last invocations' output on this node, tagged with their request ids.

A bounded ring: old entries fall out by count and by total size, so a
chatty function cannot grow a node's memory.
"""

from __future__ import annotations

import time
from collections import deque

import msgspec


class LogEntry(msgspec.Struct, kw_only=True):
    request_id: str
    function: str
    version: str
    node: str
    at: float
    output: str


class LogRing:
    def __init__(self, max_entries: int = 2000, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: deque[LogEntry] = deque()
        self._bytes = 0

    def add(self, request_id: str, function: str, version: str, node: str, output: str) -> None:
        entry = LogEntry(
            request_id=request_id,
            function=function,
            version=version,
            node=node,
            at=time.time(),
            output=output,
        )
        self._entries.append(entry)
        self._bytes += len(output)
        while self._entries and (
            len(self._entries) > self.max_entries or self._bytes > self.max_bytes
        ):
            self._bytes -= len(self._entries.popleft().output)

    def find(
        self, *, request_id: str | None = None, function: str | None = None, limit: int = 50
    ) -> list[LogEntry]:
        """Newest first."""
        out = []
        for entry in reversed(self._entries):
            if request_id and entry.request_id != request_id:
                continue
            if function and entry.function != function:
                continue
            out.append(entry)
            if len(out) >= limit:
                break
        return out
