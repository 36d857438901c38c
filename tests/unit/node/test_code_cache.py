"""The node's code cache: disk accounting, its limit, and removal."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from tests.conftest import make_zip

from edgerun.control.bundles import sha256_hex
from edgerun.errors import ApiError
from edgerun.node import code_cache
from edgerun.node.code_cache import BundleUnavailable, CodeCache

pytestmark = pytest.mark.anyio

MB = 1 << 20


def bundle(name: str, size: int) -> bytes:
    return make_zip({"main.py": f"# {name}\n", "blob.bin": b"x" * size})


def cache(
    tmp_path: Path,
    bundles: dict[str, bytes],
    limit_mb: int = 0,
    downloads: list[str] | None = None,
    **kw: Any,
) -> CodeCache:
    def serve(request: httpx.Request) -> httpx.Response:
        sha = request.url.path.rsplit("/", 1)[-1]
        if downloads is not None:
            downloads.append(sha)
        data = bundles.get(sha)
        return httpx.Response(200, content=data) if data else httpx.Response(404)

    client = httpx.AsyncClient(transport=httpx.MockTransport(serve))
    return CodeCache(
        tmp_path, client, ["http://up"], max_uncompressed=100 * MB, limit_bytes=limit_mb * MB, **kw
    )


def bundles(*names: str, size: int = 2 * MB) -> dict[str, bytes]:
    """Stored (uncompressed) zips: each takes about twice ``size`` on disk."""
    return {sha256_hex(b): b for b in (bundle(n, size) for n in names)}


async def test_the_cache_counts_the_disk_its_zips_and_code_use(tmp_path: Path) -> None:
    data = bundle("a", MB)
    sha = sha256_hex(data)
    code = cache(tmp_path, {sha: data})

    await code.ensure(sha)

    assert MB + len(data) <= code.used_bytes < 2 * MB + len(data)
    assert code.usage()["bundles"] == 1
    # A restarted node measures what is on disk.
    again = cache(tmp_path, {})
    await again.scan()
    assert again.used_bytes == code.used_bytes and again.cached() == {sha}


async def test_extracting_past_the_limit_is_refused_with_a_507(tmp_path: Path) -> None:
    first, second = bundle("a", 2 * MB), bundle("b", 2 * MB)
    shas = {sha256_hex(first): first, sha256_hex(second): second}
    code = cache(tmp_path, shas, limit_mb=5)
    a, b = shas

    await code.ensure(a)
    with pytest.raises(ApiError) as exc:
        await code.ensure(b)

    assert exc.value.status == 507
    assert exc.value.type == "CodeCacheFull"
    assert "code_cache_mb" in exc.value.message
    assert not code.ready(b)
    assert code.used_bytes <= 5 * MB


async def test_removing_a_bundle_frees_its_disk_and_room_for_another(tmp_path: Path) -> None:
    first, second = bundle("a", 2 * MB), bundle("b", 2 * MB)
    shas = {sha256_hex(first): first, sha256_hex(second): second}
    code = cache(tmp_path, shas, limit_mb=5)
    a, b = shas
    await code.ensure(a)

    code.remove(a)

    assert code.used_bytes == 0
    assert not code.ready(a)
    assert not code.code_dir(a).exists()
    assert code.cached() == set()
    await code.ensure(b)
    assert code.ready(b)


async def test_a_request_evicts_the_least_recently_used_bundles_nothing_pins(
    tmp_path: Path,
) -> None:
    shas = bundles("a", "b", "c", "d")
    a, b, c, d = shas
    pinned = {c}
    code = cache(tmp_path, shas, limit_mb=13, in_use=lambda: pinned, keep_recent_s=0)
    for sha in (a, b, c):
        await code.ensure(sha)
    await code.ensure(a)  # b is now the least recently used

    await code.ensure(d)

    assert code.ready(a) and code.ready(c) and code.ready(d)
    assert not code.ready(b)
    assert code.cached() == {a, c, d}
    assert code.used_bytes <= 13 * MB


async def test_pinned_or_recently_used_bundles_are_not_evicted(tmp_path: Path) -> None:
    shas = bundles("a", "b", "c")
    a, b, c = shas
    code = cache(tmp_path, shas, limit_mb=9, in_use=lambda: {a}, keep_recent_s=60)
    await code.ensure(a)
    await code.ensure(b)  # used just now: its request may still be queued

    with pytest.raises(ApiError) as exc:
        await code.ensure(c)

    assert exc.value.status == 507
    assert code.ready(a) and code.ready(b)


async def test_nothing_is_evicted_while_what_runs_is_unknown(tmp_path: Path) -> None:
    shas = bundles("a", "b")
    a, b = shas
    code = cache(tmp_path, shas, limit_mb=5, in_use=lambda: None, keep_recent_s=0)
    await code.ensure(a)

    with pytest.raises(ApiError):
        await code.ensure(b)

    assert code.ready(a)


async def test_prefetches_stop_at_the_high_water_mark_and_never_evict(tmp_path: Path) -> None:
    shas = bundles("a", "b", "c", size=MB + MB // 2)  # about 3 MB each
    a, b, c = shas
    code = cache(tmp_path, shas, limit_mb=10, in_use=lambda: set(), keep_recent_s=0)
    await code.ensure(a, prefetch=True)
    await code.ensure(b, prefetch=True)

    with pytest.raises(ApiError) as exc:
        await code.ensure(c, prefetch=True)  # past 80% of the limit

    assert exc.value.status == 507
    assert code.ready(a) and code.ready(b)
    await code.ensure(c)  # a request may use the rest of the limit
    assert code.cached() == {a, b, c}


async def test_a_refused_bundle_is_not_downloaded_again(tmp_path: Path) -> None:
    shas = bundles("a", "b")
    a, b = shas
    downloads: list[str] = []
    code = cache(tmp_path, shas, limit_mb=5, downloads=downloads, in_use=lambda: {a})
    await code.ensure(a)

    for _ in range(3):
        with pytest.raises(ApiError):
            await code.ensure(b)

    assert downloads == [a, b]


async def test_a_bundle_that_is_not_a_zip_is_refused_without_charging(tmp_path: Path) -> None:
    data = b"not a zip"
    sha = sha256_hex(data)
    code = cache(tmp_path, {sha: data}, limit_mb=5)

    with pytest.raises(BundleUnavailable, match="cannot be unpacked"):
        await code.ensure(sha)

    assert code.used_bytes == 0
    assert code.cached() == set()


async def test_trash_left_by_a_crash_is_swept_at_start(tmp_path: Path) -> None:
    for name in (".trash-" + "a" * 64 + "-1-2", ".extract-xyz"):
        (tmp_path / "code" / name / "sub").mkdir(parents=True)
        (tmp_path / "code" / name / "sub" / "f").write_bytes(b"x" * 100)

    code = cache(tmp_path, {})
    await code.scan()

    assert list((tmp_path / "code").iterdir()) == []
    assert code.used_bytes == 0


async def _drained(code: CodeCache, shas: set[str]) -> None:
    """Run the prefetch workers until nothing is queued or in flight."""
    task = asyncio.create_task(code.prefetch_forever(concurrency=2))
    try:
        with anyio.fail_after(10):
            while code.queued or code.retrying or code.inflight() or not shas <= code.cached():
                await asyncio.sleep(0.01)
    finally:
        task.cancel()


async def test_a_wanted_bundle_is_kept_as_a_zip_until_it_runs(tmp_path: Path) -> None:
    shas = bundles("a", "b", size=1000)
    a, b = shas
    code = cache(tmp_path, shas)

    code.want([a, b])
    await _drained(code, {a, b})

    assert code.zips.has(a) and code.zips.has(b)
    assert not code.ready(a), "held, not extracted"
    await code.ensure(a)  # the first run extracts what is on disk
    assert code.ready(a)


async def test_prefetches_run_a_few_at_a_time(tmp_path: Path) -> None:
    shas = bundles(*"abcdefgh", size=1000)
    running, most = 0, 0

    async def serve(request: httpx.Request) -> httpx.Response:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        return httpx.Response(200, content=shas[request.url.path.rsplit("/", 1)[-1]])

    client = httpx.AsyncClient(transport=httpx.MockTransport(serve))
    code = CodeCache(tmp_path, client, ["http://up"], max_uncompressed=100 * MB)

    code.want(shas)
    await _drained(code, set(shas))

    assert most == 2


async def test_a_full_cache_stops_prefetching_without_evicting(tmp_path: Path) -> None:
    shas = bundles("a", "b", "c", "d", size=2 * MB)  # about 2 MB per zip
    downloads: list[str] = []
    code = cache(tmp_path, shas, limit_mb=5, downloads=downloads, in_use=lambda: set())

    code.want(shas)
    await _drained(code, set())

    kept = code.cached()
    assert 1 <= len(kept) < 4 and code.used_bytes <= 4 * MB  # the 80% high-water mark
    assert code.queued == 0 and len(downloads) <= len(kept) + 2


async def test_unwanted_bundles_leave_the_queue(tmp_path: Path) -> None:
    shas = bundles("a", "b", size=1000)
    a, b = shas
    downloads: list[str] = []
    code = cache(tmp_path, shas, downloads=downloads)

    code.want([a, b])
    code.unwant([a])
    await _drained(code, {b})

    assert downloads == [b]


async def test_a_failed_prefetch_is_tried_again_a_few_times(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(code_cache, "PREFETCH_RETRY_S", 0.01)
    shas = bundles("a", "b", size=1000)
    a, b = shas
    calls: list[str] = []

    def serve(request: httpx.Request) -> httpx.Response:
        sha = request.url.path.rsplit("/", 1)[-1]
        calls.append(sha)
        if sha == a and calls.count(a) < 3:
            return httpx.Response(503)
        return httpx.Response(200, content=shas[sha])

    client = httpx.AsyncClient(transport=httpx.MockTransport(serve))
    code = CodeCache(tmp_path, client, ["http://up"], max_uncompressed=100 * MB)

    code.want([a, b])
    await _drained(code, {a, b})

    assert calls.count(a) == 3 and code.zips.has(a)


async def test_a_prefetch_that_keeps_failing_is_left_for_a_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(code_cache, "PREFETCH_RETRY_S", 0.01)
    data = bundle("a", 1000)
    a = sha256_hex(data)
    calls: list[str] = []

    def serve(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(503)

    client = httpx.AsyncClient(transport=httpx.MockTransport(serve))
    code = CodeCache(tmp_path, client, ["http://up"], max_uncompressed=100 * MB)

    code.want([a])
    await _drained(code, set())

    assert len(calls) == 3 and not code.zips.has(a) and code.queued == 0


async def test_a_connection_broken_on_reuse_is_tried_once_more(tmp_path: Path) -> None:
    data = bundle("a", 1000)
    a = sha256_hex(data)
    calls = 0

    def serve(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise httpx.ReadError("connection closed by the server")
        return httpx.Response(200, content=data)

    client = httpx.AsyncClient(transport=httpx.MockTransport(serve))
    code = CodeCache(tmp_path, client, ["http://up"], max_uncompressed=100 * MB)

    await code.ensure(a)

    assert calls == 2 and code.ready(a)


async def test_a_scan_never_deletes_an_extraction_of_this_run(tmp_path: Path) -> None:
    code = cache(tmp_path, {})
    (tmp_path / "code" / ".extract-live" / "lib").mkdir(parents=True)  # after start

    await code.scan()

    assert (tmp_path / "code" / ".extract-live" / "lib").is_dir()


async def test_a_scan_does_not_bring_back_a_bundle_removed_meanwhile(tmp_path: Path) -> None:
    data = bundle("a", 1000)
    sha = sha256_hex(data)
    await cache(tmp_path, {sha: data}).ensure(sha)  # a previous run left it
    again = cache(tmp_path, {sha: data})
    measured, go = threading.Event(), threading.Event()
    real = again._scan

    def slow_scan() -> dict[str, int]:
        found = real()  # sees the bundle on disk
        measured.set()
        go.wait(5)
        return found

    again._scan = slow_scan  # type: ignore[method-assign]
    scanning = asyncio.create_task(again.scan())
    with anyio.fail_after(5):
        while not measured.is_set():
            await asyncio.sleep(0.01)
    await again.ensure(sha)  # a request uses it meanwhile...
    again.remove(sha)  # ...and it is collected
    go.set()
    await scanning

    assert again.cached() == set() and again.used_bytes == 0
