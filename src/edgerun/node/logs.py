"""A node's invocation log: one record per invocation, with the function's output,
kept on disk so it survives a restart and bounded by size.

Each writer (a node, or each worker of a multi-worker node) appends JSON lines to
its own segment files in one folder; any of them can read the whole folder, so a
query answers for the whole node. Old segments are removed once a writer's files
pass its share of ``log_retention_mb``. A function that floods its output only
loses its own output: past its share of a segment, what it prints is dropped (its
invocation records are kept), so it cannot push other functions' output out
faster than their own traffic does.
"""

from __future__ import annotations

import heapq
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec

log = logging.getLogger("edgerun.node")

SEGMENT_MAX_BYTES = 4 << 20
FUNCTION_SHARE = 0.25
"""The most of one segment a single function's output may take."""
DROPPED = "[output dropped: this function printed more than its share of the node's log]\n"
SETTLE_S = 1.0
"""A follower reads up to this long ago: by then every writer has flushed what it
logged before (each flushes every 0.2 s), so nothing older can still appear."""
MAX_FIELD = 128
_SEGMENT_RE = re.compile(r"(?P<writer>[a-z0-9]+)-(?P<seq>\d{10})\.jsonl")


class LogEntry(msgspec.Struct, kw_only=True):
    """One invocation as one node saw it. A POP that forwards records its own entry
    (``placement`` ``forwarded:<region>``); the region's entry holds the output."""

    at: float
    """When the invocation arrived (Unix seconds)."""
    node: str
    request_id: str
    function: str
    version: str = ""
    placement: str = ""
    reason: str = ""
    status: int = 0
    duration_ms: float = 0.0
    error: str = ""
    """Why it failed: edgerun's error type, or the exception type the handler raised
    (whose traceback then ends the output)."""
    output: str = ""
    """What the function printed (stdout and stderr), capped by the sandbox layer."""
    worker: int = 0
    from_node: str = ""
    """The POP that forwarded it here (empty when a caller called this node)."""
    logged_at: float = 0.0
    """When it was logged (the call ended): what a follower's ``since`` counts on, as
    calls end in another order than they arrive."""


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(LogEntry).decode


CLIENT_CLOSED = "ClientClosed"
"""The error of a call whose caller went away (status 499): not the function's failure."""


def is_error(entry: LogEntry) -> bool:
    return entry.error != CLIENT_CLOSED and (entry.status >= 400 or bool(entry.error))


