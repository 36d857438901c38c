"""The code that serves invocations inside a sandbox.

Run as ``python -m edgerun.sandbox.worker`` it is a whole worker process (the
portable engine); the zygote engine imports it and calls :func:`serve` in
each forked sandbox.

It imports the handler once, says :class:`Ready` (or :class:`InitFailed`),
then serves one invocation at a time over the channel the node handed it.
Nothing here trusts the user code: every exception is caught and reported
with only the user's own stack frames.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import resource
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgerun.lambda_http import ResponseError, encode_json, to_http_response
from edgerun.sandbox.protocol import (
    ErrorInfo,
    Failure,
    InitFailed,
    Invoke,
    Ready,
    Result,
    recv_invoke,
    send_frame,
)

LOG_LIMIT = 256 * 1024
_TRUNCATED = "\n[edgerun: output truncated at 256 KiB]\n"


class LambdaContext:
    """The ``context`` argument of a Lambda handler."""

    def __init__(
        self,
        function: str,
        version: str,
        memory_mb: int,
        request_id: str,
        timeout_s: float,
        traceparent: str | None = None,
        tracestate: str | None = None,
        qualifier: str | None = None,
    ) -> None:
        self.function_name = function
        self.function_version = version
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = request_id
        # Lambda's shapes, so code that parses them works: the account is all zeros
        # and the region is "edgerun"; the ARN carries the qualifier the caller used.
        arn = f"arn:aws:lambda:edgerun:000000000000:function:{function}"
        self.invoked_function_arn = f"{arn}:{qualifier}" if qualifier else arn
        self.log_group_name = f"/aws/lambda/{function}"
        self.log_stream_name = (
            time.strftime("%Y/%m/%d", time.gmtime()) + f"/[{version[:12]}]{os.getpid()}"
        )
        self.traceparent = traceparent
        """W3C trace context of this invocation (None when there is none): its parent
        is the node's ``run`` span when traces are on, else the caller's span."""
        self.tracestate = tracestate
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class _CappedBuffer(io.TextIOBase):
    """Collects an invocation's output up to a limit, then marks the cut."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._size = 0
        self.truncated = False

    def write(self, s: str) -> int:
        if self._size < LOG_LIMIT:
            piece = s[: LOG_LIMIT - self._size]
            self._parts.append(piece)
            self._size += len(piece)
        if len(s) and self._size >= LOG_LIMIT:
            self.truncated = True
        return len(s)

    def getvalue(self) -> str:
        return "".join(self._parts) + (_TRUNCATED if self.truncated else "")


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a worker knows about the function it serves."""

    function: str
    version: str
    memory_mb: int
    code_root: str


def error_info(exc: BaseException, code_root: str) -> ErrorInfo:
    """The exception with only the user's own stack frames."""
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(code_root)
    ]
    return ErrorInfo(
        type=type(exc).__name__,
        message=str(exc),
        traceback=traceback.format_list(frames),
    )


def load_handler(code_root: str, handler: str) -> Callable[..., Any]:
    module_name, _, attr = handler.rpartition(".")
    sys.path.insert(0, code_root)
    module = importlib.import_module(module_name)
    fn = getattr(module, attr, None)
    if fn is None:
        raise AttributeError(f"module {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise TypeError(f"handler {handler!r} is not callable")
    return fn  # type: ignore[no-any-return]


def _invoke(fn: Callable[..., Any], msg: Invoke, info: WorkerInfo) -> Result | Failure:
    ctx = LambdaContext(
        info.function,
        info.version,
        info.memory_mb,
        msg.id,
        msg.timeout_s,
        msg.traceparent,
        msg.tracestate,
        msg.qualifier,
    )
    buf = _CappedBuffer()
    real_out, real_err = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = buf
    try:
        value = fn(msg.event, ctx)
        if msg.mode == "http":
            status, headers, body = to_http_response(value)
        else:
            status, headers, body = 200, [("content-type", "application/json")], encode_json(value)
    except ResponseError as exc:
        return Failure(
            id=msg.id,
            error=ErrorInfo(type="InvalidResponse", message=str(exc)),
            logs=buf.getvalue(),
        )
    except MemoryError as exc:
        err = error_info(exc, info.code_root)
        err.message = f"the function ran out of memory (its limit is {info.memory_mb} MB)"
        return Failure(id=msg.id, error=err, logs=buf.getvalue())
    except BaseException as exc:  # user code may raise anything, SystemExit included
        return Failure(id=msg.id, error=error_info(exc, info.code_root), logs=buf.getvalue())
    finally:
        sys.stdout, sys.stderr = real_out, real_err
    return Result(id=msg.id, status=status, headers=headers, body=body, logs=buf.getvalue())


def _cpu_budget(timeout_s: float) -> None:
    """Let this invocation use at most its timeout in CPU seconds (SIGXCPU after)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = usage.ru_utime + usage.ru_stime
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CPU, (int(used + timeout_s) + 1, resource.RLIM_INFINITY))


def serve(sock: socket.socket, fn: Callable[..., Any], info: WorkerInfo) -> None:
    """Answer invocations one at a time until the node closes the channel."""
    while True:
        try:
            msg = recv_invoke(sock)
        except EOFError:
            return
        _cpu_budget(msg.timeout_s)
        send_frame(sock, _invoke(fn, msg, info))


def _die_with_parent() -> None:
    """Ask the kernel to kill this process when the node that started it dies."""
    if sys.platform != "linux":
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:
        os._exit(1)


def _limit_memory(memory_mb: int) -> None:
    """Cap the address space: a coarse guard until the memory cgroup takes over."""
    limit = (memory_mb + 256) * 1024 * 1024
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="edgerun-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--handler", required=True)
    parser.add_argument("--function", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--memory-mb", type=int, default=128)
    args = parser.parse_args(argv)
    args.bundle = os.path.realpath(args.bundle)
    sock = socket.socket(fileno=args.fd)
    _die_with_parent()
    _limit_memory(args.memory_mb)
    try:
        fn = load_handler(args.bundle, args.handler)
    except BaseException as exc:
        info = error_info(exc, args.bundle)
        if not info.traceback:
            info.traceback = traceback.format_exception_only(exc)
        send_frame(sock, InitFailed(error=info))
        return
    send_frame(sock, Ready(pid=os.getpid()))
    serve(sock, fn, WorkerInfo(args.function, args.version, args.memory_mb, args.bundle))


if __name__ == "__main__":
    main()
