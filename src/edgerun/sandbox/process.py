"""Sandboxes as fresh worker processes, one interpreter each.

The portable engine (any POSIX system, no privileges): every cold start is a
new Python interpreter running :mod:`edgerun.sandbox.worker` over a
socketpair, with only the function's environment, in its own session so a
timeout kills it and everything it spawned. The zygote engine
(:mod:`edgerun.sandbox.forked`) is faster and isolates far more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

from edgerun.sandbox.base import SandboxInitError, SandboxSpec, sandbox_env
from edgerun.sandbox.channel import ChannelSandbox, describe_status
from edgerun.sandbox.protocol import ErrorInfo, FrameError, InitFailed, Ready
from edgerun.sandbox.transport import FrameChannel, open_channel

START_TIMEOUT_S = 30.0


class ProcessSandbox(ChannelSandbox):
    def __init__(
        self,
        spec: SandboxSpec,
        proc: asyncio.subprocess.Process,
        channel: FrameChannel,
    ) -> None:
        super().__init__(spec, channel)
        self._proc = proc

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return super().alive and self._proc.returncode is None

    async def _terminate(self) -> None:
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            await self._proc.wait()

    async def _death_message(self, exc: BaseException) -> str:
        return describe_status(
            self.spec.function, self._proc.returncode, self.spec.memory_mb, oom=False
        )


class ProcessSandboxFactory:
    """Starts each sandbox as ``python -m edgerun.sandbox.worker``."""

    def __init__(self, log_path: Path, python: str = sys.executable) -> None:
        self._python = python
        self._log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)

    async def open(self) -> None:
        return None

    async def start(self, spec: SandboxSpec) -> ProcessSandbox:
        parent, child = socket.socketpair()
        try:
            with open(self._log_path, "ab") as log:
                proc = await asyncio.create_subprocess_exec(
                    self._python, "-I", "-B", "-m", "edgerun.sandbox.worker",
                    "--fd", str(child.fileno()),
                    "--bundle", str(spec.bundle_dir),
                    "--handler", spec.handler,
                    "--function", spec.function,
                    "--version", spec.version,
                    "--memory-mb", str(spec.memory_mb),
                    pass_fds=(child.fileno(),),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=sandbox_env(
                        spec.function, spec.version, spec.memory_mb, str(spec.bundle_dir), spec.env
                    ),
                    cwd=spec.bundle_dir,
                    start_new_session=True,
                )  # fmt: skip
        finally:
            child.close()
        channel = await open_channel(parent)
        sandbox = ProcessSandbox(spec, proc, channel)
        try:
            hello = await channel.receive(START_TIMEOUT_S)
        except (TimeoutError, ConnectionError, FrameError):
            await sandbox.close()
            raise SandboxInitError(
                ErrorInfo(type="InitError", message="the sandbox died or hung while starting")
            ) from None
        if isinstance(hello, InitFailed):
            await sandbox.close()
            raise SandboxInitError(hello.error)
        if not isinstance(hello, Ready):
            await sandbox.close()
            raise SandboxInitError(ErrorInfo(type="InitError", message="unexpected first frame"))
        return sandbox

    def is_loaded(self, spec: SandboxSpec) -> bool:
        return False

    async def reap_idle(self, now: float | None = None) -> int:
        return 0

    def problem(self) -> str | None:
        return None

    def zygote_mb(self, spec: SandboxSpec) -> int:
        return 0

    def held_mb(self) -> int:
        return 0

    async def shed(self, need_mb: int) -> int:
        return 0

    def loaded_versions(self) -> set[str]:
        return set()

    async def stop_function(self, function: str) -> None:
        return None

    async def close(self) -> None:
        return None
