"""Follow invocation logs across every node, merged by time (``edgerun logs``).

Each node answers ``GET /v1/logs?since=T`` with what it recorded after T; a
:class:`Tail` keeps one cursor per node, so each poll brings only what is new,
and a node that is down or slow costs its own entries, not the others'.
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
    cursors: dict[str, float] = field(default_factory=dict)
    """The newest entry seen per node URL."""
    problems: dict[str, str] = field(default_factory=dict)
    """Why a node could not be read on the last poll."""

    def poll(
        self, urls: Iterable[str], fetch: Callable[[str, dict[str, str]], list[dict[str, Any]]]
    ) -> tuple[list[dict[str, Any]], bool]:
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
            try:
                entries = fetch(url, params)
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                self.problems[url] = str(exc) or type(exc).__name__
                continue
            self.problems.pop(url, None)
            if entries:
                self.cursors[url] = max(float(e["at"]) for e in entries)
                merged += entries
                more = more or len(entries) >= PAGE
        merged.sort(key=lambda e: (e["at"], e["node"]))
        return merged, more


def http_fetch(client: httpx.Client) -> Callable[[str, dict[str, str]], list[dict[str, Any]]]:
    def fetch(url: str, params: dict[str, str]) -> list[dict[str, Any]]:
        resp = client.get(f"{url}/v1/logs", params=params)
        if resp.status_code != 200:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text[:200]
            raise ValueError(f"HTTP {resp.status_code}: {message}")
        entries: list[dict[str, Any]] = resp.json()["logs"]
        return entries

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
