"""The portable engine: one fresh interpreter per worker, same protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgerun.sandbox.base import SandboxCrashed, SandboxSpec
from edgerun.sandbox.process import ProcessSandboxFactory
from edgerun.sandbox.protocol import Invoke, Result

pytestmark = pytest.mark.anyio


def spec(tmp_path: Path, code: str) -> SandboxSpec:
    (tmp_path / "main.py").write_text(code)
    return SandboxSpec(
        function="p",
        version="v1",
        handler="main.handler",
        bundle_dir=tmp_path,
        memory_mb=128,
        timeout_s=3.0,
        env={"GREETING": "hi"},
    )


async def test_worker_sees_only_its_own_environment(tmp_path: Path) -> None:
    code = "import os\ndef handler(event, context):\n    return sorted(os.environ)\n"
    sandbox = await ProcessSandboxFactory(tmp_path / "log").start(spec(tmp_path, code))
    reply = await sandbox.invoke(Invoke(id="1", mode="direct", event={}, timeout_s=3.0))
    await sandbox.close()
    assert isinstance(reply, Result)
    assert "GREETING" in json.loads(reply.body)
    assert "PYTHONPATH" not in json.loads(reply.body)


async def test_worker_that_exits_is_reported_with_its_status(tmp_path: Path) -> None:
    code = "import os\ndef handler(event, context):\n    os._exit(4)\n"
    sandbox = await ProcessSandboxFactory(tmp_path / "log").start(spec(tmp_path, code))
    with pytest.raises(SandboxCrashed, match="exited with status 4"):
        await sandbox.invoke(Invoke(id="1", mode="direct", event={}, timeout_s=3.0))
