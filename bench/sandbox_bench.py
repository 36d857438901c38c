"""Sandbox engine benchmark (issue 3): zygote cold starts against plain process spawns.

Measures, in one run on this machine:

1. cold start: ``await factory.start(spec)`` for a version whose zygote is
   already loaded, with every isolation layer this machine offers (namespaces,
   setuid, seccomp, cgroups), without cgroups, and with no layer at all;
   interleaved in rounds with the baselines below so machine noise hits all
   of them alike;
2. baselines: ``python -I -c pass`` (subprocess, until it exits), the same
   under ``bwrap --ro-bind / / --unshare-all`` (null when bwrap is missing),
   and ``os.posix_spawn('/bin/true')``;
3. first start of a new version (a new zygote that imports the handler);
4. warm invoke round trip through the pool (``Pool.lease`` + ``invoke``),
   without HTTP;
5. private memory (USS) per idle warm sandbox, and how many fit in 1 GB.

It then profiles where a cold start and a round trip spend their time,
from the benchmark side only (wrapping the engine's calls; nothing in
``src`` changes). The last line of output is one JSON object with every
figure. Run it as root for every layer: ``bash scripts/bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from edgerun.pool import Pool
from edgerun.sandbox import ctl, forked
from edgerun.sandbox.base import SandboxSpec
from edgerun.sandbox.cgroups import Cgroups, SandboxCgroup
from edgerun.sandbox.forked import EngineSettings, ForkedSandbox, ZygoteSandboxFactory
from edgerun.sandbox.isolation import detect
from edgerun.sandbox.protocol import Invoke, Result, encode_frame, read_from_sandbox
from edgerun.sandbox.transport import FrameChannel, open_channel
from edgerun.sandbox.uids import UidMap

HANDLER = "def handler(event, context):\n    return event\n"
EVENT: dict[str, Any] = {"path": "/hello", "query": {"name": "edge"}, "n": 1}
NOT_A_CHILD = 4_000_000  # a pid no zygote has: Reap answers at once (ECHILD)

TARGETS = {
    "cold_start_p50_ms": 3.0,
    "cold_start_p99_ms": 10.0,
    "warm_roundtrip_p50_us": 100.0,
    "idle_uss_mb": 3.0,
}

now_ns = time.perf_counter_ns


# --- statistics -------------------------------------------------------------------


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(samples_ns: list[int], unit_ns: float, digits: int = 3) -> dict[str, float]:
    """n, mean, min, p50, p90, p99, max of samples in ``unit_ns`` units."""
    if not samples_ns:
        return {"n": 0}
    vals = sorted(s / unit_ns for s in samples_ns)
    out = {
        "n": len(vals),
        "p50": percentile(vals, 50),
        "p90": percentile(vals, 90),
        "p99": percentile(vals, 99),
        "mean": sum(vals) / len(vals),
        "min": vals[0],
        "max": vals[-1],
    }
    return {k: (v if k == "n" else round(v, digits)) for k, v in out.items()}


def ms(samples: list[int]) -> dict[str, float]:
    return summarize(samples, 1e6, 3)


def us(samples: list[int]) -> dict[str, float]:
    return summarize(samples, 1e3, 1)


# --- fixtures ----------------------------------------------------------------------


def make_bundle(root: Path, name: str) -> Path:
    """A bundle folder every per-function uid can read."""
    folder = root / name
    folder.mkdir()
    (folder / "main.py").write_text(f"# {name}\n{HANDLER}")
    os.chmod(folder, 0o755)
    os.chmod(folder / "main.py", 0o644)
    return folder


def spec_for(bundle: Path, function: str, version: str, memory_mb: int) -> SandboxSpec:
    return SandboxSpec(
        function=function,
        version=version,
        handler="main.handler",
        bundle_dir=bundle,
        memory_mb=memory_mb,
        timeout_s=10.0,
    )


def invoke_msg(i: int) -> Invoke:
    return Invoke(id=f"req-{i}", mode="direct", event=EVENT, timeout_s=10.0)


def check(reply: object) -> None:
    if not isinstance(reply, Result) or reply.status != 200:
        raise RuntimeError(f"unexpected reply from the sandbox: {reply!r}")


@dataclass
class Engine:
    """One zygote factory under test, with the layers it really runs with."""

    label: str
    factory: ZygoteSandboxFactory
    layers: dict[str, Any]


async def open_engine(
    label: str,
    *,
    isolate: bool,
    cgroups: bool,
    work: Path,
    avail: dict[str, bool],
    warm_moves: bool = True,
) -> Engine:
    cg: Cgroups | None = None
    if isolate and cgroups and avail["root"]:
        cg = Cgroups(f"bench-{os.getpid()}-{label}")
        if not cg.version:
            cg = None
    settings = EngineSettings(
        namespaces=isolate and avail["namespaces"],
        setuid=isolate and avail["setuid"],
        seccomp=isolate and avail["seccomp"],
        warm_cgroup_moves=warm_moves,
    )
    try:
        factory = ZygoteSandboxFactory(
            node=f"bench-{label}",
            settings=settings,
            cgroups=cg,
            uids=UidMap(work / f"uids-{label}.json", 200_000, 50_000),
            root_mount=work / f"sandbox-root-{label}",
        )
    except BaseException:
        if cg is not None:  # no factory to close yet: drop the node cgroup ourselves
            cg.remove_all()
        raise
    try:
        await factory.open()
    except BaseException:
        await factory.close()
        raise
    layers: dict[str, Any] = {
        "namespaces": settings.namespaces,
        "setuid": settings.setuid,
        "seccomp": settings.seccomp,
        "cgroups": f"v{cg.version}" if cg else None,
    }
    return Engine(label, factory, layers)


def available_layers() -> dict[str, bool]:
    """What this machine offers, decided exactly as ``server.make_engine`` does."""
    root = os.geteuid() == 0
    cg = Cgroups(f"bench-{os.getpid()}-probe") if root else None
    try:
        active = {layer.name: layer.active for layer in detect("bench", cgroups=cg)}
    finally:
        if cg is not None:
            cg.remove_all()
    return {
        "root": root,
        "namespaces": active["pid namespace"],
        "setuid": active["uid per function"],
        "seccomp": active["seccomp deny-list"],
        "cgroups": bool(cg and cg.version),
    }


# --- samplers ------------------------------------------------------------------------


@dataclass
class ZygoteSamples:
    start: list[int] = field(default_factory=list)
    first_reply: list[int] = field(default_factory=list)
    close: list[int] = field(default_factory=list)


async def zygote_cold_start(engine: Engine, spec: SandboxSpec, out: ZygoteSamples) -> None:
    """One timed ``factory.start``; first reply and close are recorded apart."""
    t0 = now_ns()
    sb = await engine.factory.start(spec)
    t1 = now_ns()
    try:
        check(await sb.invoke(invoke_msg(len(out.start))))
        t2 = now_ns()
    finally:
        t3 = now_ns()
        await sb.close()
        t4 = now_ns()
    out.start.append(t1 - t0)
    out.first_reply.append(t2 - t0)
    out.close.append(t4 - t3)


def spawn_wait(argv: list[str]) -> int:
    t0 = now_ns()
    subprocess.run(argv, stdin=subprocess.DEVNULL, check=True)
    return now_ns() - t0


def posix_spawn_wait(path: str) -> int:
    t0 = now_ns()
    pid = os.posix_spawn(path, [path], {})
    os.waitpid(pid, 0)
    return now_ns() - t0


def bwrap_argv() -> tuple[list[str] | None, str]:
    """The bwrap command line, or None and why it cannot run here."""
    exe = shutil.which("bwrap")
    if exe is None:
        return None, "bwrap not installed"
    argv = [exe, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent"]
    argv += [sys.executable, "-I", "-c", "pass"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if proc.returncode != 0:
        return None, f"bwrap failed: {proc.stderr.strip()[-200:]}"
    return argv, " ".join(argv)


async def interleaved(
    methods: list[tuple[str, Callable[[], Awaitable[None]]]], total: int, rounds: int
) -> None:
    """Run each method ``total`` times, in ``rounds`` alternating chunks."""
    for r in range(rounds):
        chunk = total // rounds + (1 if r < total % rounds else 0)
        for _name, fn in methods:
            for _ in range(chunk):
                await fn()


# --- memory ----------------------------------------------------------------------------


def proc_kb(path: str, fields: tuple[str, ...]) -> dict[str, int]:
    """``Field:  123 kB`` lines of a /proc file, as kB."""
    out = dict.fromkeys(fields, 0)
    with open(path) as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in out:
                out[name] = int(rest.split()[0])
    return out


def memory_of(pid: int) -> dict[str, float]:
    """USS, PSS, RSS (MB) and page tables (kB) of one process."""
    roll = proc_kb(
        f"/proc/{pid}/smaps_rollup", ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Swap")
    )
    status = proc_kb(f"/proc/{pid}/status", ("VmPTE",))
    return {
        "uss_mb": (roll["Private_Clean"] + roll["Private_Dirty"]) / 1024,
        "pss_mb": roll["Pss"] / 1024,
        "rss_mb": roll["Rss"] / 1024,
        "pte_kb": float(status["VmPTE"]),
    }


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("PPid:"):
                return int(line.split()[1])
    raise OSError(f"no PPid for {pid}")


def cgroup_charged_mb(cgroup: SandboxCgroup | None) -> float | None:
    if cgroup is None or "memory" not in cgroup.dirs:
        return None
    name = "memory.usage_in_bytes" if cgroup.version == 1 else "memory.current"
    try:
        return int((cgroup.dirs["memory"] / name).read_text()) / 2**20
    except (OSError, ValueError):
        return None


def mb_stats(values: list[float]) -> dict[str, float]:
    return summarize([round(v * 1e6) for v in values], 1e6, 3)


# --- profiling (benchmark side only) -----------------------------------------------------


@contextlib.contextmanager
def instrumented(rec: dict[str, list[int]]) -> Iterator[None]:
    """Time the engine's own steps by wrapping them in this process only."""
    orig_request = ctl.AsyncChannel.request_locked
    orig_pid_of = forked._pid_of
    orig_create = Cgroups.create
    orig_add = SandboxCgroup.add
    orig_kill_all = SandboxCgroup.kill_all
    orig_destroy = SandboxCgroup.destroy
    orig_uid_for = UidMap.uid_for
    orig_open = forked.open_channel

    async def request(
        self: ctl.AsyncChannel, msg: Any, *args: Any, **kwargs: Any
    ) -> tuple[Any, list[int]]:
        t0 = now_ns()
        try:
            return await orig_request(self, msg, *args, **kwargs)
        finally:
            rec[f"ctl {type(msg).__name__}"].append(now_ns() - t0)

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = now_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                rec[name].append(now_ns() - t0)

        return wrapper

    async def open_unix(*args: Any, **kwargs: Any) -> Any:
        t0 = now_ns()
        try:
            return await orig_open(*args, **kwargs)
        finally:
            rec["open_channel"].append(now_ns() - t0)

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(ctl.AsyncChannel, "request_locked", request))
        stack.enter_context(mock.patch.object(forked, "_pid_of", timed("_pid_of", orig_pid_of)))
        stack.enter_context(
            mock.patch.object(Cgroups, "create", timed("cgroup create", orig_create))
        )
        stack.enter_context(mock.patch.object(SandboxCgroup, "add", timed("cgroup add", orig_add)))
        stack.enter_context(
            mock.patch.object(SandboxCgroup, "kill_all", timed("cgroup kill_all", orig_kill_all))
        )
        stack.enter_context(
            mock.patch.object(SandboxCgroup, "destroy", timed("cgroup destroy", orig_destroy))
        )
        stack.enter_context(mock.patch.object(forked, "open_channel", open_unix))
        stack.enter_context(
            mock.patch.object(UidMap, "uid_for", timed("UidMap.uid_for", orig_uid_for))
        )
        yield


