"""The zygote engine driven directly (no HTTP): forks, uids, environment, reaping."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgerun.sandbox.base import SandboxSpec
from edgerun.sandbox.cgroups import Cgroups
from edgerun.sandbox.forked import EngineSettings, ZygoteSandboxFactory
from edgerun.sandbox.protocol import Invoke, Result
from edgerun.sandbox.uids import UidMap

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(
        sys.platform != "linux" or os.geteuid() != 0, reason="the isolated engine needs root"
    ),
]

HANDLER = """
import os

def handler(event, context):
    return {"uid": os.getuid(), "env": sorted(os.environ), "pid": os.getpid(),
            "cwd": os.getcwd(), "greeting": os.environ.get("GREETING")}
"""


@pytest.fixture
async def factory(tmp_path: Path) -> AsyncIterator[ZygoteSandboxFactory]:
    f = ZygoteSandboxFactory(
        node="engine-test",
        settings=EngineSettings(namespaces=True, setuid=True, seccomp=True, zygote_ttl_s=60),
        cgroups=Cgroups(f"engine-test-{os.getpid()}"),
        uids=UidMap(tmp_path / "uids.json", 300_000, 100),
        root_mount=tmp_path / "root",
    )
    await f.open()
    yield f
    await f.close()


def spec(tmp_path: Path, function: str = "probe") -> SandboxSpec:
    code = tmp_path / f"code-{function}"
    code.mkdir(exist_ok=True)
    (code / "main.py").write_text(HANDLER)
    os.chmod(code, 0o755)
    os.chmod(code / "main.py", 0o644)
    return SandboxSpec(
        function=function,
        version="v1",
        handler="main.handler",
        bundle_dir=code,
        memory_mb=128,
        timeout_s=5.0,
        env={"GREETING": "hi"},
    )


async def call(sandbox: object) -> dict[str, object]:
    import json

    reply = await sandbox.invoke(Invoke(id="t", mode="direct", event={}, timeout_s=5.0))  # type: ignore[attr-defined]
    assert isinstance(reply, Result)
    return json.loads(reply.body)  # type: ignore[no-any-return]


async def test_sandboxes_of_one_version_fork_from_one_zygote(factory, tmp_path) -> None:
    s = spec(tmp_path)
    a = await factory.start(s)
    b = await factory.start(s)
    assert len(factory.zygotes) == 1
    assert factory.is_loaded(s)
    assert a.pid != b.pid
    await a.close()
    await b.close()


async def test_each_function_runs_as_its_own_uid(factory, tmp_path) -> None:
    one = await factory.start(spec(tmp_path, "one"))
    two = await factory.start(spec(tmp_path, "two"))
    uid_one, uid_two = (await call(one))["uid"], (await call(two))["uid"]
    assert uid_one != uid_two
    assert 300_000 <= uid_one < 300_100  # type: ignore[operator]
    await one.close()
    await two.close()


async def test_sandbox_sees_only_its_own_environment(factory, tmp_path) -> None:
    sandbox = await factory.start(spec(tmp_path))
    seen = await call(sandbox)
    assert seen["greeting"] == "hi"
    assert seen["cwd"] == "/var/task"
    assert set(seen["env"]) == {  # type: ignore[arg-type]
        "PATH",
        "LANG",
        "HOME",
        "TMPDIR",
        "GREETING",
        "LAMBDA_TASK_ROOT",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    }
    await sandbox.close()


async def test_zygotes_nobody_uses_are_reaped(factory, tmp_path) -> None:
    import time

    sandbox = await factory.start(spec(tmp_path))
    zygote = next(iter(factory.zygotes.values()))
    assert await factory.reap_idle(now=time.monotonic() + 3600) == 0  # a sandbox is alive
    await sandbox.close()
    assert await factory.reap_idle(now=time.monotonic() + 3600) == 1
    assert factory.zygotes == {}
    assert zygote.closed


async def test_many_live_sandboxes_of_a_small_function_do_not_overflow_its_zygote(
    factory: ZygoteSandboxFactory, tmp_path: Path
) -> None:
    """Each fork leaves its sandbox pages the zygote's cgroup stays charged for; with
    80 live sandboxes of a 64 MB function they once filled the zygote's 64 MB and the
    kernel killed the zygote (every later start failed)."""
    import dataclasses

    s = dataclasses.replace(spec(tmp_path, "small"), memory_mb=64)
    sandboxes = []
    for _ in range(80):
        sandbox = await factory.start(s)
        await call(sandbox)
        sandboxes.append(sandbox)
    assert all(sb.alive for sb in sandboxes)
    zygote = factory.zygotes[s.key]
    assert not zygote.closed and zygote.live == 80
    for sandbox in sandboxes:
        await sandbox.close()
