"""What the dashboard (``/ui``) shows, built from what the nodes answer.

No I/O here: each tick, :class:`Board` is given every node's heartbeat view,
``/v1/status`` and new ``/v1/logs`` entries, and the registry's functions, and
returns one JSON-ready snapshot. Rates come from the difference between two
ticks' counters; latency percentiles from the entries of the last minute, as
the callers saw them (entries a POP forwarded on are counted at the POP only).
Every table is bounded, whatever the traffic.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from edgerun.models import FunctionRecord

WINDOW_S = 60.0
MAX_SAMPLES = 2000
"""Per function: the latest durations kept for its percentiles."""
MAX_FUNCTIONS = 200
MAX_ERRORS = 50

Json = dict[str, Any]


def percentile(sorted_ms: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_ms:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_ms)))
    return sorted_ms[rank - 1]


class _Function:
    def __init__(self) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES)
        """(at, duration ms) of calls as their callers saw them."""
        self.cold: deque[float] = deque(maxlen=MAX_SAMPLES)
        self.ran_at: dict[str, deque[float]] = {}
        """Node -> when it ran the function itself."""


class Board:
    def __init__(self) -> None:
        self._counts: dict[str, dict[tuple[str, str, str], int]] = {}
        self._last_at: float | None = None
        self._functions: dict[str, _Function] = {}
        self._errors: deque[Json] = deque(maxlen=MAX_ERRORS)

    def update(
        self,
        now: float,
        nodes: Sequence[Json],
        statuses: Mapping[str, Json | None],
        entries: Mapping[str, Sequence[Json]],
        functions: Sequence[FunctionRecord],
    ) -> Json:
        """The snapshot at ``now``: ``nodes`` as ``GET /v1/nodes`` lists them,
        ``statuses`` and new log ``entries`` by node name (None: it did not answer)."""
        dt = None if self._last_at is None else max(1e-3, now - self._last_at)
        self._last_at = now
        for name, new in entries.items():
            for entry in new:
                self._take(name, entry)
        self._forget_before(now - WINDOW_S)
        return {
            "at": now,
            "nodes": [self._node(n, statuses.get(n["name"])) for n in nodes],
            "pops": [
                self._pop(n["name"], statuses.get(n["name"]), dt)
                for n in nodes
                if n.get("role") == "pop"
            ],
            "functions": self._function_rows(functions, now),
            "errors": list(reversed(self._errors)),
        }

    # --- entries -----------------------------------------------------------
    def _take(self, node: str, entry: Json) -> None:
        name = str(entry.get("function", ""))
        status = int(entry.get("status", 0))
        if entry.get("error") != "ClientClosed" and (status >= 400 or entry.get("error")):
            self._errors.append(
                {
                    k: entry.get(k)
                    for k in ("at", "node", "function", "status", "error", "request_id")
                }
            )
        fn = self._functions.get(name)
        if fn is None:
            if len(self._functions) >= MAX_FUNCTIONS:
                return
            fn = self._functions[name] = _Function()
        at, placement = float(entry.get("at", 0.0)), str(entry.get("placement", ""))
        if not entry.get("from_node"):
            fn.samples.append((at, float(entry.get("duration_ms", 0.0))))
        if placement.startswith("local-"):
            fn.ran_at.setdefault(node, deque(maxlen=MAX_SAMPLES)).append(at)
            if placement == "local-cold":
                fn.cold.append(at)

    def _forget_before(self, cutoff: float) -> None:
        for name, fn in list(self._functions.items()):
            while fn.samples and fn.samples[0][0] < cutoff:
                fn.samples.popleft()
            while fn.cold and fn.cold[0] < cutoff:
                fn.cold.popleft()
            for node, ran in list(fn.ran_at.items()):
                while ran and ran[0] < cutoff:
                    ran.popleft()
                if not ran:
                    del fn.ran_at[node]
            if not fn.samples and not fn.ran_at:
                del self._functions[name]

    # --- tables ------------------------------------------------------------
    @staticmethod
    def _node(view: Json, status: Json | None) -> Json:
        row = {k: view.get(k) for k in ("name", "role", "url", "state", "last_seen_s", "load")}
        row["answering"] = status is not None
        pool = (status or {}).get("pool") or {}
        row["pool"] = {
            k: pool.get(k) for k in ("capacity_mb", "used_mb", "busy", "idle", "waiting")
        }
        row["links"] = [
            {k: r.get(k) for k in ("name", "healthy", "latency_ms")}
            for r in (status or {}).get("regions", [])
        ]
        return row

    def _pop(self, name: str, status: Json | None, dt: float | None) -> Json:
        counts = {
            (str(r["function"]), str(r["placement"]), str(r["reason"])): int(r["count"])
            for r in (status or {}).get("placements", [])
        }
        before = self._counts.get(name)
        if status is not None:
            self._counts[name] = counts
        row: Json = {"name": name, "rate": None, "here_share": None, "reasons": {}}
        if before is None or dt is None or status is None:
            return row
        total = here = 0
        reasons: dict[str, int] = {}
        for key, count in counts.items():
            delta = count - before.get(key, 0)
            if delta <= 0:
                continue  # nothing new, or the node restarted and counts from zero
            total += delta
            if key[1].startswith("local-"):
                here += delta
            reasons[key[2]] = reasons.get(key[2], 0) + delta
        row["rate"] = round(total / dt, 2)
        row["here_share"] = round(here / total, 3) if total else None
        row["reasons"] = dict(sorted(reasons.items(), key=lambda kv: -kv[1]))
        return row

    def _function_rows(self, functions: Sequence[FunctionRecord], now: float) -> list[Json]:
        rows = []
        for record in functions[:MAX_FUNCTIONS]:
            fn = self._functions.get(record.name)
            durations = sorted(ms for _, ms in fn.samples) if fn else []
            rows.append(
                {
                    "name": record.name,
                    "aliases": {a: v[:12] for a, v in sorted(record.aliases.items())},
                    "versions": len(record.versions),
                    "placement": record.config.placement,
                    "calls_per_min": len(durations),
                    "p50_ms": percentile(durations, 50),
                    "p99_ms": percentile(durations, 99),
                    "cold_starts": len(fn.cold) if fn else 0,
                    "runs_on": (
                        {node: len(ran) for node, ran in sorted(fn.ran_at.items())} if fn else {}
                    ),
                }
            )
        return rows