class Journal:
    """Appends entries (buffered; :meth:`flush` writes them) and answers queries
    over every writer's segments in ``folder``."""

    def __init__(
        self,
        folder: Path,
        *,
        writer: str = "node",
        max_bytes: int = 64 << 20,
        clock: Callable[[], float] = time.time,
        writers: Iterable[str] | None = None,
    ) -> None:
        """``writers``: every writer of the folder now; the first removes the segments
        of writers that are gone (a node that ran more workers before)."""
        if not re.fullmatch(r"[a-z0-9]+", writer):
            raise ValueError(f"writer must be lower-case letters and digits, not {writer!r}")
        self.folder = folder
        self.writer = writer
        self.max_bytes = max_bytes
        self.segment_bytes = max(64 << 10, min(SEGMENT_MAX_BYTES, max_bytes // 8))
        self.clock = clock
        self._buffer: list[bytes] = []
        self._buffered = 0
        folder.mkdir(parents=True, exist_ok=True)
        current = list(writers or [])
        if current and current[0] == writer:
            for path in folder.glob("*.jsonl"):
                m = _SEGMENT_RE.fullmatch(path.name)
                if m and m["writer"] not in current:
                    path.unlink(missing_ok=True)
        own = self._own_segments()
        self._seq = own[-1][0] if own else 0
        self._size = own[-1][1].stat().st_size if own else 0
        self._output_bytes: dict[str, int] = {}
        """Output bytes per function in the current segment (counted from this start)."""

    # --- writing -----------------------------------------------------------
    def add(self, entry: LogEntry) -> None:
        entry.logged_at = self.clock()
        if len(entry.error) > MAX_FIELD:  # a handler names its own exception type
            entry.error = entry.error[:MAX_FIELD]
        if len(entry.placement) > MAX_FIELD or len(entry.reason) > MAX_FIELD:
            entry.placement, entry.reason = entry.placement[:MAX_FIELD], entry.reason[:MAX_FIELD]
        if entry.output:
            used = self._output_bytes.get(entry.function, 0) + len(entry.output)
            if used > self.segment_bytes * FUNCTION_SHARE:
                entry.output = DROPPED
            else:
                self._output_bytes[entry.function] = used
        line = _encode(entry) + b"\n"
        self._buffer.append(line)
        self._buffered += len(line)
        if self._buffered >= 256 << 10:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered. A failed write (a full disk) drops it with a warning:
        the log must not stop the node serving, nor grow its memory."""
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        try:
            if self._seq == 0 or self._size + len(data) > self.segment_bytes:
                self._rotate()
            fd = os.open(self._path(self._seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("dropped %d bytes of invocation log: %s", len(data), exc)
            return
        self._size += len(data)

    def _rotate(self) -> None:
        self._seq += 1
        self._size = 0
        self._output_bytes.clear()
        own = self._own_segments()
        total = sum(size for _, _, size in self._sized(own))
        # Keep the newest segments within the budget, counting the one about to start.
        for _, path, size in self._sized(own):
            if total + self.segment_bytes <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size

    def _path(self, seq: int) -> Path:
        return self.folder / f"{self.writer}-{seq:010d}.jsonl"

    def _own_segments(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.folder.glob(f"{self.writer}-*.jsonl"):
            m = _SEGMENT_RE.fullmatch(path.name)
            if m and m["writer"] == self.writer:
                found.append((int(m["seq"]), path))
        return sorted(found)

    @staticmethod
    def _sized(segments: list[tuple[int, Path]]) -> Iterator[tuple[int, Path, int]]:
        for seq, path in segments:
            try:
                yield seq, path, path.stat().st_size
            except FileNotFoundError:
                continue

    # --- reading -----------------------------------------------------------
    def find(self, **filters: Any) -> list[LogEntry]:
        """:meth:`flush`, then :meth:`search` with these filters (on the caller's thread)."""
        self.flush()
        return self.search(**filters)

    def search(
        self,
        *,
        request_id: str | None = None,
        function: str | None = None,
        since: float | None = None,
        until: float | None = None,
        errors: bool = False,
        readable: Callable[[str], bool] | None = None,
        limit: int = 100,
    ) -> list[LogEntry]:
        """Entries of every writer on disk matching all filters. With ``since`` (to
        follow): the first ``limit`` logged in (since, until], in the order logged;
        else the newest ``limit`` by arrival, oldest first. Reads files only (safe in
        another thread) and holds at most ``limit`` entries."""
        matches = self._matches(request_id, function, since, until, errors, readable)
        if since is not None:
            return heapq.nsmallest(limit, matches, key=_by_logged)
        return sorted(heapq.nlargest(limit, matches, key=_by_arrival), key=_by_arrival)

    def _matches(
        self,
        request_id: str | None,
        function: str | None,
        since: float | None,
        until: float | None,
        errors: bool,
        readable: Callable[[str], bool] | None,
    ) -> Iterator[LogEntry]:
        needle = None
        if request_id is not None:
            needle = _encode(request_id)
        elif function is not None:
            needle = _encode(function)
        for path in self.folder.glob("*.jsonl"):
            if not _SEGMENT_RE.fullmatch(path.name):
                continue
            try:
                if since is not None and path.stat().st_mtime < since:
                    continue  # last written before `since`: nothing in it is newer
                data = path.read_bytes()
            except FileNotFoundError:
                continue  # removed by its writer's retention meanwhile
            if needle is not None and needle not in data:
                continue
            for line in data.splitlines():
                if needle is not None and needle not in line:
                    continue
                try:
                    entry = _decode(line)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue  # a torn last line after a crash
                if (
                    (request_id is not None and entry.request_id != request_id)
                    or (function is not None and entry.function != function)
                    or (since is not None and entry.logged_at <= since)
                    or (until is not None and entry.logged_at > until)
                    or (errors and not is_error(entry))
                    or (readable is not None and not readable(entry.function))
                ):
                    continue
                yield entry


def _by_logged(e: LogEntry) -> tuple[float, str, str]:
    return (e.logged_at, e.node, e.request_id)


def _by_arrival(e: LogEntry) -> tuple[float, str, str]:
    return (e.at, e.node, e.request_id)
