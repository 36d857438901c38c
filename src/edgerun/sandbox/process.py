"""Sandboxes as fresh worker processes, one interpreter each.

The simple, portable implementation: every cold start is a new Python
interpreter running :mod:`edgerun.sandbox.worker`, talking over a
socketpair. It sees only the function's own environment variables and runs
in its own session so a timeout can kill it and everything it spawned.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

from edgerun.sandbox.base import (
    SandboxCrashed,
    SandboxInitError,
    SandboxSpec,
    SandboxTimeout,
)
from edgerun.sandbox.protocol import (
    ErrorInfo,
    Failure,
    FrameError,
    InitFailed,
    Invoke,
    Ready,
    Result,
    encode_frame,
    read_from_sandbox,
)

START_TIMEOUT_S = 30.0


def sandbox_env(spec: SandboxSpec) -> dict[str, str]:
    """The whole environment of a sandbox: the function's vars plus Lambda's."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "AWS_LAMBDA_FUNCTION_NAME": spec.function,
        "AWS_LAMBDA_FUNCTION_VERSION": spec.version,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
        "LAMBDA_TASK_ROOT": str(spec.bundle_dir),
        **spec.env,
    }


class ProcessSandbox:
    def __init__(
        self,
        spec: SandboxSpec,
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.spec = spec
        self._proc = proc
        self._reader = reader
        self._writer = writer
        self._dead = False

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return not self._dead and self._proc.returncode is None

    async def invoke(self, msg: Invoke) -> Result | Failure:
        try:
            self._writer.write(encode_frame(msg))
            reply = await asyncio.wait_for(read_from_sandbox(self._reader), msg.timeout_s)
        except TimeoutError:
            await self.close()
            raise SandboxTimeout(
                f"function {self.spec.function!r} did not finish within its "
                f"{msg.timeout_s:g} s timeout and was stopped"
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError, FrameError) as exc:
            await self.close()
            raise SandboxCrashed(self._death_message(exc)) from None
        if not isinstance(reply, Result | Failure) or reply.id != msg.id:
            await self.close()
            raise SandboxCrashed("the sandbox broke the protocol and was stopped")
        return reply

    def _death_message(self, exc: BaseException) -> str:
        code = self._proc.returncode
        if code is None:
            how = f"stopped answering ({type(exc).__name__})"
        elif code < 0:
            how = f"was killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exited with status {code}"
        return f"the sandbox running {self.spec.function!r} {how} before it answered"

    async def close(self) -> None:
        self._dead = True
        self._writer.close()
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            await self._proc.wait()


class ProcessSandboxFactory:
    """Starts each sandbox as ``python -m edgerun.sandbox.worker``."""

    def __init__(self, log_path: Path, python: str = sys.executable) -> None:
        self._python = python
        self._log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)

    async def start(self, spec: SandboxSpec) -> ProcessSandbox:
        parent, child = socket.socketpair()
        try:
            with open(self._log_path, "ab") as log:
                proc = await asyncio.create_subprocess_exec(
                    self._python,
                    "-I",
                    "-B",
                    "-m",
                    "edgerun.sandbox.worker",
                    "--fd",
                    str(child.fileno()),
                    "--bundle",
                    str(spec.bundle_dir),
                    "--handler",
                    spec.handler,
                    "--function",
                    spec.function,
                    "--version",
                    spec.version,
                    "--memory-mb",
                    str(spec.memory_mb),
                    pass_fds=(child.fileno(),),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=sandbox_env(spec),
                    cwd=spec.bundle_dir,
                    start_new_session=True,
                )
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        sandbox = ProcessSandbox(spec, proc, reader, writer)
        try:
            hello = await asyncio.wait_for(read_from_sandbox(reader), START_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, FrameError):
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

    async def close(self) -> None:
        return None
