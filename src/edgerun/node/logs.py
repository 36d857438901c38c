"""The last invocations' output on this node, tagged with their request ids.

A bounded ring: old entries fall out by count and by size, counted per
function, so a chatty function can neither grow a node's memory nor push
other functions' output out.
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
    """Entries kept per function, each function held to its own share in bytes.

    A function that floods its output only pushes out its own older entries;
    when the whole ring is over budget, the function holding the most bytes
    gives way first."""

    def __init__(
        self,
        max_entries: int = 2000,
        max_bytes: int = 32 * 1024 * 1024,
        max_bytes_per_function: int = 2 * 1024 * 1024,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_bytes_per_function = max_bytes_per_function
        self._by_function: dict[str, deque[LogEntry]] = {}
        self._function_bytes: dict[str, int] = {}
        self._entries = 0
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
        self._by_function.setdefault(function, deque()).append(entry)
        self._function_bytes[function] = self._function_bytes.get(function, 0) + len(output)
        self._entries += 1
        self._bytes += len(output)
        while self._function_bytes[function] > self.max_bytes_per_function:
            self._pop_oldest(function)
        while self._entries > self.max_entries or self._bytes > self.max_bytes:
            self._pop_oldest(max(self._function_bytes, key=self._function_bytes.__getitem__))

    def _pop_oldest(self, function: str) -> None:
        entries = self._by_function[function]
        gone = entries.popleft()
        self._entries -= 1
        self._bytes -= len(gone.output)
        self._function_bytes[function] -= len(gone.output)
        if not entries:
            del self._by_function[function]
            del self._function_bytes[function]

    def bytes_of(self, function: str) -> int:
        return self._function_bytes.get(function, 0)

    def find(
        self, *, request_id: str | None = None, function: str | None = None, limit: int = 50
    ) -> list[LogEntry]:
        """Newest first."""
        if function:
            newest_first = reversed(self._by_function.get(function, deque()))
            found = [e for e in newest_first if not request_id or e.request_id == request_id]
        else:
            found = [
                e
                for pool in self._by_function.values()
                for e in pool
                if not request_id or e.request_id == request_id
            ]
            found.sort(key=lambda e: e.at, reverse=True)
        return found[:limit]
