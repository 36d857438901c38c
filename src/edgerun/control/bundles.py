"""Content-addressed bundle storage and the checks every upload must pass.

A bundle is a zip of code plus vendored dependencies. Since it comes from a
user, it is inspected before anything trusts it: no absolute paths, no ``..``
components, no symlinks (the only safe link is no link), and a bounded
uncompressed size and entry count so a zip bomb cannot fill a node's disk.
It must also extract the same way on every node: one entry per path, no
path that is both a file and a folder, names every filesystem takes, and
only the compression methods Python reads. The same :func:`validate_bundle`
runs at upload and before every extraction on a node.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from edgerun.errors import ApiError
from edgerun.files import write_atomic
from edgerun.models import SHA256_RE

DEFAULT_MAX_UNCOMPRESSED = 250 * 1024 * 1024
DEFAULT_MAX_ENTRIES = 20_000
MAX_NAME_BYTES = 255
"""Longest path component (NAME_MAX on Linux)."""
MAX_PATH_BYTES = 1024
MAX_DEPTH = 32
_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}


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
    except (zipfile.BadZipFile, ValueError, NotImplementedError, EOFError, OSError) as exc:
        raise BundleError(f"bundle is not a valid zip file: {exc}") from None
    infos = zf.infolist()
    if not infos:
        raise BundleError("bundle is empty")
    if len(infos) > max_entries:
        raise BundleError(f"bundle has {len(infos)} entries, more than the limit of {max_entries}")
    total = 0
    files: set[str] = set()
    folders: set[str] = set()
    for info in infos:
        _check_entry_name(info.filename)
        _check_entry_format(info)
        _check_layout(info, files, folders)
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
    shown = name if len(name) <= 80 else f"{name[:80]}..."
    if "\\" in name or "\x00" in name:
        raise BundleError(f"bundle entry {shown!r} has a backslash or NUL in its path")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise BundleError(f"bundle entry {shown!r} has an absolute path")
    parts = PurePosixPath(name).parts
    if any(part == ".." for part in parts):
        raise BundleError(f"bundle entry {shown!r} escapes the bundle with '..'")
    if not parts:
        raise BundleError(f"bundle entry {shown!r} has an empty path")
    if len(name.encode()) > MAX_PATH_BYTES or len(parts) > MAX_DEPTH:
        raise BundleError(
            f"bundle entry {shown!r} has a path longer than {MAX_PATH_BYTES} bytes "
            f"or deeper than {MAX_DEPTH} folders"
        )
    if any(len(part.encode()) > MAX_NAME_BYTES for part in parts):
        raise BundleError(
            f"bundle entry {shown!r} has a path component longer than {MAX_NAME_BYTES} bytes"
        )


def _check_entry_format(info: zipfile.ZipInfo) -> None:
    """Refuse what :mod:`zipfile` cannot read, before a node has to try."""
    if info.compress_type not in _METHODS:
        raise BundleError(
            f"bundle entry {info.filename!r} uses compression method {info.compress_type}; "
            f"use one of {', '.join(_METHODS.values())}"
        )
    if info.extract_version > zipfile.MAX_EXTRACT_VERSION:
        raise BundleError(
            f"bundle entry {info.filename!r} needs zip version {info.extract_version / 10}, "
            f"newer than the {zipfile.MAX_EXTRACT_VERSION / 10} this platform reads"
        )
    if info.flag_bits & 0x1:
        raise BundleError(f"bundle entry {info.filename!r} is encrypted")


def _check_layout(info: zipfile.ZipInfo, files: set[str], folders: set[str]) -> None:
    """Refuse a second entry for a file, and any path that is both a file and a folder."""
    path = "/".join(PurePosixPath(info.filename).parts)
    if info.is_dir():
        if path in files:
            raise BundleError(f"bundle path {path!r} is both a file and a folder")
        folders.add(path)
    else:
        if path in files:
            raise BundleError(f"bundle has more than one entry for {path!r}")
        if path in folders:
            raise BundleError(f"bundle path {path!r} is both a file and a folder")
        files.add(path)
    for parent in map(str, PurePosixPath(path).parents[:-1]):
        if parent in files:
            raise BundleError(f"bundle path {parent!r} is both a file and a folder")
        folders.add(parent)


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


def verify_bundle(data: bytes, *, max_uncompressed: int) -> None:
    """:func:`validate_bundle`, then decompress every entry (writing nothing), so that a
    bundle no node could extract is refused at upload instead of failing every call."""
    infos = validate_bundle(data, max_uncompressed=max_uncompressed)
    read = 0
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in infos:
            if not info.is_dir():
                read += _copy_entry(zf, info, max_uncompressed - read, None)


def _extract_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, root: Path, budget: int) -> int:
    """Write one entry under ``root``; returns its size. Corrupt data is a BundleError."""
    target = root / info.filename
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        written = _copy_entry(zf, info, budget, out)
    target.chmod(0o644)
    return written


def _copy_entry(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int, out: BinaryIO | None
) -> int:
    """Decompress one entry into ``out`` (or nowhere), checking its real size and CRC."""
    written = 0
    for chunk in _entry_chunks(zf, info):
        written += len(chunk)
        if written > budget:
            raise BundleError("bundle expands past its size limit while extracting")
        if out is not None:
            out.write(chunk)
    return written


def _entry_chunks(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """The decompressed data of one entry. A zip's bytes are the uploader's, so any
    failure to read them (a bad offset, name, stream or CRC) is a BundleError."""
    try:
        with zf.open(info) as src:
            while chunk := src.read(1 << 16):
                yield chunk
    except Exception as exc:  # zipfile and its decompressors raise many types
        raise BundleError(
            f"bundle entry {info.filename!r} is corrupt: {type(exc).__name__}: {exc}"
        ) from None


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
        write_atomic(path, data)
        return sha

    def delete(self, sha: str) -> None:
        self.path(sha).unlink(missing_ok=True)
