"""Bundles on a node's disk: fetched by hash from upstream, verified, extracted.

Regions fetch from the control plane; POPs from their regions (falling back
to the control plane). Each bundle is checked against its sha256 before it
is stored, so no upstream has to be trusted with the code's integrity.

The cache counts the disk it uses (zips plus extracted copies) and refuses
to take a bundle past its limit (``code_cache_mb``) with a 507; the node's
collector removes bundles nothing refers to (:meth:`CodeCache.remove`).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import shutil
import zipfile
from pathlib import Path

import httpx

from edgerun.control.bundles import BundleError, BundleStore, extract_bundle, sha256_hex
from edgerun.errors import ApiError
from edgerun.models import SHA256_RE

log = logging.getLogger("edgerun.node.code")


class BundleUnavailable(Exception):
    pass


class CodeCacheFull(ApiError):
    def __init__(self, sha: str, need: int, used: int, limit: int) -> None:
        super().__init__(
            507,
            "CodeCacheFull",
            f"bundle {sha[:12]} needs {_mb(need)} MB of disk but this node's code cache"
            f" holds {_mb(used)} of its {_mb(limit)} MB limit (code_cache_mb)",
        )


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f}"


def _tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def _file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class CodeCache:
    def __init__(
        self,
        root: Path,
        client: httpx.AsyncClient,
        upstreams: list[str],
        *,
        max_uncompressed: int,
        limit_bytes: int = 0,
    ) -> None:
        """``limit_bytes`` bounds zips plus extracted code (0: no limit)."""
        self.zips = BundleStore(root / "zips")
        self._code_root = root / "code"
        self._client = client
        self._upstreams = upstreams
        self._max_uncompressed = max_uncompressed
        self._inflight: dict[str, asyncio.Future[Path]] = {}
        self._ready: set[str] = set()
        """Bundles known to be extracted (a set lookup, not a stat per request)."""
        self.limit_bytes = limit_bytes
        self._sizes: dict[str, int] = {}
        """Disk used per bundle (zip plus extracted copy)."""
        self._code_root.mkdir(parents=True, exist_ok=True)
        for sha in self.cached():
            self._sizes[sha] = self._measure(sha)

    # --- accounting and collection -------------------------------------------
    def _measure(self, sha: str) -> int:
        return _file_bytes(self.zips.path(sha)) + _tree_bytes(self.code_dir(sha))

    @property
    def used_bytes(self) -> int:
        return sum(self._sizes.values())

    def usage(self) -> dict[str, object]:
        """For /v1/status: the disk this cache uses and its limit."""
        return {
            "used_mb": round(self.used_bytes / (1 << 20), 2),
            "limit_mb": round(self.limit_bytes / (1 << 20), 2) if self.limit_bytes else None,
            "bundles": len(self._sizes),
        }

    def cached(self) -> set[str]:
        """Bundles with a zip or an extracted copy on disk."""
        found = {p.name for p in self._code_root.iterdir() if SHA256_RE.match(p.name)}
        if self.zips.root.is_dir():
            found |= {p.stem for p in self.zips.root.glob("*/*.zip") if SHA256_RE.match(p.stem)}
        return found

    def inflight(self) -> set[str]:
        """Bundles being fetched or extracted right now: never collected."""
        return set(self._inflight)

    def remove(self, sha: str) -> None:
        """Drop a bundle's zip and extracted copy (the caller checked nothing uses it).

        The copy is renamed away at once (so nothing new can start from it) and
        deleted in the background."""
        if sha in self._inflight:
            return
        self._ready.discard(sha)
        self._sizes.pop(sha, None)
        self.zips.delete(sha)
        dest = self.code_dir(sha)
        trash = self._code_root / f".trash-{sha}-{os.getpid()}-{id(dest)}"
        try:
            dest.rename(trash)
        except FileNotFoundError:
            return
        asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, trash, True)

    def _check_room(self, sha: str, data: bytes, new_zip: bool) -> int:
        """The bytes taking ``sha`` will add, or CodeCacheFull past the limit."""
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                expands = sum(i.file_size for i in zf.infolist())
        except (zipfile.BadZipFile, ValueError):
            expands = 0  # extraction says what is wrong with it
        need = expands + (len(data) if new_zip else 0)
        used = self.used_bytes
        if self.limit_bytes and used + need > self.limit_bytes:
            raise CodeCacheFull(sha, need, used, self.limit_bytes)
        return need

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
        have_zip = data is not None
        if data is None:
            data = await self._download(sha)
        # Check and charge in one step (no await between): concurrent fetches
        # cannot both take the last of the room.
        self._sizes[sha] = self._sizes.get(sha, 0) + self._check_room(sha, data, not have_zip)
        dest = self.code_dir(sha)
        try:
            if not have_zip:
                await asyncio.to_thread(self.zips.put, data, sha)
            await asyncio.to_thread(
                extract_bundle, data, dest, max_uncompressed=self._max_uncompressed
            )
        except BundleError as exc:
            raise BundleUnavailable(f"bundle {sha} cannot be unpacked: {exc.message}") from None
        finally:
            self._sizes[sha] = await asyncio.to_thread(self._measure, sha)
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
