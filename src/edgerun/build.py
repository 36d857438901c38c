"""Turn a function folder into a bundle: code plus vendored dependencies.

The zip is deterministic (sorted entries, fixed timestamps and modes), so
deploying an unchanged folder yields the same sha256 and so the same
version. A folder may hold ``edgerun.toml`` with the function's defaults
(name, handler, memory_mb, ...), which command-line options override.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from edgerun.models import FunctionConfig, validate_config, validate_function_name

_SKIP_DIRS = {"__pycache__", ".git", ".venv", "venv", ".mypy_cache", ".pytest_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
_EPOCH = (1980, 1, 1, 0, 0, 0)


class BuildError(Exception):
    pass


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / "edgerun.toml"
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BuildError(f"{path}: {exc}") from None


def function_config(folder: Path, overrides: dict[str, Any]) -> tuple[str, FunctionConfig]:
    """The name and config ``edgerun deploy`` gives ``folder``: its ``edgerun.toml``
    with ``overrides`` (None values ignored) on top; the name defaults to the folder's."""
    manifest = read_manifest(folder)
    merged = {**manifest, **{k: v for k, v in overrides.items() if v is not None}}
    name = merged.pop("name", None) or folder.resolve().name
    validate_function_name(name)
    try:
        config = msgspec.convert(merged, FunctionConfig)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{folder}: invalid function config: {exc}") from None
    validate_config(config)
    return name, config


def _files(root: Path) -> list[tuple[str, Path]]:
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for fname in filenames:
            path = Path(dirpath, fname)
            if fname.endswith(_SKIP_SUFFIXES) or path.is_symlink():
                continue
            out.append((path.relative_to(root).as_posix(), path))
    return out


def vendor(requirements: Path, target: Path, progress: Callable[[str], None]) -> None:
    """Install the requirements into ``target`` with pip, streaming its output."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-compile",
        "--target",
        str(target),
        "-r",
        str(requirements),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        tail = [*tail[-20:], line]
        progress(line)
    if proc.wait() != 0:
        raise BuildError("pip could not install requirements.txt:\n" + "\n".join(tail))


def build_bundle(folder: Path, progress: Callable[[str], None] = lambda _l: None) -> bytes:
    if not folder.is_dir():
        raise BuildError(f"{folder} is not a folder")
    entries = [(name, path) for name, path in _files(folder) if name != "edgerun.toml"]
    with tempfile.TemporaryDirectory(prefix="edgerun-build-") as tmp:
        requirements = folder / "requirements.txt"
        if requirements.exists():
            vendored = Path(tmp)
            vendor(requirements, vendored, progress)
            own = {name for name, _ in entries}
            entries += [(n, p) for n, p in _files(vendored) if n not in own]
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, path in sorted(entries):
                info = zipfile.ZipInfo(name, _EPOCH)
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, path.read_bytes())
        return buf.getvalue()
