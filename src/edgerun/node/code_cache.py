"""Bundles on a node's disk: fetched by hash from upstream, verified, extracted.

Regions fetch from the control plane; POPs from their regions (falling back
to the control plane). Each bundle is checked against its sha256 before it
is stored, so no upstream has to be trusted with the code's integrity.

The cache counts the disk it uses (zips plus extracted copies) and keeps it
under its limit (``code_cache_mb``): a fetch a request waits for evicts the
least recently used bundles nothing pins (a live sandbox, a loaded zygote, a
fetch in flight, a use in the last ``keep_recent_s``), and past that is refused
with a 507; a prefetch stops at a high-water mark and never evicts. The node's
collector removes bundles nothing refers to (:meth:`CodeCache.remove`).

A POP fetches code when it first runs it (or its warmer expects a peak); a
region queues the zip of every version (:meth:`CodeCache.want`), as it
serves them to its POPs, and extracts one when it first runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import httpx

from edgerun.control.bundles import (
    BundleError,
    BundleStore,
    extract_bundle,
    sha256_hex,
    validate_bundle,
)
from edgerun.errors import ApiError
from edgerun.models import SHA256_RE

log = logging.getLogger("edgerun.node.code")

PREFETCH_TRIES = 3
"""A prefetch that fails is tried this many times in all."""
PREFETCH_RETRY_S = 5.0
"""...after this long, then twice as long."""
PREFETCH_HIGH_WATER = 0.8
"""Prefetches fill the cache up to this share of its limit, evicting nothing."""
_KNOWN_SIZES = 4096
"""Sizes remembered of bundles fetched (or refused), to refuse before downloading."""


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
        in_use: Callable[[], set[str] | None] = lambda: None,
        keep_recent_s: float = 30.0,
    ) -> None:
        """``limit_bytes`` bounds zips plus extracted code (0: no limit).
        ``in_use()`` names the bundles live sandboxes and zygotes run (None when
        unknown: then nothing is evicted); a bundle used in the last
        ``keep_recent_s`` is not evicted either (its request may be queued)."""
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
        """Disk used per bundle on disk (zip plus extracted copy)."""
        self._in_use = in_use
        self.keep_recent_s = keep_recent_s
        self._used_at: dict[str, float] = {}
        self._known: dict[str, tuple[int, int]] = {}
        """Bundle -> (expanded bytes, zip bytes), of bundles seen."""
        self._wanted: set[str] = set()
        """Bundles a request (not only a prefetch) waits for: these may evict."""
        self.fetches: dict[str, int] = {"ok": 0, "failed": 0}
        """Downloads (cache misses) by result, and their bytes, for /metrics."""
        self.fetched_bytes = 0
        self._queued: dict[str, None] = {}
        """Prefetches waiting for :meth:`prefetch_forever` (an ordered set)."""
        self._queue_changed = asyncio.Event()
        self._tries: dict[str, int] = {}
        """Failed prefetches of bundles still queued (bounded by the queue)."""
        self._zips_inflight: dict[str, asyncio.Event] = {}
        """Zips a prefetch is downloading: a request for one waits for it."""
        self._used = 0
        """The sum of ``_sizes`` (kept as they change: a region holds 100k bundles)."""
        self._touched: set[str] | None = None
        """While :meth:`scan` runs: bundles charged or removed meanwhile, which its
        older view of the disk must not overwrite."""
        self._code_root.mkdir(parents=True, exist_ok=True)
        # Left by a crash: named now, before anything extracts here, and deleted
        # by the scan (an extraction of this run must never be taken for one).
        self._leftovers = [
            Path(e.path)
            for e in os.scandir(self._code_root)
            if e.name.startswith((".trash-", ".extract-"))
        ]

    async def scan(self) -> None:
        """Count what a previous run left on disk, in a thread (the node serves
        meanwhile; until it is done, this cache may go slightly over its limit)."""
        self._touched = set()
        try:
            found = await asyncio.to_thread(self._scan)
            for sha, size in found.items():
                if sha not in self._sizes and sha not in self._touched:
                    self._size(sha, size)
        finally:
            self._touched = None

    def _size(self, sha: str, size: int | None) -> None:
        """Set (None: forget) a bundle's disk use, keeping the total."""
        if self._touched is not None:
            self._touched.add(sha)
        self._used -= self._sizes.pop(sha, 0)
        if size:
            self._sizes[sha] = size
            self._used += size

    def _scan(self) -> dict[str, int]:
        """What a previous run left on disk, measured: one stat per zip, and a walk
        of each extracted copy (a region holds a zip of every bundle, and few
        extracted: at 100k bundles this is what start-up waits for)."""
        for path in self._leftovers:
            shutil.rmtree(path, ignore_errors=True)
        sizes: dict[str, int] = {}
        shards: list[os.DirEntry[str]] = (
            list(os.scandir(self.zips.root)) if self.zips.root.is_dir() else []
        )
        for shard in shards:
            with contextlib.suppress(OSError):  # a shard removed meanwhile, say
                for entry in os.scandir(shard.path):
                    sha = entry.name.removesuffix(".zip")
                    if entry.name.endswith(".zip") and SHA256_RE.match(sha):
                        with contextlib.suppress(OSError):
                            sizes[sha] = entry.stat(follow_symlinks=False).st_size
        for entry in os.scandir(self._code_root):
            if SHA256_RE.match(entry.name):
                sizes[entry.name] = sizes.get(entry.name, 0) + _tree_bytes(Path(entry.path))
        return sizes

    # --- accounting and collection -------------------------------------------
    def _measure(self, sha: str) -> int:
        return _file_bytes(self.zips.path(sha)) + _tree_bytes(self.code_dir(sha))

    @property
    def used_bytes(self) -> int:
        return self._used

    def usage(self) -> dict[str, object]:
        """For /v1/status: the disk this cache uses and its limit."""
        return {
            "used_mb": round(self.used_bytes / (1 << 20), 2),
            "limit_mb": round(self.limit_bytes / (1 << 20), 2) if self.limit_bytes else None,
            "bundles": len(self._sizes),
        }

    def cached(self) -> set[str]:
        """Bundles with a zip or an extracted copy on disk (or being written)."""
        return set(self._sizes)

    def inflight(self) -> set[str]:
        """Bundles being fetched or extracted right now: never collected."""
        return set(self._inflight) | set(self._zips_inflight)

    def remove(self, sha: str) -> None:
        """Drop a bundle's zip and extracted copy (the caller checked nothing uses it).

        The copy is renamed away at once (so nothing new can start from it) and
        deleted in the background."""
        if sha in self._inflight or sha in self._zips_inflight:
            return
        if self._touched is not None:
            self._touched.add(sha)
        self._ready.discard(sha)
        self._size(sha, None)
        self._used_at.pop(sha, None)
        self.zips.delete(sha)
        dest = self.code_dir(sha)
        trash = self._code_root / f".trash-{sha}-{os.getpid()}-{id(dest)}"
        try:
            dest.rename(trash)
        except FileNotFoundError:
            return
        asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, trash, True)

    def _take_room(self, sha: str, need: int) -> None:
        """Make room for ``need`` more bytes, or raise CodeCacheFull. A prefetch
        stops at the high-water mark; a fetch a request waits for evicts the
        least recently used bundles nothing pins. Synchronous: concurrent
        fetches cannot both take the last of the room."""
        if not self.limit_bytes:
            return
        used = self.used_bytes
        if sha not in self._wanted:
            if used + need > self.limit_bytes * PREFETCH_HIGH_WATER:
                raise CodeCacheFull(sha, need, used, self.limit_bytes)
            return
        if used + need > self.limit_bytes:
            for victim in self._evictable():
                log.info("evicting bundle %s for %s", victim[:12], sha[:12])
                used -= self._sizes.get(victim, 0)
                self.remove(victim)
                if used + need <= self.limit_bytes:
                    break
        if used + need > self.limit_bytes:
            raise CodeCacheFull(sha, need, used, self.limit_bytes)

    def _evictable(self) -> list[str]:
        """Bundles that may be evicted, least recently used first."""
        pinned = self._in_use()
        if pinned is None:
            return []  # what runs is not known: evict nothing
        pinned = pinned | self.inflight()
        recent = time.monotonic() - self.keep_recent_s
        return sorted(
            (s for s in self._sizes if s not in pinned and self._used_at.get(s, 0.0) <= recent),
            key=lambda s: self._used_at.get(s, 0.0),
        )

    def _expanded_bytes(self, sha: str, data: bytes) -> int:
        """What the bundle expands to (in a worker thread: it reads the whole zip)."""
        try:
            return sum(
                i.file_size for i in validate_bundle(data, max_uncompressed=self._max_uncompressed)
            )
        except BundleError as exc:
            raise BundleUnavailable(f"bundle {sha} cannot be unpacked: {exc.message}") from None

    def code_dir(self, sha: str) -> Path:
        return self._code_root / sha

    def ready(self, sha: str) -> bool:
        if sha in self._ready:
            return True
        if self.code_dir(sha).is_dir():
            self._ready.add(sha)
            return True
        return False

    async def ensure(self, sha: str, *, prefetch: bool = False) -> Path:
        """The extracted code of bundle ``sha``, fetching it once if needed.

        A ``prefetch`` (nobody waits for it) never evicts other bundles."""
        path = self.code_dir(sha)
        if not prefetch:
            self._used_at[sha] = time.monotonic()
        if self.ready(sha):
            return path
        if not prefetch:
            self._wanted.add(sha)  # a prefetch in flight may now evict for it
        fut = self._inflight.get(sha)
        if fut is None:
            fut = asyncio.ensure_future(self._fetch_and_extract(sha))
            self._inflight[sha] = fut
            fut.add_done_callback(lambda _f: self._done(sha))
        return await asyncio.shield(fut)

    def want(self, shas: Iterable[str]) -> None:
        """Queue prefetches of zips (a region: the code its POPs may forward),
        fetched a few at a time by :meth:`prefetch_forever` so a burst of deploys
        never floods the node with downloads."""
        for sha in shas:
            if sha not in self._ready and sha not in self._inflight:
                self._queued[sha] = None
        if self._queued:
            self._queue_changed.set()

    def unwant(self, shas: Iterable[str]) -> None:
        for sha in shas:
            self._queued.pop(sha, None)
            self._tries.pop(sha, None)

    @property
    def queued(self) -> int:
        return len(self._queued)

    @property
    def retrying(self) -> int:
        """Failed prefetches waiting for another try."""
        return len(self._tries)

    async def prefetch_forever(self, concurrency: int = 2) -> None:
        await asyncio.gather(*(self._prefetch_worker() for _ in range(concurrency)))

    async def _prefetch_worker(self) -> None:
        while True:
            while not self._queued:
                self._queue_changed.clear()
                await self._queue_changed.wait()
            sha = next(iter(self._queued))
            del self._queued[sha]
            if sha in self._sizes or sha in self._inflight or sha in self._zips_inflight:
                self._tries.pop(sha, None)
                continue
            try:
                await self._keep_zip(sha)
                self._tries.pop(sha, None)
            except CodeCacheFull as exc:
                log.warning("prefetching stopped, %d left: %s", len(self._queued), exc.message)
                self._queued.clear()  # the rest is fetched when asked for
                self._tries.clear()
            except (BundleUnavailable, ApiError) as exc:
                self._again(sha, str(exc))
            except Exception as exc:  # a full disk, say: the next one may fare better
                log.exception("prefetch of %s failed", sha[:12])
                self._again(sha, str(exc))

    def _again(self, sha: str, why: str) -> None:
        """A failed prefetch goes to the back of the queue, up to a few times."""
        tries = self._tries.get(sha, 0) + 1
        if tries < PREFETCH_TRIES:
            self._tries[sha] = tries
            # Later, not at once: an upstream restarting for a few seconds must
            # not use up every try of a short queue.
            asyncio.get_running_loop().call_later(PREFETCH_RETRY_S * tries, self.want, [sha])
            return
        self._tries.pop(sha, None)
        log.warning("prefetch of %s failed %d times, left for a request: %s", sha[:12], tries, why)

    async def _keep_zip(self, sha: str) -> None:
        """Download a bundle and keep its zip, not extracted: a region serves zips
        to its POPs, and extracts one when it first runs it (half the work and
        far fewer files for the code it only holds)."""
        self._zips_inflight[sha] = done = asyncio.Event()
        try:
            known = self._known.get(sha)
            if known is not None:
                self._take_room(sha, known[1])
            data = await self._download(sha)
            self._take_room(sha, len(data))  # a prefetch: up to the high-water mark
            self._size(sha, self._sizes.get(sha, 0) + len(data))
            try:
                await asyncio.to_thread(self.zips.put, data, sha)
            finally:
                self._size(sha, await asyncio.to_thread(self._measure, sha))
        finally:
            del self._zips_inflight[sha]
            done.set()

    def _done(self, sha: str) -> None:
        self._inflight.pop(sha, None)
        self._wanted.discard(sha)

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
        prefetching = self._zips_inflight.get(sha)
        if prefetching is not None:  # not twice the download, nor twice the charge
            await prefetching.wait()
        data = self.zips.get(sha)
        have_zip = data is not None
        if data is None:
            known = self._known.get(sha)
            if known is not None:  # refuse before downloading what would not fit
                self._take_room(sha, sum(known))
            data = await self._download(sha)
        expands = await asyncio.to_thread(self._expanded_bytes, sha, data)
        self._known[sha] = (expands, len(data))
        if len(self._known) > _KNOWN_SIZES:
            del self._known[next(iter(self._known))]
        need = expands + (0 if have_zip else len(data))
        # Check and charge in one step (no await between).
        self._take_room(sha, need)
        self._size(sha, self._sizes.get(sha, 0) + need)
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
            self._size(sha, await asyncio.to_thread(self._measure, sha))
        return dest

    async def _get(self, url: str) -> httpx.Response:
        """One GET, tried once more on a fresh connection when the first broke: a
        kept-alive connection the server closed as it was reused is not an outage."""
        try:
            return await self._client.get(url, timeout=60)
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
            return await self._client.get(url, timeout=60)

    async def _download(self, sha: str) -> bytes:
        errors: list[str] = []
        for base in self._upstreams:
            try:
                resp = await self._get(f"{base}/v1/bundles/{sha}")
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
            self.fetches["ok"] += 1
            self.fetched_bytes += len(resp.content)
            return resp.content
        self.fetches["failed"] += 1
        raise BundleUnavailable(f"bundle {sha} could not be fetched: {'; '.join(errors)}")
