"""What every sandbox kind shares: one invocation at a time over a frame channel.

Subclasses say how to stop the sandbox and how to explain its death; the
frame exchange, timeout and crash handling live here once.
"""

from __future__ import annotations

import signal

from edgerun.sandbox.base import SandboxCrashed, SandboxSpec, SandboxTimeout
from edgerun.sandbox.protocol import Failure, FrameError, Invoke, Result, encode_frame
from edgerun.sandbox.replies import check_failure, check_result
from edgerun.sandbox.transport import FrameChannel


class ChannelSandbox:
    def __init__(self, spec: SandboxSpec, channel: FrameChannel) -> None:
        self.spec = spec
        self._channel = channel
        self._dead = False

    @property
    def alive(self) -> bool:
        """False once the channel broke, even between calls: the pool drops it."""
        return not self._dead and not self._channel.broken

    async def invoke(self, msg: Invoke) -> Result | Failure:
        try:
            reply = await self._channel.request(encode_frame(msg), msg.timeout_s)
        except TimeoutError:
            await self.close()
            raise SandboxTimeout(
                f"function {self.spec.function!r} did not finish within its "
                f"{msg.timeout_s:g} s timeout and was stopped"
            ) from None
        except (ConnectionError, FrameError) as exc:
            await self._terminate()
            message = await self._death_message(exc)
            await self.close()
            raise SandboxCrashed(message) from None
        if not isinstance(reply, Result | Failure) or reply.id != msg.id:
            await self.close()
            raise SandboxCrashed("the sandbox broke the protocol and was stopped")
        if isinstance(reply, Failure):
            return check_failure(reply)
        return check_result(reply)

    async def close(self) -> None:
        if self._dead:
            return
        self._dead = True
        self._channel.close()
        await self._terminate()
        await self._cleanup()

    async def _terminate(self) -> None:
        raise NotImplementedError

    async def _cleanup(self) -> None:
        return None

    async def _death_message(self, exc: BaseException) -> str:
        raise NotImplementedError


def describe_status(function: str, status: int | None, memory_mb: int, oom: bool) -> str:
    """A sentence for the caller about how a sandbox died."""
    if oom:
        how = f"exceeded its {memory_mb} MB memory limit and was killed"
    elif status is None:
        how = "stopped before it answered"
    elif status < 0:
        how = f"was killed by signal {signal.Signals(-status).name}"
    else:
        how = f"exited with status {status}"
    return f"the sandbox running {function!r} {how}"
