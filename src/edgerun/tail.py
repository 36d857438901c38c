"""Follow invocation logs across every node, merged by time (``edgerun logs``).

Each node answers ``GET /v1/logs?since=T`` with what it logged after T, up to a
settled time ``until`` (everything logged before it is on disk by then); a
:class:`Tail` keeps one cursor per node, moved to ``until`` (or, when a page is
full, to the last entry's time), so each poll brings only what is new, nothing
is missed when calls end out of order, and a node that is down or slow costs
its own entries, not the others'.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
PAGE = 1000
Fetch = Callable[[str, dict[str, str]], tuple[list[dict[str, Any]], float | None]]
"""Asks one node (its URL) with these query parameters: its entries and ``until``."""
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Function output with control characters (terminal escapes) made visible:
    a function must not drive the terminal of whoever reads its logs."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


def parse_since(text: str, now: float) -> float:
    """``10m``, ``90s``, ``2h``, ``1d`` ago, or a Unix time."""
    m = _DURATION_RE.fullmatch(text.strip())
    if m:
        return now - float(m[1]) * _UNIT_S[m[2]]
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: give 10m, 90s, 2h, 1d or a Unix time") from None


@dataclass
class Tail:
    since: float
    function: str | None = None
    errors_only: bool = False
    follow: bool = True
    """False: one snapshot up to now (no waiting for what other workers still buffer)."""
    cursors: dict[str, float] = field(default_factory=dict)
    """The newest entry seen per node URL."""
    problems: dict[str, str] = field(default_factory=dict)
    """Why a node could not be read on the last poll."""

    def poll(self, urls: Iterable[str], fetch: Fetch) -> tuple[list[dict[str, Any]], bool]:
        """New entries of every node, oldest first, and whether a node had more than
        a page (poll again at once)."""
        merged: list[dict[str, Any]] = []
        more = False
        for url in urls:
            params = {"since": repr(self.cursors.get(url, self.since)), "limit": str(PAGE)}
            if self.function:
                params["function"] = self.function
            if self.errors_only:
                params["status"] = "error"
            if not self.follow:
                params["settled"] = "false"
            try:
                entries, until = fetch(url, params)
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                self.problems[url] = str(exc) or type(exc).__name__
                continue
            self.problems.pop(url, None)
            merged += entries
            if len(entries) >= PAGE:
                more = True
                self.cursors[url] = max(float(e["logged_at"]) for e in entries)
            elif until is not None:
                self.cursors[url] = until
        merged.sort(key=lambda e: (e["at"], e["node"]))
        return merged, more


def http_fetch(client: httpx.Client) -> Fetch:
    def fetch(url: str, params: dict[str, str]) -> tuple[list[dict[str, Any]], float | None]:
        resp = client.get(f"{url}/v1/logs", params=params)
        if resp.status_code != 200:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text[:200]
            raise ValueError(f"HTTP {resp.status_code}: {message}")
        body = resp.json()
        entries: list[dict[str, Any]] = body["logs"]
        until = body.get("until")
        return entries, None if until is None else float(until)

    return fetch


def line(entry: dict[str, Any]) -> str:
    """One entry for people: when, where, what, how it went."""
    at = (
        time.strftime("%H:%M:%S", time.localtime(entry["at"]))
        + f".{int(entry['at'] % 1 * 1000):03d}"
    )
    status = entry.get("status", 0)
    error = f" {entry['error']}" if entry.get("error") else ""
    where = entry.get("placement") or "-"
    reason = f" ({entry['reason']})" if entry.get("reason") else ""
    return (
        f"{at} {entry['node']:<10} {entry['function']} {status}{error} "
        f"{entry.get('duration_ms', 0):.1f}ms {where}{reason} {entry['request_id']}"
    )
