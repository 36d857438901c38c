"""The interface between a node's pool and whatever runs user code.

The pool only knows :class:`SandboxFactory` and :class:`Sandbox`; the first
implementation starts a fresh interpreter per worker
(:mod:`edgerun.sandbox.process`), and a zygote-based one can replace it
without the pool or the node changing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgerun.sandbox.protocol import ErrorInfo, Failure, Invoke, Result


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """Everything needed to start a sandbox for one function version."""

    function: str
    version: str
    handler: str
    bundle_dir: Path
    memory_mb: int
    timeout_s: float
    env: dict[str, str] = field(default_factory=dict)
    network: bool = False

    key: str = field(init=False, repr=False, compare=False)
    """Sandboxes are interchangeable exactly when their keys are equal."""

    def __post_init__(self) -> None:
        h = hashlib.sha256()
        for part in (
            self.function,
            self.version,
            self.handler,
            str(self.memory_mb),
            str(self.network),
            *sorted(f"{k}={v}" for k, v in self.env.items()),
        ):
            h.update(part.encode() + b"\0")
        object.__setattr__(self, "key", h.hexdigest()[:32])


def sandbox_env(
    function: str, version: str, memory_mb: int, task_root: str, env: dict[str, str]
) -> dict[str, str]:
    """The whole environment user code sees: its own vars plus Lambda's."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "AWS_LAMBDA_FUNCTION_NAME": function,
        "AWS_LAMBDA_FUNCTION_VERSION": version,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
        "LAMBDA_TASK_ROOT": task_root,
        **env,
    }


class SandboxError(Exception):
    status = 500
    type = "SandboxError"


class SandboxInitError(SandboxError):
    """The function could not be loaded (import error, missing handler...)."""

    type = "InitError"

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(f"{info.type}: {info.message}")
        self.info = info


class SandboxTimeout(SandboxError):
    status = 504
    type = "Timeout"


class SandboxCrashed(SandboxError):
    status = 502
    type = "SandboxCrashed"


class Sandbox(Protocol):
    spec: SandboxSpec

    @property
    def alive(self) -> bool: ...

    async def invoke(self, msg: Invoke) -> Result | Failure:
        """Run one invocation; raise SandboxTimeout or SandboxCrashed when it fails."""
        ...

    async def close(self) -> None: ...


class SandboxFactory(Protocol):
    async def open(self) -> None:
        """Start whatever the factory needs (called once at node start-up)."""
        ...

    async def start(self, spec: SandboxSpec) -> Sandbox:
        """Start a ready sandbox, or raise SandboxInitError."""
        ...

    def is_loaded(self, spec: SandboxSpec) -> bool:
        """A start of this spec would be cheap (its code is loaded already)."""
        ...

    async def reap_idle(self, now: float | None = None) -> int:
        """Release per-version resources nobody used for a while."""
        ...

    def problem(self) -> str | None:
        """Why the engine cannot start sandboxes now (shown by health), or None."""
        ...

    def zygote_mb(self, spec: SandboxSpec) -> int:
        """Memory a start of ``spec`` would first spend loading its zygote (0
        when it is loaded): the pool holds room for it before the start."""
        ...

    def held_mb(self) -> int:
        """Memory held outside sandboxes (loaded zygotes and their /tmp).

        The pool counts it against its budget: every byte a function can hold
        is charged somewhere."""
        ...

    async def shed(self, need_mb: int) -> int:
        """Stop zygotes that have no live sandbox, least recently used first,
        until ``need_mb`` are freed; returns the MB freed."""
        ...

    def loaded_versions(self) -> set[str]:
        """Versions with a loaded zygote: their code must stay on disk."""
        ...

    async def stop_function(self, function: str) -> None:
        """Stop every zygote of ``function``, and with them its sandboxes."""
        ...

    async def close(self) -> None: ...
