"""The secrets of the functions this node runs: fetched with the node's credential,
held in memory only, handed to sandboxes as environment variables.

A function gets the secrets it names in ``secrets``; they are fetched the
first time the node acts on a revision of it (a secret change bumps the
function's revision, so the next call refetches). Nothing here is written to
disk: a node restarted while the control plane is down cannot run functions
that need secrets until it is back, and says so (503).
"""

from __future__ import annotations

import asyncio
import logging

import httpx
import msgspec

from edgerun.errors import ApiError
from edgerun.models import FunctionRecord

log = logging.getLogger("edgerun.node.secrets")
_MAX_ANSWER_BYTES = 1 << 20


class _Answer(msgspec.Struct):
    values: dict[str, str]


_decode = msgspec.json.Decoder(_Answer).decode


def unavailable(name: str, why: str) -> ApiError:
    return ApiError(503, "SecretsUnavailable", f"the secrets of {name!r} are unavailable: {why}")


class SecretCache:
    def __init__(self, client: httpx.AsyncClient, control_url: str) -> None:
        self._client = client
        self._url = control_url.rstrip("/")
        self._values: dict[str, tuple[int, dict[str, str]]] = {}
        self._fetching: dict[str, asyncio.Future[None]] = {}

    def cached(self, fn: FunctionRecord) -> dict[str, str] | None:
        """The function's secrets as of its current revision; None until fetched."""
        if not fn.config.secrets:
            return {}
        held = self._values.get(fn.name)
        return held[1] if held is not None and held[0] == fn.revision else None

    async def ensure(self, fn: FunctionRecord) -> None:
        """Fetch the secrets of this revision unless held (one fetch at a time per function)."""
        if self.cached(fn) is not None:
            return
        pending = self._fetching.get(fn.name)
        if pending is not None:
            await asyncio.shield(pending)
            if self.cached(fn) is not None:
                return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._fetching[fn.name] = future
        try:
            self._values[fn.name] = (fn.revision, await self._fetch(fn))
        finally:
            self._fetching.pop(fn.name, None)
            future.set_result(None)

    async def _fetch(self, fn: FunctionRecord) -> dict[str, str]:
        try:
            resp = await self._client.get(f"{self._url}/v1/node/secrets/{fn.name}", timeout=10.0)
        except httpx.HTTPError as exc:
            return self._stale(fn, f"the control plane is unreachable ({type(exc).__name__})")
        if resp.status_code != 200 or len(resp.content) > _MAX_ANSWER_BYTES:
            return self._stale(fn, f"the control plane answered HTTP {resp.status_code}")
        try:
            values = _decode(resp.content).values
        except (msgspec.DecodeError, msgspec.ValidationError):
            return self._stale(fn, "the control plane's answer is malformed")
        missing = [k for k in fn.config.secrets if k not in values]
        if missing:
            raise unavailable(fn.name, f"not set: {', '.join(sorted(missing))}")
        return {k: values[k] for k in fn.config.secrets}

    def _stale(self, fn: FunctionRecord, why: str) -> dict[str, str]:
        """Keep serving with the last values fetched (static stability), if any."""
        held = self._values.get(fn.name)
        if held is None:
            raise unavailable(fn.name, why)
        log.warning("serving %s with secrets of revision %d: %s", fn.name, held[0], why)
        return held[1]

    def forget(self, function: str) -> None:
        self._values.pop(function, None)
