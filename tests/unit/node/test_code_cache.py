"""The node's code cache: disk accounting, its limit, and removal."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from tests.conftest import make_zip

from edgerun.control.bundles import sha256_hex
from edgerun.errors import ApiError
from edgerun.node.code_cache import CodeCache

pytestmark = pytest.mark.anyio

MB = 1 << 20


def bundle(name: str, size: int) -> bytes:
    return make_zip({"main.py": f"# {name}\n", "blob.bin": b"x" * size})


def cache(tmp_path: Path, bundles: dict[str, bytes], limit_mb: int = 0) -> CodeCache:
    def serve(request: httpx.Request) -> httpx.Response:
        data = bundles.get(request.url.path.rsplit("/", 1)[-1])
        return httpx.Response(200, content=data) if data else httpx.Response(404)

    client = httpx.AsyncClient(transport=httpx.MockTransport(serve))
    return CodeCache(
        tmp_path, client, ["http://up"], max_uncompressed=100 * MB, limit_bytes=limit_mb * MB
    )


async def test_the_cache_counts_the_disk_its_zips_and_code_use(tmp_path: Path) -> None:
    data = bundle("a", MB)
    sha = sha256_hex(data)
    code = cache(tmp_path, {sha: data})

    await code.ensure(sha)

    assert MB + len(data) <= code.used_bytes < 2 * MB + len(data)
    assert code.usage()["bundles"] == 1
    # A restarted node measures what is on disk.
    assert cache(tmp_path, {}).used_bytes == code.used_bytes


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
