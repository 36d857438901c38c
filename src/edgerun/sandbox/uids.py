"""A distinct uid per function, from a configured range, stable across restarts.

The workers of one node share the map: a uid is given under a lock on the
file, after reading what the other workers gave meanwhile, so two functions
never get one uid."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from edgerun.files import write_atomic


class UidMap:
    def __init__(self, path: Path, base: int, count: int) -> None:
        self._path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self.base = base
        self.count = count
        self._map: dict[str, int] = self._read()

    def _read(self) -> dict[str, int]:
        if not self._path.exists():
            return {}
        return {k: int(v) for k, v in json.loads(self._path.read_text()).items()}

    def uid_for(self, function: str) -> int:
        uid = self._map.get(function)
        if uid is not None:
            return uid
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._map = self._read()  # what other workers of this node gave meanwhile
            uid = self._map.get(function)
            if uid is None:
                taken = set(self._map.values())
                free = next(
                    (u for u in range(self.base, self.base + self.count) if u not in taken), None
                )
                if free is None:
                    raise RuntimeError(f"the uid range {self.base}+{self.count} is exhausted")
                uid = self._map[function] = free
                write_atomic(self._path, json.dumps(self._map).encode())
            return uid
        finally:
            os.close(fd)  # releases the lock
