"""Bundles on a node's disk: fetched by hash from upstream, verified, extracted.

Regions fetch from the control plane; POPs from their regions (falling back
to the control plane). Each bundle is checked against its sha256 before it
is stored, so no upstream has to be trusted with the code's integrity.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx

from edgerun.control.bundles import BundleError, BundleStore, extract_bundle, sha256_hex

log = logging.getLogger("edgerun.node.code")


class BundleUnavailable(Exception):
    pass


class CodeCache:
    def __init__(
        self,
        root: Path,
        client: httpx.AsyncClient,
        upstreams: list[str],
        *,
        max_uncompressed: int,
    ) -> None:
        self.zips = BundleStore(root / "zips")
        self._code_root = root / "code"
        self._client = client
        self._upstreams = upstreams
        self._max_uncompressed = max_uncompressed
        self._inflight: dict[str, asyncio.Future[Path]] = {}
        self._ready: set[str] = set()
        """Bundles known to be extracted (a set lookup, not a stat per request)."""

    def code_dir(self, sha: str) -> Path:
        return self._code_root / sha

    def ready(self, sha: str) -> bool:
        if sha in self._ready:
            return True
        if self.code_dir(sha).is_dir():
            self._ready.add(sha)
            return True
        return False

    async def ensure(self, sha: str) -> Path:
        """The extracted code of bundle ``sha``, fetching it once if needed."""
        path = self.code_dir(sha)
        if self.ready(sha):
            return path
        fut = self._inflight.get(sha)
        if fut is None:
            fut = asyncio.ensure_future(self._fetch_and_extract(sha))
            self._inflight[sha] = fut
            fut.add_done_callback(lambda _f: self._inflight.pop(sha, None))
        return await asyncio.shield(fut)

    async def zip_bytes(self, sha: str) -> bytes:
        """The bundle's zip, fetching it if this node does not have it yet."""
        data = self.zips.get(sha)
        if data is None:
            await self.ensure(sha)
            data = self.zips.get(sha)
        if data is None:
            raise BundleUnavailable(f"bundle {sha} is not available")
        return data

    async def _fetch_and_extract(self, sha: str) -> Path:
        data = self.zips.get(sha)
        if data is None:
            data = await self._download(sha)
            await asyncio.to_thread(self.zips.put, data, sha)
        dest = self.code_dir(sha)
        try:
            await asyncio.to_thread(
                extract_bundle, data, dest, max_uncompressed=self._max_uncompressed
            )
        except BundleError as exc:
            raise BundleUnavailable(f"bundle {sha} cannot be unpacked: {exc.message}") from None
        return dest

    async def _download(self, sha: str) -> bytes:
        errors: list[str] = []
        for base in self._upstreams:
            try:
                resp = await self._client.get(f"{base}/v1/bundles/{sha}", timeout=60)
            except httpx.HTTPError as exc:
                errors.append(f"{base}: {type(exc).__name__}")
                continue
            if resp.status_code != 200:
                errors.append(f"{base}: HTTP {resp.status_code}")
                continue
            if sha256_hex(resp.content) != sha:
                errors.append(f"{base}: hash mismatch")
                log.error("bundle %s from %s failed verification", sha, base)
                continue
            return resp.content
        raise BundleUnavailable(f"bundle {sha} could not be fetched: {'; '.join(errors)}")
