"""How often each function is requested at this POP, in bounded memory.

Counts decay exponentially (half-life ``half_life_s``), so the estimate
follows the recent request rate. Only ``capacity`` keys are tracked: when a
new key arrives at a full table, the least-counted key is replaced and the
newcomer inherits its count as a known over-estimate (the Space-Saving
heavy-hitters scheme), so popular keys are never lost and memory stays flat
however many functions exist. :meth:`rate` subtracts that over-estimate, so
a newcomer does not look popular until its own requests say so.

Decay uses "forward decay": each hit adds ``2**(t / half_life)`` to a
score, so scores of different keys compare without touching every entry,
and a min-heap finds the key to replace in O(log n). No I/O, no clock:
callers pass ``now``.
"""

from __future__ import annotations

import heapq
import math

_RENORMALISE_AT = 512.0  # exponent beyond which scores are rescaled to stay finite


class Popularity:
    def __init__(self, capacity: int = 100_000, half_life_s: float = 300.0) -> None:
        if capacity < 1 or half_life_s <= 0:
            raise ValueError("capacity must be >= 1 and half_life_s > 0")
        self.capacity = capacity
        self.half_life_s = half_life_s
        self._origin = 0.0
        self._scores: dict[str, float] = {}
        self._errors: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._heap_live = False

    def __len__(self) -> int:
        return len(self._scores)

    def _weight(self, now: float) -> float:
        exponent = (now - self._origin) / self.half_life_s
        if exponent > _RENORMALISE_AT:
            self._renormalise(now)
            exponent = 0.0
        return math.exp2(exponent)

    def _renormalise(self, now: float) -> None:
        factor = math.exp2(-(now - self._origin) / self.half_life_s)
        self._origin = now
        self._scores = {k: v * factor for k, v in self._scores.items()}
        self._errors = {k: v * factor for k, v in self._errors.items()}
        self._heap_live = False
        self._heap = []

    def hit(self, key: str, now: float, count: float = 1.0) -> float:
        """Count ``count`` requests for ``key`` at ``now``; returns its new rate."""
        w = self._weight(now) * count
        score = self._scores.get(key)
        if score is None:
            inherited = 0.0
            if len(self._scores) >= self.capacity:
                if not self._heap_live:
                    self._rebuild_heap()  # rescaling emptied it: evict from a current heap
                inherited = self._evict_min()
            score = inherited
            self._errors[key] = inherited
        score += w
        self._scores[key] = score
        if len(self._scores) >= self.capacity:
            # Only a full table evicts, so only then is the heap kept current.
            if self._heap_live and len(self._heap) <= 4 * len(self._scores):
                heapq.heappush(self._heap, (score, key))
            else:
                self._rebuild_heap()
        return self.rate(key, now)

    def _rebuild_heap(self) -> None:
        self._heap = [(v, k) for k, v in self._scores.items()]
        heapq.heapify(self._heap)
        self._heap_live = True

    def _evict_min(self) -> float:
        while self._heap:
            score, key = heapq.heappop(self._heap)
            if self._scores.get(key) == score:
                del self._scores[key]
                self._errors.pop(key, None)
                return score
        return 0.0

    def rate(self, key: str, now: float) -> float:
        """Conservative requests per second for ``key`` (0 when unknown)."""
        score = self._scores.get(key)
        if score is None:
            return 0.0
        decayed = (score - self._errors.get(key, 0.0)) / self._weight(now)
        return max(0.0, decayed) * math.log(2) / self.half_life_s
