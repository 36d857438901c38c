"""Shared fixtures: function folders under tests/functions and bundle helpers."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
FUNCTIONS = Path(__file__).parent / "functions"
EXAMPLES = Path(__file__).parent.parent / "examples"


def make_zip(files: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
