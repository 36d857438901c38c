"""A node's counters and small caches, shared by the invoke path and the admin routes.

Each is bounded: a node sees many functions over its life and must not grow
with them (the registry copy is the only per-function structure it keeps whole).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from edgerun.errors import ApiError
from edgerun.models import FunctionRecord, Version
from edgerun.sandbox.base import SandboxInitError, SandboxSpec

INIT_ERROR_TTL_S = 10.0
"""A version whose import failed answers from this cache for a while, without retrying."""
_INIT_ERRORS_SHOWN_S = INIT_ERROR_TTL_S * 30
_MAX_ENTRIES = 10_000


class Counters:
    """Invocations by (function, placement, reason), for ``/v1/status``."""

    def __init__(self, limit: int = _MAX_ENTRIES) -> None:
        self.limit = limit
        self.counts: dict[tuple[str, str, str], int] = {}

    def count(self, function: str, placement: str, reason: str) -> None:
        key = (function, placement, reason)
        if key not in self.counts and len(self.counts) >= self.limit:
            key = ("(other)", placement, reason)  # the tail is aggregated, not dropped
        self.counts[key] = self.counts.get(key, 0) + 1

    def rows(self) -> list[dict[str, object]]:
        return [
            {"function": f, "placement": p, "reason": r, "count": n}
            for (f, p, r), n in sorted(self.counts.items())
        ]


class InitErrors:
    """The latest import failure per (function, version)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._errors: dict[tuple[str, str], tuple[float, SandboxInitError]] = {}

    def recent(self, function: str, version: str) -> SandboxInitError | None:
        """The failure to answer with, without trying again, if it is fresh."""
        entry = self._errors.get((function, version))
        if entry and self._clock() - entry[0] < INIT_ERROR_TTL_S:
            return entry[1]
        return None

    def put(self, function: str, version: str, exc: SandboxInitError) -> None:
        if len(self._errors) >= _MAX_ENTRIES:
            self._errors.clear()
        self._errors[(function, version)] = (self._clock(), exc)

    def clear(self, function: str, version: str) -> None:
        self._errors.pop((function, version), None)

    def forget(self, function: str) -> None:
        for key in [k for k in self._errors if k[0] == function]:
            del self._errors[key]

    def shown(self, function: str) -> dict[str, SandboxInitError]:
        """Failures of ``function`` recent enough to show in ``/v1/status``."""
        now = self._clock()
        return {
            version: exc
            for (name, version), (at, exc) in self._errors.items()
            if name == function and now - at < _INIT_ERRORS_SHOWN_S
        }


class Specs:
    """The sandbox spec of each (function, version), built once per function revision;
    and which bundle each version's code is, for code collection."""

    def __init__(
        self,
        code_dir: Callable[[str], Path],
        secrets: Callable[[FunctionRecord], dict[str, str] | None] = lambda fn: {},
    ) -> None:
        """``secrets(fn)``: the function's secret values held for its revision (None
        when not fetched: the caller awaits them before asking for a spec)."""
        self._code_dir = code_dir
        self._secrets = secrets
        self._specs: dict[tuple[str, str], tuple[int, SandboxSpec]] = {}
        self.bundle_of: dict[str, str] = {}
        """Version id -> bundle sha of every version a spec was built for."""

    def get(self, fn: FunctionRecord, version: Version) -> SandboxSpec:
        key = (fn.name, version.sha256)
        cached = self._specs.get(key)
        if cached is not None and cached[0] == fn.revision:
            return cached[1]
        cfg = fn.config
        secrets = self._secrets(fn)
        if secrets is None:
            raise ApiError(503, "SecretsUnavailable", f"the secrets of {fn.name!r} are not loaded")
        spec = SandboxSpec(
            function=fn.name,
            version=version.sha256,
            handler=version.handler,
            bundle_dir=self._code_dir(version.bundle_sha256),
            memory_mb=cfg.memory_mb,
            timeout_s=cfg.timeout_s,
            env={**cfg.env, **secrets},
            network=cfg.network,
        )
        if len(self._specs) >= _MAX_ENTRIES:
            self._specs.clear()
        self.bundle_of[version.sha256] = version.bundle_sha256
        self._specs[key] = (fn.revision, spec)
        return spec

    def forget(self, function: str) -> None:
        for key in [k for k in self._specs if k[0] == function]:
            del self._specs[key]

    def drop_bundles(self, removed: set[str]) -> None:
        """Forget versions whose code was removed from disk."""
        if removed:
            for vid in [v for v, sha in self.bundle_of.items() if sha in removed]:
                del self.bundle_of[vid]
