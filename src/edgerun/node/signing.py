"""SigV4 signing keys a node holds to check Invoke API signatures.

A signing key covers one API key, one day and one region; the node asks the
control plane for it once (node credential) and keeps it for the day, so a
control plane that is down costs nothing to keys already seen today. Unknown
keys are remembered briefly too, so a flood of made-up key ids costs one
question each per minute, not one per request.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

import httpx
import msgspec

MAX_KEPT = 4096
UNKNOWN_TTL_S = 60.0
FETCH_TIMEOUT_S = 3.0


class _Answer(msgspec.Struct):
    signing_key: str


class SigningKeys:
    def __init__(self, client: httpx.AsyncClient, control_url: str) -> None:
        self._client = client
        self._url = control_url.rstrip("/")
        self._kept: OrderedDict[tuple[str, str, str], bytes | float] = OrderedDict()
        """(key id, date, region) -> signing key, or when "unknown" was learnt."""
        self._fetching: dict[tuple[str, str, str], asyncio.Future[bytes | None]] = {}

    async def get(self, key_id: str, date: str, region: str) -> bytes | None:
        """The signing key, or None when the control plane says the key cannot sign
        (or cannot be asked): the caller is then refused."""
        slot = (key_id, date, region)
        kept = self._kept.get(slot)
        if isinstance(kept, bytes):
            self._kept.move_to_end(slot)
            return kept
        if kept is not None and time.monotonic() - kept < UNKNOWN_TTL_S:
            return None
        pending = self._fetching.get(slot)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._fetching[slot] = future
        key: bytes | None = None
        try:
            key, known = await self._fetch(key_id, date, region)
            if key is not None or known:  # a network failure is not remembered
                self._kept[slot] = key if key is not None else time.monotonic()
            while len(self._kept) > MAX_KEPT:
                self._kept.popitem(last=False)
        finally:
            self._fetching.pop(slot, None)
            future.set_result(key)  # those waiting on it are answered, even if cancelled
        return key

    def forget(self, key_id: str) -> None:
        """A revoked key: its signatures stop working now, not tomorrow."""
        for slot in [s for s in self._kept if s[0] == key_id]:
            del self._kept[slot]

    async def _fetch(self, key_id: str, date: str, region: str) -> tuple[bytes | None, bool]:
        """The signing key, and whether the answer is the control plane's word (a 404
        is; a network failure or a 5xx is not, and is not remembered)."""
        try:
            resp = await self._client.get(
                f"{self._url}/v1/node/sigv4/{key_id}",
                params={"date": date, "region": region},
                timeout=FETCH_TIMEOUT_S,
            )
        except httpx.HTTPError:
            return None, False
        if resp.status_code != 200 or len(resp.content) > 4096:
            return None, 400 <= resp.status_code < 500
        try:
            key = bytes.fromhex(msgspec.json.decode(resp.content, type=_Answer).signing_key)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            return None, False
        return (key, True) if len(key) == 32 else (None, False)
