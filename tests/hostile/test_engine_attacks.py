"""Attacks on the zygote engine itself, driven directly (no HTTP).

Each test deploys a hostile module into a real, fully isolated engine (the
node-side :class:`ZygoteSandboxFactory`, a template process, namespaces,
setuid, seccomp, cgroups) and checks the wall it attacks from the node's
side: what other processes' memory, descriptors and CPU time show.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from edgerun.sandbox.base import SandboxCrashed, SandboxSpec
from edgerun.sandbox.cgroups import Cgroups
from edgerun.sandbox.forked import EngineSettings, ForkedSandbox, ZygoteSandboxFactory
from edgerun.sandbox.protocol import Invoke, Result
from edgerun.sandbox.uids import UidMap
from tests.hostile.conftest import SUPPORTED, UNSUPPORTED_REASON

pytestmark = [pytest.mark.anyio, pytest.mark.skipif(not SUPPORTED, reason=UNSUPPORTED_REASON)]

CODE = Path(__file__).parent / "engine"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def factory(tmp_path: Path) -> AsyncIterator[ZygoteSandboxFactory]:
    f = ZygoteSandboxFactory(
        node="attack-test",
        settings=EngineSettings(
            namespaces=True, setuid=True, seccomp=True, fork_timeout_s=1.0, reap_timeout_s=1.0
        ),
        cgroups=Cgroups(f"attack-test-{os.getpid()}-{secrets.token_hex(3)}"),
        uids=UidMap(tmp_path / "uids.json", 310_000, 100),
        root_mount=tmp_path / "root",
    )
    await f.open()
    yield f
    await f.close()


def spec(tmp_path: Path, module: str, function: str | None = None, **kw: object) -> SandboxSpec:
    """A version whose code is ``engine/<module>.py`` as ``main.py``."""
    code = tmp_path / f"code-{function or module}"
    code.mkdir(exist_ok=True)
    (code / "main.py").write_text((CODE / f"{module}.py").read_text())
    os.chmod(code, 0o755)
    os.chmod(code / "main.py", 0o644)
    return SandboxSpec(
        function=function or module,
        version="v1",
        handler="main.handler",
        bundle_dir=code,
        memory_mb=128,
        timeout_s=5.0,
        **kw,  # type: ignore[arg-type]
    )


async def call(sandbox: ForkedSandbox, event: object = None) -> object:
    reply = await sandbox.invoke(Invoke(id="t", mode="direct", event=event or {}, timeout_s=5.0))
    assert isinstance(reply, Result), reply
    return json.loads(reply.body)


async def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def cpu_seconds(pid: int) -> float:
    fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_of_uid(uid: int) -> float:
    total = 0.0
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                total += cpu_seconds(int(entry.name))
        except (OSError, IndexError):
            continue
    return total


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def fd_targets(pid: int) -> dict[int, str]:
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
    return out


# --- 1. secrets in inherited memory --------------------------------------------------


async def test_no_zygote_finds_another_functions_env_in_its_memory(factory, tmp_path) -> None:
    secret = f"db-password-{secrets.token_hex(16)}"
    control = f"db-password-{secrets.token_hex(16)}"  # never in anyone's environment
    for name in ("holder-1", "holder-2"):
        env = {"DB_PASSWORD": secret}
        holder = await factory.start(spec(tmp_path, "noop", name, env=env))
        await holder.close()
    scanner = await factory.start(spec(tmp_path, "memory_scanner", "scanner"))
    seen = await call(scanner, {"reversed": [secret[::-1], control[::-1]]})
    await scanner.close()
    assert isinstance(seen, dict) and seen["scanned_mb_at_least"] == 1
    secret_copies, own_copies = seen["found"]
    assert own_copies >= 1  # the scan does see what this process holds
    assert secret_copies == own_copies, "another function's secret is in this process"


# --- 2. descriptors --------------------------------------------------------------------


async def test_template_zygote_and_sandbox_hold_no_descriptor_of_the_node(
    factory, tmp_path
) -> None:
    sandbox = await factory.start(spec(tmp_path, "noop"))
    zygote = next(iter(factory.zygotes.values()))
    template = factory._template
    assert template is not None
    null = os.stat("/dev/null").st_rdev
    for who, pid in (("template", template.pid), ("zygote", zygote.pid), ("sandbox", sandbox.pid)):
        for fd, target in fd_targets(pid).items():
            if target.startswith(("socket:", "anon_inode:", "pipe:")):
                continue
            assert os.stat(f"/proc/{pid}/fd/{fd}").st_rdev == null, f"{who}: fd {fd} -> {target}"
    await sandbox.close()


# --- 3. zygotes die with their template --------------------------------------------------


async def test_zygotes_and_sandboxes_die_when_the_template_dies(factory, tmp_path) -> None:
    sandbox = await factory.start(spec(tmp_path, "noop"))
    zygote = next(iter(factory.zygotes.values()))
    assert factory._template is not None
    factory._template.send_signal(signal.SIGKILL)
    await wait_until(lambda: not alive(zygote.pid), "the zygote to die with its template")
    await wait_until(lambda: not alive(sandbox.pid), "the sandbox to die with its zygote")
    await sandbox.close()


# --- 4. CPU outside calls -----------------------------------------------------------------


async def test_thread_left_running_after_the_reply_burns_no_cpu(factory, tmp_path) -> None:
    sandbox = await factory.start(spec(tmp_path, "leaves_a_thread"))
    assert await call(sandbox) == {"started": True}
    before = cpu_seconds(sandbox.pid)
    await asyncio.sleep(0.5)  # measuring a span of wall time, not synchronising
    assert cpu_seconds(sandbox.pid) - before < 0.05
    assert await call(sandbox) == {"started": True}  # and the sandbox still serves
    await sandbox.close()


async def test_child_forked_after_the_reply_burns_no_cpu(factory, tmp_path) -> None:
    s = spec(tmp_path, "forks_later")
    sandbox = await factory.start(s)
    assert await call(sandbox) == {"scheduled": True}
    uid = factory.uids.uid_for(s.function)
    await asyncio.sleep(0.6)  # past the 0.3 s at which the thread would fork
    before = cpu_of_uid(uid)
    await asyncio.sleep(0.5)
    assert cpu_of_uid(uid) - before < 0.05
    await sandbox.close()


async def test_thread_started_at_import_burns_no_cpu_in_the_zygote(factory, tmp_path) -> None:
    sandbox = await factory.start(spec(tmp_path, "spins_at_import"))
    zygote = next(iter(factory.zygotes.values()))
    await sandbox.close()
    before = cpu_seconds(zygote.pid)
    await asyncio.sleep(0.5)
    assert cpu_seconds(zygote.pid) - before < 0.05


# --- 5. memory outside sandboxes is charged -------------------------------------------------


async def test_zygote_heap_and_tmp_are_charged(factory, tmp_path) -> None:
    assert factory.held_mb() == 0
    sandbox = await factory.start(spec(tmp_path, "fills_tmp"))
    loaded = factory.held_mb()
    assert loaded > 0  # the zygote's own heap
    assert await call(sandbox, {"mb": 20}) == {"written_mb": 20}
    await sandbox.close()
    assert factory.held_mb() >= loaded + 20  # /tmp outlives the sandbox that wrote it
    assert await factory.shed(factory.held_mb()) >= loaded + 20
    assert factory.held_mb() == 0


# --- 6. a large environment, a dead template ---------------------------------------------------


async def test_a_100_kb_environment_reaches_the_function(factory, tmp_path) -> None:
    big = "x" * 100_000
    sandbox = await factory.start(spec(tmp_path, "env_reader", env={"BIG": big}))
    assert await call(sandbox, {"name": "BIG"}) == {"length": 100_000}
    await sandbox.close()
    assert factory.problem() is None
    assert factory.template_starts == 1


async def test_a_dead_template_is_restarted_and_reported_until_then(factory, tmp_path) -> None:
    assert factory._template is not None
    factory._template.send_signal(signal.SIGKILL)
    await wait_until(lambda: factory.problem() is not None, "health to report the dead template")
    await wait_until(lambda: factory.problem() is None, "the template to be restarted")
    assert factory.template_starts == 2
    sandbox = await factory.start(spec(tmp_path, "noop"))
    assert await call(sandbox) == {"ok": True}
    await sandbox.close()


# --- 7. and 8. a zygote that lies ------------------------------------------------------------


async def test_a_zygote_that_never_answers_fork_fails_within_its_deadline(
    factory, tmp_path
) -> None:
    start = time.monotonic()
    with pytest.raises(SandboxCrashed):
        await asyncio.wait_for(factory.start(spec(tmp_path, "stalls_fork")), 30)
    assert time.monotonic() - start < 10  # two attempts at a 1 s fork deadline, and loading
    assert factory.zygotes == {}


async def test_descriptors_attached_to_forged_replies_are_closed(factory, tmp_path) -> None:
    s = spec(tmp_path, "stuffs_replies")
    first = await factory.start(s)
    await first.close()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        sandbox = await factory.start(s)
        await sandbox.close()
    # Cgroup removal finishes in a worker thread that opens files of its own.
    await wait_until(lambda: len(os.listdir("/proc/self/fd")) <= before, "no descriptor leak")


# --- what a node that died left frozen -------------------------------------------------------


def test_a_restarted_node_sweeps_the_frozen_leftovers_of_its_dead_run() -> None:
    import subprocess
    import sys

    node = f"sweep-{secrets.token_hex(3)}"
    dead = Cgroups(f"{node}-999999999")  # no such pid: a run that is gone
    if not dead.freezer:
        pytest.skip("no freezer cgroup here")
    cgroup = dead.create("zy-1", memory_mb=64, pids_max=8)
    assert cgroup is not None
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        cgroup.add(proc.pid)
        cgroup.freeze()
        proc.kill()  # pending: a frozen task does not act on it
        assert alive(proc.pid)

        fresh = Cgroups(f"{node}-{os.getpid()}")
        assert fresh.sweep_stale(node) == 1
        proc.wait(timeout=10)
        assert not any(
            path.parent.joinpath(f"{node}-999999999").exists() for path in dead._dirs.values()
        )
        fresh.remove_all()
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def test_a_versions_next_load_is_estimated_from_its_last_one(factory, tmp_path) -> None:
    s = spec(tmp_path, "noop")
    assert factory.zygote_mb(s) == factory.settings.zygote_estimate_mb  # never measured
    sandbox = await factory.start(s)
    assert factory.zygote_mb(s) == 0  # loaded: a start costs no zygote
    heap = next(iter(factory.zygotes.values())).heap_mb
    await sandbox.close()
    assert heap > 0
    assert await factory.shed(heap) >= heap
    assert factory.zygote_mb(s) == heap  # its next load, as measured last time
