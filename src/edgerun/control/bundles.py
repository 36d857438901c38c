"""Content-addressed bundle storage and the checks every upload must pass.

A bundle is a zip of code plus vendored dependencies. Since it comes from a
user, it is inspected before anything trusts it: no absolute paths, no ``..``
components, no symlinks (the only safe link is no link), and a bounded
uncompressed size and entry count so a zip bomb cannot fill a node's disk.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from edgerun.errors import ApiError
from edgerun.models import SHA256_RE

DEFAULT_MAX_UNCOMPRESSED = 250 * 1024 * 1024
DEFAULT_MAX_ENTRIES = 20_000


class BundleError(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(400, "InvalidBundle", message)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def validate_bundle(
    data: bytes,
    *,
    max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> list[zipfile.ZipInfo]:
    """Return the zip's entries, or raise :class:`BundleError` saying why not."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise BundleError(f"bundle is not a valid zip file: {exc}") from None
    infos = zf.infolist()
    if not infos:
        raise BundleError("bundle is empty")
    if len(infos) > max_entries:
        raise BundleError(f"bundle has {len(infos)} entries, more than the limit of {max_entries}")
    total = 0
    for info in infos:
        _check_entry_name(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise BundleError(
                f"bundle entry {info.filename!r} is a symbolic link; links are refused"
            )
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise BundleError(f"bundle entry {info.filename!r} is not a regular file or folder")
        total += info.file_size
        if total > max_uncompressed:
            raise BundleError(
                f"bundle expands to more than {max_uncompressed} bytes (the uncompressed limit); "
                "refusing it as a possible zip bomb"
            )
    return infos


def _check_entry_name(name: str) -> None:
    if "\\" in name or "\x00" in name:
        raise BundleError(f"bundle entry {name!r} has a backslash or NUL in its path")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise BundleError(f"bundle entry {name!r} has an absolute path")
    if any(part == ".." for part in PurePosixPath(name).parts):
        raise BundleError(f"bundle entry {name!r} escapes the bundle with '..'")


def extract_bundle(data: bytes, dest: Path, *, max_uncompressed: int) -> None:
    """Extract a bundle into ``dest`` atomically, enforcing sizes as it streams.

    The size recorded in the zip header is a claim, not a fact, so the real
    byte count is checked while writing.
    """
    infos = validate_bundle(data, max_uncompressed=max_uncompressed)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        written = 0
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in infos:
                written += _extract_entry(zf, info, tmp, max_uncompressed - written)
        for root, dirs, _files in os.walk(tmp):
            for d in dirs:
                Path(root, d).chmod(0o755)
        tmp.chmod(0o755)
        try:
            tmp.rename(dest)
        except OSError:
            if not dest.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _extract_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, root: Path, budget: int) -> int:
    """Write one entry under ``root``; returns its size. Corrupt data is a BundleError."""
    target = root / info.filename
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with zf.open(info) as src, open(target, "wb") as out:
            while chunk := src.read(1 << 16):
                written += len(chunk)
                if written > budget:
                    raise BundleError("bundle expands past its size limit while extracting")
                out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise BundleError(f"bundle entry {info.filename!r} is corrupt: {exc}") from None
    target.chmod(0o644)
    return written


class BundleStore:
    """Bundles on disk, named by their sha256, written atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        if not SHA256_RE.match(sha):
            raise ValueError(f"not a sha256 hex digest: {sha!r}")
        return self.root / sha[:2] / f"{sha}.zip"

    def has(self, sha: str) -> bool:
        return self.path(sha).exists()

    def get(self, sha: str) -> bytes | None:
        try:
            return self.path(sha).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, data: bytes, expected_sha: str | None = None) -> str:
        sha = sha256_hex(data)
        if expected_sha is not None and sha != expected_sha:
            raise BundleError(f"bundle hash mismatch: expected {expected_sha}, got {sha}")
        path = self.path(sha)
        if path.exists():
            return sha
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return sha

    def delete(self, sha: str) -> None:
        self.path(sha).unlink(missing_ok=True)
