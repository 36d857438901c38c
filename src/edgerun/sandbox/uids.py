"""A distinct uid per function, from a configured range, stable across restarts."""

from __future__ import annotations

import json
from pathlib import Path

from edgerun.files import write_atomic


class UidMap:
    def __init__(self, path: Path, base: int, count: int) -> None:
        self._path = path
        self.base = base
        self.count = count
        self._map: dict[str, int] = {}
        if path.exists():
            self._map = {k: int(v) for k, v in json.loads(path.read_text()).items()}

    def uid_for(self, function: str) -> int:
        uid = self._map.get(function)
        if uid is None:
            taken = set(self._map.values())
            free = next(
                (u for u in range(self.base, self.base + self.count) if u not in taken), None
            )
            if free is None:
                raise RuntimeError(f"the uid range {self.base}+{self.count} is exhausted")
            uid = self._map[function] = free
            self._save()
        return uid

    def _save(self) -> None:
        write_atomic(self._path, json.dumps(self._map).encode())