START_STEPS = ("ctl Fork", "_pid_of", "cgroup create", "cgroup add", "open_channel")


def per_sample(rec: dict[str, list[int]], step: str, n: int) -> list[int] | None:
    """A step's time per sample (summed when it runs k times per sample), or None."""
    vals = rec.get(step, [])
    if not vals or len(vals) % n:
        return None
    k = len(vals) // n
    return [sum(vals[i * k : (i + 1) * k]) for i in range(n)]


def p50_p99(samples: list[int]) -> dict[str, float]:
    st = us(samples)
    return {"p50": st["p50"], "p99": st["p99"]}


def split(total: list[int], parts: dict[str, list[int]], rest: str) -> dict[str, Any]:
    """p50/p99 µs of the total, of each part, and of what the parts leave over."""
    out: dict[str, Any] = {"total": p50_p99(total)}
    for name, vals in parts.items():
        out[name] = p50_p99(vals)
    out[rest] = p50_p99([t - sum(v[i] for v in parts.values()) for i, t in enumerate(total)])
    return out


def breakdown(
    rec: dict[str, list[int]], total: list[int], steps: tuple[str, ...]
) -> dict[str, Any]:
    """Each step's time per sample, and what is left once the steps are taken out."""
    n = len(total)
    parts: dict[str, list[int]] = {}
    for step in steps:
        vals = per_sample(rec, step, n)
        if vals is not None:
            k = len(rec[step]) // n
            parts[step if k == 1 else f"{step} (x{k})"] = vals
    return split(total, parts, "other (python, event loop)")


FORK_PROBE = """
import json, os, sys, time
import edgerun.sandbox.zygote  # the modules a zygote has loaded
n = int(sys.argv[1]); fork = []; cycle = []
for _ in range(n):
    t0 = time.perf_counter_ns()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    t1 = time.perf_counter_ns()
    os.waitpid(pid, 0)
    fork.append(t1 - t0); cycle.append(time.perf_counter_ns() - t0)
print(json.dumps({"fork": fork, "cycle": cycle}))
"""

ECHO_PEER = """
import socket, sys
from edgerun.sandbox.protocol import Result, recv_invoke, send_frame
s = socket.socket(fileno=int(sys.argv[1]))
while True:
    try:
        m = recv_invoke(s)
    except EOFError:
        break
    send_frame(s, Result(id=m.id, status=200, headers=[], body=b"{}"))
"""


SANDBOX_WORK_PROBE = """
import json, sys, time
from edgerun.sandbox import worker
from edgerun.sandbox.protocol import Invoke, _to_sandbox, encode_frame
n = int(sys.argv[1]); ns = time.perf_counter_ns
info = worker.WorkerInfo(function="f", version="v", memory_mb=128, code_root="/nonexistent")
msg = Invoke(id="req-1", mode="direct", event=json.loads(sys.argv[2]), timeout_s=10.0)
body = encode_frame(msg)[4:]
out = {"decode": [], "cpu_budget": [], "invoke": [], "encode": []}
for i in range(n + 200):
    t0 = ns(); msg = _to_sandbox.decode(body); t1 = ns(); worker._cpu_budget(msg.timeout_s)
    t2 = ns(); reply = worker._invoke(lambda event, context: event, msg, info); t3 = ns()
    encode_frame(reply); t4 = ns()
    if i >= 200:
        for k, v in zip(out, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            out[k].append(v)
print(json.dumps(out))
"""


def sandbox_work_probe(n: int) -> dict[str, dict[str, float]]:
    """The sandbox's per-request Python work (no IPC), in a throw-away interpreter."""
    proc = subprocess.run(
        [sys.executable, "-I", "-c", SANDBOX_WORK_PROBE, str(n), json.dumps(EVENT)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    data: dict[str, list[int]] = json.loads(proc.stdout)
    total = [sum(parts) for parts in zip(*data.values(), strict=True)]
    names = {
        "decode": "decode Invoke",
        "cpu_budget": "_cpu_budget (getrusage + setrlimit)",
        "invoke": "_invoke (context, stdout swap, handler, encode_json)",
        "encode": "encode Result frame",
    }
    return {
        "total": p50_p99(total),
        **{names[k]: p50_p99(v) for k, v in data.items()},
    }


def fork_probe(n: int) -> dict[str, dict[str, float]]:
    """fork() cost in a fresh interpreter that imported what a zygote imports."""
    proc = subprocess.run(
        [sys.executable, "-I", "-c", FORK_PROBE, str(n)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    data = json.loads(proc.stdout)
    return {"fork()": p50_p99(data["fork"]), "fork + child exit + waitpid": p50_p99(data["cycle"])}


@contextlib.asynccontextmanager
async def echo_peer() -> AsyncIterator[
    tuple[asyncio.StreamReader, asyncio.StreamWriter, FrameChannel]
]:
    """Peers that answer the same frames and do nothing else: the IPC floor, once over
    StreamReader/StreamWriter (the node's transport before) and once over a FrameChannel."""
    procs = []
    socks = []
    for _ in range(2):
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-c", ECHO_PEER, str(child.fileno()),
                pass_fds=(child.fileno(),),
            )
        )  # fmt: skip
        child.close()
        socks.append(parent)
    reader, writer = await asyncio.open_unix_connection(sock=socks[0])
    channel = await open_channel(socks[1])
    try:
        yield reader, writer, channel
    finally:
        writer.close()
        channel.close()
        for proc in procs:
            await proc.wait()


async def warm_samples(
    pool: Pool,
    spec: SandboxSpec,
    plain: ForkedSandbox,
    echo: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    n: int,
) -> dict[str, list[int]]:
    """Warm round trips through the pool and their pieces: lease alone, invoke, the raw
    frame exchange, ``SandboxSpec.key``, a sandbox with no layer, the echo peer.

    Every iteration runs each once, in an order that rotates, so that machine noise
    and wake-up effects hit them alike.
    """
    echo_r, echo_w, echo_chan = echo
    box: list[ForkedSandbox] = []

    async def through_pool(msg: Invoke) -> int:
        t0 = now_ns()
        async with pool.lease(spec) as (sandbox, cold):
            reply = await sandbox.invoke(msg)
        dt = now_ns() - t0
        check(reply)
        if cold or not isinstance(sandbox, ForkedSandbox):
            raise RuntimeError("the pool started a sandbox during the warm phase")
        if not box:
            box.append(sandbox)
        return dt

    async def lease_only(msg: Invoke) -> int:
        t0 = now_ns()
        async with pool.lease(spec):
            pass
        return now_ns() - t0

    async def invoke(msg: Invoke) -> int:
        t0 = now_ns()
        check(await box[0].invoke(msg))
        return now_ns() - t0

    async def raw(msg: Invoke) -> int:
        t0 = now_ns()
        check(await box[0]._channel.request(encode_frame(msg), msg.timeout_s))  # no checks
        return now_ns() - t0

    async def strays(msg: Invoke) -> int:
        sb = box[0]
        t0 = now_ns()
        if sb.cgroup is not None:
            sb.cgroup.kill_strays(sb.pid)  # what invoke now runs after every call
        return now_ns() - t0

    async def strays_pread(msg: Invoke) -> int:
        t0 = now_ns()
        if pids_fd is not None:
            os.pread(pids_fd, 32, 0)  # the same check on a descriptor kept open
        return now_ns() - t0

    async def echo_channel_trip(msg: Invoke) -> int:
        t0 = now_ns()
        check(await echo_chan.request(encode_frame(msg), msg.timeout_s))
        return now_ns() - t0

    async def key(msg: Invoke) -> int:
        t0 = now_ns()
        _ = spec.key
        return now_ns() - t0

    async def no_layer(msg: Invoke) -> int:
        t0 = now_ns()
        check(await plain.invoke(msg))
        return now_ns() - t0

    async def echo_peer_trip(msg: Invoke) -> int:
        t0 = now_ns()
        echo_w.write(encode_frame(msg))
        check(await read_from_sandbox(echo_r))
        return now_ns() - t0

    steps: list[tuple[str, Callable[[Invoke], Awaitable[int]]]] = [
        ("pool", through_pool),
        ("lease", lease_only),
        ("invoke", invoke),
        ("raw", raw),
        ("key", key),
        ("strays", strays),
        ("strays_pread", strays_pread),
        ("echo_channel", echo_channel_trip),
        ("plain", no_layer),
        ("echo", echo_peer_trip),
    ]
    await through_pool(invoke_msg(0))
    cg = box[0].cgroup
    pids_fd = None
    if cg is not None and "pids" in cg.dirs:
        pids_fd = os.open(cg.dirs["pids"] / "pids.current", os.O_RDONLY)
    warm: dict[str, list[int]] = defaultdict(list)
    for i in range(n + 200):
        msg = invoke_msg(i)
        r = i % len(steps)
        for name, fn in steps[r:] + steps[:r]:
            dt = await fn(msg)
            if i >= 200:
                warm[name].append(dt)
    if pids_fd is not None:
        os.close(pids_fd)
    return warm


# --- the benchmark ----------------------------------------------------------------------


@dataclass
class Options:
    samples: int
    roundtrips: int
    new_versions: int
    idle: int
    rounds: int
    profile_samples: int
    memory_mb: int
    spaced: int
    gap_ms: float
    warm_moves: bool = True


@contextlib.asynccontextmanager
async def engines(
    work: Path, avail: dict[str, bool], warm_moves: bool = True
) -> AsyncIterator[dict[str, Engine]]:
    opened: dict[str, Engine] = {}
    try:
        for label, isolate, cgroups in (
            ("all", True, True),
            ("nocg", True, False),
            ("none", False, False),
        ):
            opened[label] = await open_engine(
                label,
                isolate=isolate,
                cgroups=cgroups,
                work=work,
                avail=avail,
                warm_moves=warm_moves,
            )
        yield opened
    finally:
        for engine in opened.values():
            await engine.factory.close()


async def run(opts: Options, work: Path) -> dict[str, Any]:
    avail = available_layers()
    bundle = make_bundle(work, "hello")
    spec = spec_for(bundle, "bench-hello", "v1", opts.memory_mb)
    res: dict[str, Any] = {"bench": "sandbox", "warm_cgroup_moves": opts.warm_moves}
    async with engines(work, avail, opts.warm_moves) as eng:
        res["layers"] = {label: e.layers for label, e in eng.items()}

        # 1 + 2: cold starts and baselines, interleaved in rounds
        zs = {label: ZygoteSamples() for label in eng}
        for e in eng.values():  # load each zygote, then warm up
            for _ in range(10):
                await zygote_cold_start(e, spec, ZygoteSamples())
        bwrap, bwrap_note = bwrap_argv()
        py_argv = [sys.executable, "-I", "-c", "pass"]
        true_path = shutil.which("true") or "/bin/true"
        base: dict[str, list[int]] = defaultdict(list)

        def zyg(label: str) -> Callable[[], Awaitable[None]]:
            return lambda: zygote_cold_start(eng[label], spec, zs[label])

        def blocking(name: str, fn: Callable[[], int]) -> Callable[[], Awaitable[None]]:
            async def go() -> None:
                base[name].append(fn())

            return go

        methods = [(label, zyg(label)) for label in eng]
        methods.append(("python", blocking("python", lambda: spawn_wait(py_argv))))
        if bwrap is not None:
            argv = bwrap
            methods.append(("bwrap", blocking("bwrap", lambda: spawn_wait(argv))))
        methods.append(("true", blocking("true", lambda: posix_spawn_wait(true_path))))
        for name, fn in methods[len(eng) :]:  # warm the page cache for the baselines
            for _ in range(3):
                await fn()
            base[name].clear()
        await interleaved(methods, opts.samples, opts.rounds)

        # the same cold starts with the node idle in between, as in real traffic:
        # a cgroup v1 migration after a quiet spell waits for an RCU grace period
        spaced = {label: ZygoteSamples() for label in ("all", "nocg")}
        for _ in range(opts.spaced):
            for label, out in spaced.items():
                await asyncio.sleep(opts.gap_ms / 1000)
                await zygote_cold_start(eng[label], spec, out)
        res["cold_start_ms"] = {
            "zygote_all_layers": ms(zs["all"].start),
            "zygote_no_cgroups": ms(zs["nocg"].start),
            "zygote_no_layers": ms(zs["none"].start),
            "zygote_all_layers_after_idle": ms(spaced["all"].start),
            "zygote_no_cgroups_after_idle": ms(spaced["nocg"].start),
            "python_spawn": ms(base["python"]),
            "bwrap_python": ms(base["bwrap"]) if bwrap is not None else None,
            "posix_spawn_true": ms(base["true"]),
        }
        res["idle_gap_ms"] = opts.gap_ms
        res["cold_start_first_reply_ms"] = {
            f"zygote_{k}": ms(zs[label].first_reply)
            for k, label in (("all_layers", "all"), ("no_cgroups", "nocg"), ("no_layers", "none"))
        }
        res["sandbox_close_ms"] = {
            f"zygote_{k}": ms(zs[label].close)
            for k, label in (("all_layers", "all"), ("no_cgroups", "nocg"), ("no_layers", "none"))
        }
        res["commands"] = {
            "python_spawn": " ".join(py_argv),
            "bwrap_python": bwrap_note,
            "posix_spawn_true": true_path,
        }

        full = eng["all"].factory

        # 4: warm round trip through the pool, on one warm sandbox; the pieces of
        # it are measured interleaved with it, so noise hits them alike
        pool = Pool(full, capacity_mb=opts.memory_mb * 4)
        await pool.prewarm(spec, 1)
        plain = await eng["none"].factory.start(spec)  # the same, with no layer at all
        async with echo_peer() as echo:
            warm = await warm_samples(pool, spec, plain, echo, opts.roundtrips)
        res["warm_roundtrip_us"] = us(warm["pool"])
        await pool.drop_idle()
        await plain.close()

        # 5: memory of idle warm sandboxes
        idle = [await full.start(spec) for _ in range(opts.idle)]
        try:
            for i, s in enumerate(idle):
                check(await s.invoke(invoke_msg(i)))
            await asyncio.sleep(0.3)
            mem = [memory_of(s.pid) for s in idle]
            charged = [c for s in idle if (c := cgroup_charged_mb(s.cgroup)) is not None]
            zygote = full.zygotes[spec.key]
            z0 = parent_of(zygote.pid)
            template = full._template.pid if full._template else None
            res["idle_uss_mb"] = mb_stats([m["uss_mb"] for m in mem])
            res["idle_pss_mb"] = mb_stats([m["pss_mb"] for m in mem])
            res["idle_rss_mb"] = mb_stats([m["rss_mb"] for m in mem])
            res["idle_page_tables_kb"] = mb_stats([m["pte_kb"] for m in mem])
            res["idle_cgroup_charged_mb"] = mb_stats(charged) if charged else None
            mean_uss = res["idle_uss_mb"]["mean"]
            res["sandboxes_per_gb"] = round(1024 / mean_uss, 1) if mean_uss else None
            res["per_version"] = {
                "zygote": {k: round(v, 3) for k, v in memory_of(zygote.pid).items()},
                "z0_waiter": {k: round(v, 3) for k, v in memory_of(z0).items()},
            }
            res["per_node_template"] = (
                {k: round(v, 3) for k, v in memory_of(template).items()} if template else None
            )
        finally:
            for s in idle:
                await s.close()

        # 3: first start of a new version (new zygote + import)
        ttl = full.settings.zygote_ttl_s
        fresh: list[int] = []
        prof: dict[str, list[int]] = defaultdict(list)
        prof_total: list[int] = []
        for i in range(opts.new_versions + 5):
            b = make_bundle(work, f"fn{i}")
            s_new = spec_for(b, f"bench-fn{i}", f"v{i}", opts.memory_mb)
            profiling = i >= opts.new_versions
            with instrumented(prof) if profiling else contextlib.nullcontext():
                t0 = now_ns()
                sb_new = await full.start(s_new)
                dt = now_ns() - t0
            (prof_total if profiling else fresh).append(dt)
            await sb_new.close()
            await full.reap_idle(now=time.monotonic() + ttl + 1)
        res["new_version_ms"] = ms(fresh)
        res["profile"] = {
            "new_version_us": breakdown(
                prof,
                prof_total,
                ("UidMap.uid_for", "ctl StartZygote", "ctl Load", *START_STEPS),
            )
        }

        # profile a cold start and a round trip, from this side only
        for _ in range(10):
            await zygote_cold_start(eng["all"], spec, ZygoteSamples())
        prof = defaultdict(list)
        totals: list[int] = []
        closes: list[int] = []
        for i in range(opts.profile_samples):
            with instrumented(prof):
                t0 = now_ns()
                sb = await full.start(spec)
                totals.append(now_ns() - t0)
                check(await sb.invoke(invoke_msg(i)))
                t0 = now_ns()
                await sb.close()
                closes.append(now_ns() - t0)
        prof_idle: dict[str, list[int]] = defaultdict(list)
        totals_idle: list[int] = []
        for i in range(max(1, opts.spaced // 2)):
            await asyncio.sleep(opts.gap_ms / 1000)
            with instrumented(prof_idle):
                t0 = now_ns()
                sb = await full.start(spec)
                totals_idle.append(now_ns() - t0)
            check(await sb.invoke(invoke_msg(i)))
            await sb.close()
        res["profile"]["cold_start_after_idle_us"] = breakdown(prof_idle, totals_idle, START_STEPS)
        zygote_ref = full.zygotes[spec.key]
        ipc: list[int] = []
        for _ in range(opts.profile_samples):
            t0 = now_ns()
            await zygote_ref.chan.request(ctl.Reap(pid=NOT_A_CHILD), {ctl.Reaped: 0}, 5.0)
            ipc.append(now_ns() - t0)
        start_prof = breakdown(prof, totals, START_STEPS)
        start_prof["ctl round trip without fork (Reap probe)"] = p50_p99(ipc)
        res["profile"]["cold_start_us"] = start_prof
        kill_all = prof.get("cgroup kill_all", [])
        close_parts = {"ctl Reap (zygote waitpid)": prof.get("ctl Reap", [])}
        if len(kill_all) == 2 * len(closes):
            close_parts["cgroup kill_all in _terminate"] = kill_all[0::2]
            close_parts["cgroup destroy (kill_all again + rmdir)"] = prof["cgroup destroy"]
        res["profile"]["close_us"] = split(
            closes,
            {k: v for k, v in close_parts.items() if len(v) == len(closes)},
            "other (thread hops, pidfd kill, writer close)",
        )
        res["profile"]["zygote_like_fork_us"] = fork_probe(opts.profile_samples)
        res["profile"]["warm_roundtrip_us"] = {
            "pool.lease + invoke": p50_p99(warm["pool"]),
            "pool.lease alone (no invoke)": p50_p99(warm["lease"]),
            "SandboxSpec.key (hashed on every access)": p50_p99(warm["key"]),
            "cgroup kill_strays (after every invoke)": p50_p99(warm["strays"]),
            "  the same read on a kept-open fd (os.pread)": p50_p99(warm["strays_pread"]),
            "sandbox.invoke": p50_p99(warm["invoke"]),
            "raw frame exchange (FrameChannel.request, no reply checks)": p50_p99(warm["raw"]),
            "sandbox.invoke, sandbox with no layer": p50_p99(warm["plain"]),
            "echo peer, same frames, StreamReader/Writer (the old transport)": p50_p99(
                warm["echo"]
            ),
            "echo peer, same frames, FrameChannel (IPC floor)": p50_p99(warm["echo_channel"]),
        }
        res["profile"]["sandbox_side_work_us"] = sandbox_work_probe(opts.roundtrips)
    return res


def ratios(res: dict[str, Any]) -> dict[str, float | None]:
    cold = res["cold_start_ms"]
    z = cold["zygote_all_layers"]["p50"]

    def over(a: dict[str, float] | None, b: float) -> float | None:
        return round(a["p50"] / b, 2) if a and b else None

    return {
        "python_spawn_over_zygote_p50": over(cold["python_spawn"], z),
        "bwrap_python_over_zygote_p50": over(cold["bwrap_python"], z),
        "posix_spawn_true_over_zygote_p50": over(cold["posix_spawn_true"], z),
        "zygote_all_layers_over_no_layers_p50": over(
            cold["zygote_all_layers"], cold["zygote_no_layers"]["p50"]
        ),
        "new_version_over_zygote_p50": over(res["new_version_ms"], z),
        "python_spawn_over_zygote_first_reply_p50": over(
            cold["python_spawn"], res["cold_start_first_reply_ms"]["zygote_all_layers"]["p50"]
        ),
    }


def targets(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cold = res["cold_start_ms"]["zygote_all_layers"]
    uss = res["idle_uss_mb"]["mean"]
    idle = res["cold_start_ms"]["zygote_all_layers_after_idle"]
    checks = {
        "cold_start_p50_ms": cold["p50"],
        "cold_start_p99_ms": cold["p99"],
        "cold_start_after_idle_p50_ms": idle["p50"],
        "cold_start_after_idle_p99_ms": idle["p99"],
        "warm_roundtrip_p50_us": res["warm_roundtrip_us"]["p50"],
        "idle_uss_mb": uss,
    }
    return {
        k: {
            "target": f"<= {TARGETS[k.replace('_after_idle', '')]:g}",
            "value": v,
            "met": v <= TARGETS[k.replace("_after_idle", "")],
        }
        for k, v in checks.items()
    }


# --- output -------------------------------------------------------------------------------


def row(name: str, st: dict[str, float] | None, unit: str) -> str:
    if st is None:
        return f"  {name:<44} {'n/a (see commands)':>10}"
    cols = " ".join(f"{st[k]:>9.3f}" if unit == "ms" else f"{st[k]:>9.1f}" for k in STAT_COLS)
    return f"  {name:<44} {int(st['n']):>5} {cols}"


STAT_COLS = ("p50", "p90", "p99", "mean", "max")


def report(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        "Sandbox engine benchmark (edgerun, issue 3)",
        f"  {m['date']}  nproc={m['nproc']}  kernel={m['kernel']}  python={m['python']}"
        f"  loop={m['loop']}  loadavg before/after: {m['loadavg_before']} / {m['loadavg_after']}",
        f"  layers (all): {res['layers']['all']}",
        "",
        f"  {'':<44} {'n':>5} " + " ".join(f"{c:>9}" for c in STAT_COLS),
        "cold start (ms)",
    ]
    cold = res["cold_start_ms"]
    first = res["cold_start_first_reply_ms"]
    gap = f"{res['idle_gap_ms']:g}"
    for name, st in (
        ("zygote, all layers: factory.start", cold["zygote_all_layers"]),
        ("zygote, all layers: start + first reply", first["zygote_all_layers"]),
        ("zygote, no cgroups: factory.start", cold["zygote_no_cgroups"]),
        (f"zygote, all layers, after {gap} ms idle", cold["zygote_all_layers_after_idle"]),
        (f"zygote, no cgroups, after {gap} ms idle", cold["zygote_no_cgroups_after_idle"]),
        ("zygote, no layers: factory.start", cold["zygote_no_layers"]),
        ("zygote, no layers: start + first reply", first["zygote_no_layers"]),
        ("python -I -c pass (until exit)", cold["python_spawn"]),
        ("bwrap ... python -I -c pass (until exit)", cold["bwrap_python"]),
        ("posix_spawn /bin/true (until exit)", cold["posix_spawn_true"]),
        ("sandbox.close, all layers (not in start)", res["sandbox_close_ms"]["zygote_all_layers"]),
        ("sandbox.close, no layers", res["sandbox_close_ms"]["zygote_no_layers"]),
    ):
        lines.append(row(name, st, "ms"))
    lines.append("first start of a new version (ms)")
    lines.append(row("new zygote + import + fork, all layers", res["new_version_ms"], "ms"))
    lines.append("warm round trip (µs)")
    lines.append(row("pool.lease + sandbox.invoke, no HTTP", res["warm_roundtrip_us"], "us"))
    lines.append("idle warm sandbox memory")
    lines.append(row("USS (MB)", res["idle_uss_mb"], "ms"))
    lines.append(row("PSS (MB)", res["idle_pss_mb"], "ms"))
    lines.append(row("RSS (MB)", res["idle_rss_mb"], "ms"))
    lines.append(row("page tables (kB, not in USS)", res["idle_page_tables_kb"], "ms"))
    if res["idle_cgroup_charged_mb"]:
        lines.append(row("charged to its memory cgroup (MB)", res["idle_cgroup_charged_mb"], "ms"))
    lines.append(f"  sandboxes per GB (1024 / mean USS): {res['sandboxes_per_gb']}")
    for name, mem in (
        ("zygote (per version)", res["per_version"]["zygote"]),
        ("z0 waiter (per version)", res["per_version"]["z0_waiter"]),
        ("template (per node)", res["per_node_template"]),
    ):
        if mem:
            lines.append(
                f"  {name:<26} USS {mem['uss_mb']:.2f} MB  PSS {mem['pss_mb']:.2f} MB"
                f"  RSS {mem['rss_mb']:.2f} MB"
            )
    lines.append("ratios (p50)")
    lines += [f"  {k}: {v}" for k, v in res["ratios"].items()]
    lines.append("targets")
    for k, t in res["targets"].items():
        lines.append(
            f"  {k:<30} {t['target']:>8}  got {t['value']:<9} {'met' if t['met'] else 'NOT met'}"
        )
    lines.append("where the time goes (µs, measured from the benchmark side)")
    lines.append(f"    {'':<56} {'p50':>9} {'p99':>9}")
    for section, parts in res["profile"].items():
        lines.append(f"  {section}")
        for k, v in parts.items():
            lines.append(f"    {k:<56} {v['p50']:>9.1f} {v['p99']:>9.1f}")
    lines.append(f"elapsed: {res['elapsed_s']} s")
    return "\n".join(lines)


def parse(argv: list[str] | None) -> tuple[Options, str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--samples", type=int, default=200, help="cold starts per method")
    p.add_argument("--roundtrips", type=int, default=2000, help="warm round trips")
    p.add_argument("--new-versions", type=int, default=20, help="first starts of new versions")
    p.add_argument("--idle", type=int, default=50, help="idle sandboxes for the memory figure")
    p.add_argument("--rounds", type=int, default=4, help="interleaving rounds for cold starts")
    p.add_argument("--profile-samples", type=int, default=100, help="samples per profile")
    p.add_argument("--memory-mb", type=int, default=128, help="memory_mb of the function")
    p.add_argument("--spaced", type=int, default=30, help="cold starts after an idle gap")
    p.add_argument("--gap-ms", type=float, default=100.0, help="the idle gap before those")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument(
        "--no-warm-moves",
        action="store_true",
        help="engines without the cgroup MigrationWarmer (the baseline for cold-start tails)",
    )
    a = p.parse_args(argv)
    opts = Options(
        samples=max(1, a.samples),
        roundtrips=max(1, a.roundtrips),
        new_versions=max(1, a.new_versions),
        idle=max(1, a.idle),
        rounds=max(1, min(a.rounds, a.samples)),
        profile_samples=max(1, a.profile_samples),
        memory_mb=a.memory_mb,
        spaced=max(1, a.spaced),
        gap_ms=max(0.0, a.gap_ms),
        warm_moves=not a.no_warm_moves,
    )
    return opts, a.loop


def main(argv: list[str] | None = None) -> None:
    opts, loop = parse(argv)
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            loop = "asyncio (uvloop missing)"
    machine = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loop": loop,
        "loadavg_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    work = Path(tempfile.mkdtemp(prefix="edgerun-bench-"))
    os.chmod(work, 0o755)
    started = time.monotonic()
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            res = runner.run(run(opts, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["elapsed_s"] = round(time.monotonic() - started, 1)
    machine["loadavg_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    res["machine"] = machine
    res["ratios"] = ratios(res)
    res["targets"] = targets(res)
    print(report(res))
    print(json.dumps(res, separators=(",", ":")))


if __name__ == "__main__":
    main()
