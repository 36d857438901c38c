"""Data-plane speed of edgerun against its peers (issue 5).

One after another on this machine, with the same load settings (``wrk -t2 -c32
-d10s --latency`` and ``hey -z 10s -c 32``), each server alone (start it, warm it
with ~200 requests, measure, stop it):

1. workerd: hello and JSON-transform (a ~300-byte JSON order POSTed);
2. functions-framework: default mode (Flask under gunicorn) hello and
   JSON-transform, and ``--asgi`` mode (Starlette under gunicorn's uvicorn worker) hello;
3. a bare raw-ASGI hello under uvicorn + uvloop + httptools (the ceiling);
4. edgerun: a LocalCluster (control, one region, two POPs that deem every function
   popular). pop-1 may hold one sandbox per connection (``max_per_function`` =
   connections, a memory budget to match) and serves hello and JSON-transform
   ``local-warm`` (placement ``auto``), and hello with ``placement="edge"`` (never
   forwarded); pop-2 keeps the node defaults (8 sandboxes per function) and serves
   hello. Then a ``placement="region"`` hello through pop-1 (forwarded) and straight
   at the region, under load and with one connection.

For each: req/s, p50 and p99 from wrk and from hey, the peak RSS and PSS of the
server's whole process tree (sampled from /proc every 100 ms; PSS every 2 s), the
CPU steal during the row and, for edgerun, where the POP placed the requests. It
prints a table, the ratios and targets, and ends with exactly one JSON line.
``--profile PATH`` then records pop-1 under wrk with py-spy (speedscope JSON files
``PATH.<case>.speedscope.json``) and prints where its time goes.

Run it with ``bash scripts/bench peers`` (installs wrk, hey, workerd and
functions-framework first); ``--duration 5`` for a quick run, ``--help`` for the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from edgerun.build import build_bundle
from edgerun.client import Client
from edgerun.cluster import LocalCluster, free_port
from edgerun.config import ControlSpec, PopSpec, RegionSpec, Topology
from edgerun.models import FunctionConfig

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ORDER = HERE / "order.json"
WRK_LUA = HERE / "wrk.lua"
WORKERD = HERE / "node_modules" / ".bin" / "workerd"
FF_BIN = HERE / ".venv-ff" / "bin" / "functions-framework"
PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024

TARGETS: dict[str, tuple[str, float]] = {
    "edgerun_over_ff_default_rps": (">=", 5.0),
    "forward_added_p50_ms": ("<=", 0.5),
    "forward_added_p50_ms_one_connection": ("<=", 0.5),
    "node_rss_mb": ("<=", 150.0),
    "node_pss_mb": ("<=", 150.0),
}
"""``node_rss_mb`` sums the RSS of the POP and every sandbox, zygote and template it
forked (shared pages counted once per process); ``node_pss_mb`` shares them out."""


# --- settings and results ---------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    threads: int
    connections: int
    duration: int
    warmup: int
    hey: str | None


@dataclass
class Load:
    """One load-generator run."""

    tool: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    error_kinds: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "requests": self.requests,
            "errors": self.errors,
        }
        if self.errors:
            out["error_kinds"] = self.error_kinds
        return out


@dataclass
class Peak:
    """Peak memory of one process tree while a row was measured."""

    rss_mb: float = 0.0
    root_rss_mb: float = 0.0
    pss_mb: float = 0.0
    procs: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rss_mb": round(self.rss_mb, 1),
            "root_rss_mb": round(self.root_rss_mb, 1),
            "pss_mb": round(self.pss_mb, 1),
            "procs": self.procs,
        }


@dataclass
class Row:
    key: str
    label: str
    wrk: Load | None = None
    hey: Load | None = None
    memory: dict[str, Peak] = field(default_factory=dict)
    placements: dict[str, int] | None = None
    loadavg: tuple[str, str] = ("", "")
    steal_pct: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": self.label,
            "wrk": self.wrk.as_dict() if self.wrk else None,
            "hey": self.hey.as_dict() if self.hey else None,
            "memory": {k: v.as_dict() for k, v in self.memory.items()},
            "loadavg_before_after": list(self.loadavg),
            "cpu_steal_pct": self.steal_pct,
        }
        if self.placements is not None:
            out["placements"] = self.placements
        if self.error:
            out["error"] = self.error
        return out


# --- /proc: load and process-tree memory ----------------------------------------------------


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_times() -> tuple[int, int]:
    """(steal, total) jiffies from /proc/stat: how much CPU the hypervisor took."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def wait_for_quiet(max_load: float, max_wait_s: float) -> dict[str, Any]:
    """Poll the 1-minute load average until it is below ``max_load``."""
    start = time.monotonic()
    first = loadavg()
    announced = False
    while True:
        now = float(loadavg().split()[0])
        waited = time.monotonic() - start
        if now < max_load:
            break
        if waited >= max_wait_s:
            print(f"  load still {now:.2f} after {waited:.0f} s; measuring anyway", flush=True)
            break
        if not announced:
            print(f"  waiting for the 1-min load average ({now:.2f}) to drop below {max_load}")
            announced = True
        time.sleep(5)
    return {
        "at_start": first,
        "when_measuring": loadavg(),
        "waited_s": round(time.monotonic() - start, 1),
        "quiet": float(loadavg().split()[0]) < max_load,
    }


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        ppid = int(data[data.rindex(b")") + 2 :].split()[1])
        kids[ppid].append(int(entry.name))
    return kids


def process_tree(root: int, kids: dict[int, list[int]]) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, ()))
    return out


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


class TreeSampler:
    """Samples the summed RSS of process trees every ``interval`` s in a thread.

    PSS needs smaps_rollup, which walks every mapping under the process's mmap lock
    (~2 ms for workerd's large V8 reservations, stalling its page faults), so it is
    read only every ``pss_every`` samples; statm is cheap."""

    def __init__(self, roots: dict[str, int], interval: float = 0.1, pss_every: int = 20) -> None:
        self.roots = roots
        self.interval = interval
        self.pss_every = pss_every
        self.peaks = {name: Peak() for name in roots}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        tick = 0
        while True:
            kids = _children()
            for name, root in self.roots.items():
                pids = process_tree(root, kids)
                peak = self.peaks[name]
                peak.rss_mb = max(peak.rss_mb, sum(_rss(p) for p in pids) / MB)
                peak.root_rss_mb = max(peak.root_rss_mb, _rss(root) / MB)
                peak.procs = max(peak.procs, len(pids))
                if tick % self.pss_every == 0:
                    peak.pss_mb = max(peak.pss_mb, sum(_pss(p) for p in pids) / MB)
            tick += 1
            if self._stop.wait(self.interval):
                return


# --- load generators --------------------------------------------------------------------------


def run_wrk(url: str, body: Path | None, s: Settings, *, threads: int = 0, conns: int = 0) -> Load:
    cmd = [
        "wrk",
        f"-t{threads or s.threads}",
        f"-c{conns or s.connections}",
        f"-d{s.duration}s",
        "--latency",
        "-s",
        str(WRK_LUA),
        url,
    ]
    if body is not None:
        cmd += ["--", str(body)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=s.duration + 60, check=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    lat = data["latency_us"]
    return Load(
        tool="wrk",
        rps=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=lat["p50"] / 1000,
        p99_ms=lat["p99"] / 1000,
        requests=data["requests"],
        errors=sum(data["errors"].values()),
        error_kinds={k: v for k, v in data["errors"].items() if v},
    )


def parse_hey(text: str) -> Load:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    pct = {int(p): float(v) * 1000 for p, v in re.findall(r"(\d+)%+ in ([\d.]+) secs", text)}
    statuses = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", text)}
    errors_part = text.split("Error distribution:", 1)[1] if "Error distribution:" in text else ""
    failed = sum(int(n) for n in re.findall(r"\[(\d+)\]", errors_part))
    if rps is None or 50 not in pct or 99 not in pct:
        raise RuntimeError(f"cannot parse hey's output:\n{text}")
    bad = sum(n for code, n in statuses.items() if not 200 <= code < 400)
    return Load(
        tool="hey",
        rps=float(rps.group(1)),
        p50_ms=pct[50],
        p99_ms=pct[99],
        requests=sum(statuses.values()),
        errors=bad + failed,
        error_kinds={
            **{str(code): n for code, n in statuses.items() if not 200 <= code < 400},
            **({"client": failed} if failed else {}),
        },
    )


def run_hey(url: str, body: Path | None, s: Settings) -> Load | None:
    if s.hey is None:
        return None
    cmd = [s.hey, "-z", f"{s.duration}s", "-c", str(s.connections)]
    if body is not None:
        cmd += ["-m", "POST", "-T", "application/json", "-D", str(body)]
    out = subprocess.run(
        [*cmd, url], capture_output=True, text=True, timeout=s.duration + 60, check=True
    )
    return parse_hey(out.stdout)


def warm(url: str, body: Path | None, n: int, concurrency: int = 32) -> Counter[str]:
    """Send ``n`` requests, ``concurrency`` at a time; counts status (and placement)."""
    content = body.read_bytes() if body else None
    seen: Counter[str] = Counter()
    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as http:

        def one(_: int) -> str:
            if content is None:
                r = http.get(url)
            else:
                r = http.post(url, content=content, headers={"content-type": "application/json"})
            placement = r.headers.get("x-edgerun-placement")
            return f"{r.status_code} {placement}" if placement else str(r.status_code)

        with ThreadPoolExecutor(concurrency) as pool:
            seen.update(pool.map(one, range(n)))
    bad = {k: v for k, v in seen.items() if not k.startswith("200")}
    if bad:
        raise RuntimeError(f"warm-up of {url} got {dict(seen)}")
    return seen


def measure(row: Row, url: str, body: Path | None, s: Settings, roots: dict[str, int]) -> Row:
    """Warm-up, then wrk and hey in turn while the process trees are sampled."""
    warm(url, body, s.warmup)
    before = loadavg()
    steal0, total0 = cpu_times()
    with TreeSampler(roots) as sampler:
        row.wrk = run_wrk(url, body, s)
        if s.hey:
            time.sleep(1.0)
            row.hey = run_hey(url, body, s)
    row.memory = sampler.peaks
    row.loadavg = (before, loadavg())
    steal1, total1 = cpu_times()
    row.steal_pct = round(100 * (steal1 - steal0) / max(1, total1 - total0), 1)
    print(f"  {format_row(row)}", flush=True)
    return row


# --- servers ------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    """Until the server answers anything at ``url``."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not answering after {timeout} s")
        time.sleep(0.1)


@contextlib.contextmanager
def server(
    cmd: list[str], *, cwd: Path, ready_url: str, logdir: Path, name: str
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` in its own process group; the whole group is stopped on exit."""
    log = logdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    try:
        wait_ready(ready_url, proc, log)
        yield proc
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue
        # the group may outlive its leader (gunicorn workers): make sure it is gone
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


def peer_rows(s: Settings, logdir: Path, only: set[str]) -> list[Row]:
    rows: list[Row] = []
    hello_path, body = "/?name=world", ORDER

    def single(
        key: str, label: str, cmd: list[str], cwd: Path, path: str, payload: Path | None
    ) -> None:
        row = Row(key, label)
        rows.append(row)
        port = free_port()
        full = [a.replace("{port}", str(port)) for a in cmd]
        url = f"http://127.0.0.1:{port}{path}"
        try:
            with server(full, cwd=cwd, ready_url=url, logdir=logdir, name=key) as proc:
                measure(row, url, payload, s, {"server": proc.pid})
        except (RuntimeError, OSError, TimeoutError, subprocess.SubprocessError) as exc:
            row.error = f"{type(exc).__name__}: {exc}"[:500]
            print(f"  {key}: FAILED {row.error}", flush=True)

    if "workerd" in only:
        for key, const, path, payload in (
            ("workerd_hello", "helloConfig", hello_path, None),
            ("workerd_transform", "transformConfig", "/", body),
        ):
            single(
                key,
                f"workerd {key.split('_')[1]}",
                [
                    str(WORKERD),
                    "serve",
                    "config.capnp",
                    const,
                    "--socket-addr",
                    "http=127.0.0.1:{port}",
                ],
                HERE / "workerd",
                path,
                payload,
            )
    if "ff" in only:
        ff = [str(FF_BIN), "--source", str(HERE / "ff" / "main.py"), "--host", "127.0.0.1"]
        ff += ["--port", "{port}"]
        single(
            "ff_default_hello",
            "functions-framework (gunicorn) hello",
            [*ff, "--target", "hello"],
            HERE / "ff",
            hello_path,
            None,
        )
        single(
            "ff_default_transform",
            "functions-framework (gunicorn) transform",
            [*ff, "--target", "transform"],
            HERE / "ff",
            "/",
            body,
        )
        help_text = subprocess.run([str(FF_BIN), "--help"], capture_output=True, text=True).stdout
        if "--asgi" in help_text:
            single(
                "ff_asgi_hello",
                "functions-framework --asgi hello",
                [*ff, "--asgi", "--target", "hello_async"],
                HERE / "ff",
                hello_path,
                None,
            )
        else:
            rows.append(
                Row(
                    "ff_asgi_hello",
                    "functions-framework --asgi hello",
                    error="this functions-framework has no --asgi option",
                )
            )
    if "uvicorn" in only:
        single(
            "uvicorn_raw_hello",
            "uvicorn+uvloop+httptools raw ASGI hello",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "raw_asgi:app",
                "--app-dir",
                str(HERE),
                "--host",
                "127.0.0.1",
                "--port",
                "{port}",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            HERE,
            hello_path,
            None,
        )
    return rows


# --- edgerun -----------------------------------------------------------------------------------


_ADMIN: dict[str, str] = {}
"""The cluster's authorization header (node status needs the admin token)."""


def _status(url: str) -> dict[str, Any]:
    resp = httpx.get(f"{url}/v1/status", timeout=5, headers=_ADMIN)
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    return body


def placements(url: str, function: str) -> Counter[str]:
    return Counter(
        {
            f"{p['placement']} ({p['reason']})": p["count"]
            for p in _status(url)["placements"]
            if p["function"] == function
        }
    )


def wait_until(what: str, check: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def knows(url: str, name: str, sha: str) -> bool:
    try:
        fn = _status(url)["functions"].get(name)
    except httpx.HTTPError:
        return False
    return bool(fn and sha in fn["aliases"].values())


def until_local_warm(url: str, body: Path | None, timeout: float = 30.0) -> int:
    """Request until the POP answers ``local-warm``; returns how many it took."""
    content = body.read_bytes() if body else None
    deadline = time.monotonic() + timeout
    n = 0
    with httpx.Client(timeout=10) as http:
        while True:
            n += 1
            if content is None:
                r = http.get(url)
            else:
                r = http.post(url, content=content, headers={"content-type": "application/json"})
            if r.status_code != 200:
                raise RuntimeError(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
            if r.headers.get("x-edgerun-placement") == "local-warm":
                return n
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} never became local-warm")
            time.sleep(0.05)


def _safe_rmtree(root: Path) -> None:
    """Remove the cluster's folder unless something is still mounted under it."""
    mounts = Path("/proc/self/mountinfo").read_text().split("\n")
    if any(f" {root}/" in m or f" {root} " in m for m in mounts):
        print(f"  leaving {root}: something is mounted under it", flush=True)
        return
    shutil.rmtree(root, ignore_errors=True)


def prewarm(url: str, token: str, function: str, count: int) -> int:
    """Start idle sandboxes ahead of the load (``POST /v1/admin/prewarm``)."""
    resp = httpx.post(
        f"{url}/v1/admin/prewarm",
        json={"function": function, "count": count},
        headers={"authorization": f"Bearer {token}"},
        timeout=60,
    )
    resp.raise_for_status()
    return int(resp.json()["started"])


def edgerun_rows(s: Settings, profile: Path | None) -> tuple[list[Row], dict[str, Any]]:
    """POP-1 holds one sandbox per connection (``max_per_function`` = connections, memory
    budget to match); POP-2 runs with the node defaults (8 sandboxes per function, 1 GB)."""
    rows: list[Row] = []
    extra: dict[str, Any] = {}
    root = Path(tempfile.mkdtemp(prefix="edgerun-peers-"))
    per_fn = max(s.connections, 8)
    topology = Topology(
        control=ControlSpec(port=free_port()),
        region=[RegionSpec(name="region-1", port=free_port(), capacity_mb=4096)],
        pop=[
            PopSpec(
                name="pop-1",
                port=free_port(),
                capacity_mb=3 * per_fn * 128 + 1024,  # three functions run at pop-1
                regions=["region-1"],
            ),
            PopSpec(name="pop-2", port=free_port(), regions=["region-1"]),
        ],
    )
    cluster = LocalCluster(topology, root)
    cluster.nodes["pop-1"].config.max_per_function = per_fn
    extra["pop_settings"] = {
        name: {
            k: getattr(cluster.nodes[name].config, k)
            for k in ("capacity_mb", "max_per_function", "max_queue")
        }
        for name in ("pop-1", "pop-2", "region-1")
    }
    try:
        cluster.start()
        pop, pop2, region = (cluster.url(n) for n in ("pop-1", "pop-2", "region-1"))
        procs = {n: cluster.nodes[n].proc for n in ("pop-1", "pop-2", "region-1")}
        pids = {n: p.pid for n, p in procs.items() if p is not None}
        extra["pids"] = pids
        folders = {
            "hello": (HERE / "edgerun" / "hello", "handler.handler", "auto"),
            "json-transform": (HERE / "edgerun" / "json-transform", "transform.handler", "auto"),
            "hello-region": (HERE / "edgerun" / "hello", "handler.handler", "region"),
            "hello-edge": (HERE / "edgerun" / "hello", "handler.handler", "edge"),
        }
        token = cluster.token
        _ADMIN["authorization"] = f"Bearer {token}"
        with Client(cluster.control_url, token) as client:
            for name, (folder, handler, placement) in folders.items():
                config = FunctionConfig(handler=handler, placement=placement, auth="public")  # type: ignore[arg-type]
                sha = client.deploy(name, build_bundle(folder), config).aliases["latest"]
                for url in (pop, pop2, region):
                    wait_until(
                        f"{url} to learn {name}", lambda u=url, n=name, h=sha: knows(u, n, h)
                    )
        warm_counts: dict[str, Any] = {}
        extra["requests_to_local_warm"] = warm_counts

        def pop_row(key: str, label: str, node: str, fn: str, path: str, body: Path | None) -> None:
            row = Row(key, label)
            rows.append(row)
            base = cluster.url(node)
            url = f"{base}/fn/{fn}{path}"
            warm_counts[f"{node}/{fn}"] = until_local_warm(url, body)
            prewarm(base, token, fn, s.connections)
            before = placements(base, fn)
            measure(row, url, body, s, {"pop": pids[node]})
            row.placements = dict(placements(base, fn) - before)

        hello = "/?name=world"
        pop_row(
            "edgerun_pop_hello",
            f"edgerun POP local-warm hello ({per_fn}/fn)",
            "pop-1",
            "hello",
            hello,
            None,
        )
        pop_row(
            "edgerun_pop_transform",
            f"edgerun POP local-warm transform ({per_fn}/fn)",
            "pop-1",
            "json-transform",
            "/",
            ORDER,
        )
        pop_row(
            "edgerun_pop_edge_hello",
            f"edgerun POP hello, placement=edge ({per_fn}/fn)",
            "pop-1",
            "hello-edge",
            hello,
            None,
        )
        pop_row(
            "edgerun_pop_defaults_hello",
            "edgerun POP hello, node defaults (8/fn)",
            "pop-2",
            "hello",
            hello,
            None,
        )

        fwd_url = f"{pop}/fn/hello-region{hello}"
        direct_url = f"{region}/fn/hello-region{hello}"
        prewarm(region, token, "hello-region", s.connections)
        row = Row("edgerun_forwarded_hello", "edgerun POP -> region hello (forwarded)")
        rows.append(row)
        before = placements(pop, "hello-region")
        measure(row, fwd_url, None, s, {"pop": pids["pop-1"], "region": pids["region-1"]})
        row.placements = dict(placements(pop, "hello-region") - before)
        row = Row("edgerun_region_direct_hello", "edgerun region direct hello")
        rows.append(row)
        measure(row, direct_url, None, s, {"region": pids["region-1"]})

        # The same two with one connection: what forwarding adds without queueing.
        one = Settings(1, 1, max(2, s.duration // 2), 0, None)
        serial = {
            "forwarded": run_wrk(fwd_url, None, one, threads=1, conns=1),
            "direct": run_wrk(direct_url, None, one, threads=1, conns=1),
        }
        extra["forward_c1"] = {k: v.as_dict() for k, v in serial.items()}
        print(
            f"  one connection (wrk -t1 -c1 -d{one.duration}s): forwarded p50 "
            f"{serial['forwarded'].p50_ms:.3f} ms, region direct p50 "
            f"{serial['direct'].p50_ms:.3f} ms",
            flush=True,
        )
        if profile is not None:
            extra["profile"] = {}
            for tag, fn in (
                ("local-edge", "hello-edge"),
                ("local-auto", "hello"),
                ("forwarded", "hello-region"),
            ):
                before = placements(pop, fn)
                prof = profile_pop(pids["pop-1"], f"{pop}/fn/{fn}{hello}", s, profile, tag)
                prof["placements"] = dict(placements(pop, fn) - before)
                extra["profile"][tag] = prof
    finally:
        cluster.stop()
        _safe_rmtree(root)
    return rows, extra


# --- profile ----------------------------------------------------------------------------------


def profile_pop(pid: int, url: str, s: Settings, out: Path, tag: str) -> dict[str, Any]:
    """py-spy the POP while wrk loads it; summarise the speedscope profile."""
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        return {"error": "py-spy is not installed in the project venv"}
    out.parent.mkdir(parents=True, exist_ok=True)
    speedscope = out.parent / f"{out.name}.{tag}.speedscope.json"
    duration = max(5, s.duration)
    spy = subprocess.Popen(
        [
            str(py_spy),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(duration),
            "--rate",
            "250",
            "--format",
            "speedscope",
            "--output",
            str(speedscope),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(0.5)
        load = run_wrk(url, None, Settings(s.threads, s.connections, duration - 1, 0, None))
        _, err = spy.communicate(timeout=duration + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if spy.returncode != 0 or not speedscope.exists():
        return {"error": f"py-spy failed: {err.decode(errors='replace')[-500:]}"}
    summary = summarize_speedscope(json.loads(speedscope.read_text()))
    summary["file"] = str(speedscope)
    summary["wrk_under_profiler"] = load.as_dict()
    return summary


def _area(file: str) -> str:
    """A coarse name for where a frame's code lives."""
    if "/site-packages/" in file:
        return file.split("/site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/src/edgerun/" in file:
        return "edgerun." + file.split("/src/edgerun/", 1)[1].removesuffix(".py").replace("/", ".")
    if "/python3." in file:
        return "stdlib." + file.rsplit("/python3.", 1)[1].split("/", 1)[1].split("/", 1)[0]
    return file or "?"


PROBES = {
    "AsyncClient.send": "httpx: the whole request to the region",
    "current_async_library": "httpcore: `import sniffio` that fails (not installed)",
    "_find_and_load": "import machinery at request time",
    "RequestResponseCycle.run_asgi": "uvicorn: one request through the ASGI app",
    "HttpToolsProtocol.data_received": "uvicorn: HTTP parsing (httptools)",
    "Router.__call__": "starlette: routing and the endpoint",
    "ForkedSandbox.invoke": "IPC to the sandbox and back",
}
"""Library (and engine) functions whose inclusive share the profile summary reports."""


def summarize_speedscope(doc: dict[str, Any], top: int = 20) -> dict[str, Any]:
    """Shares of the event-loop thread's samples: self time by area and by function,
    inclusive time of edgerun's functions and of a few library entry points."""
    frames = doc["shared"]["frames"]

    def label(i: int) -> str:  # per function: a frame's line varies within it
        f = frames[i]
        return f"{f['name']} ({_area(str(f.get('file', '')))})"

    self_n: Counter[str] = Counter()
    area_n: Counter[str] = Counter()
    edgerun_n: Counter[str] = Counter()
    probe_n: Counter[str] = Counter()
    total = 0
    threads: dict[str, int] = {}
    for prof in doc["profiles"]:
        threads[prof["name"]] = len(prof["samples"])
        if "MainThread" not in prof["name"]:
            continue  # the event loop runs the data plane; other threads are helpers
        for stack in prof["samples"]:
            if not stack:
                continue
            total += 1
            leaf = stack[-1]
            self_n[label(leaf)] += 1
            area_n[_area(str(frames[leaf].get("file", "")))] += 1
            names = {frames[i]["name"] for i in stack}
            for name in PROBES:
                if name in names:
                    probe_n[name] += 1
            for lbl in {label(i) for i in stack}:
                if "(edgerun." in lbl and not any(
                    m in lbl for m in ("edgerun.cli", "edgerun.server", "edgerun.__main__")
                ):
                    edgerun_n[lbl] += 1

    def share(c: Counter[str], n: int = top) -> list[list[Any]]:
        return [[k, round(100 * v / total, 1)] for k, v in c.most_common(n)] if total else []

    return {
        "samples": total,
        "threads": threads,
        "area_self_pct": share(area_n, 15),
        "self_pct": share(self_n),
        "edgerun_inclusive_pct": share(edgerun_n, 15),
        "library_inclusive_pct": [
            [f"{k} ({PROBES[k]})", round(100 * probe_n[k] / total, 1) if total else 0.0]
            for k in PROBES
        ],
    }


# --- report -----------------------------------------------------------------------------------


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def format_row(row: Row) -> str:
    w, h = row.wrk, row.hey
    mem = max((p.rss_mb for p in row.memory.values()), default=None)
    pss = max((p.pss_mb for p in row.memory.values()), default=None)
    cells = [
        f"{row.label:<44}",
        f"{_fmt(w.rps if w else None, 0):>8}",
        f"{_fmt(w.p50_ms if w else None):>7}",
        f"{_fmt(w.p99_ms if w else None):>7}",
        f"{_fmt(h.rps if h else None, 0):>8}",
        f"{_fmt(h.p50_ms if h else None):>7}",
        f"{_fmt(h.p99_ms if h else None):>7}",
        f"{_fmt(mem, 1):>8}",
        f"{_fmt(pss, 1):>7}",
        f"{(w.errors if w else 0) + (h.errors if h else 0):>5}",
        f"{_fmt(row.steal_pct, 1):>6}",
    ]
    return " ".join(cells) + (f"  ({row.error})" if row.error else "")


HEADER = (
    f"{'server':<44} {'wrk r/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'hey r/s':>8} {'p50 ms':>7} "
    f"{'p99 ms':>7} {'RSS MB':>8} {'PSS MB':>7} {'errs':>5} {'steal%':>6}"
)


def _ratio(a: float | None, b: float | None, digits: int = 2) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, digits)


def compute_ratios(rows: dict[str, Row], extra: dict[str, Any]) -> dict[str, Any]:
    def get(key: str, tool: str, attr: str) -> float | None:
        row = rows.get(key)
        load = getattr(row, tool) if row else None
        return getattr(load, attr) if load else None

    def ratio(a: str, b: str, tool: str = "wrk", attr: str = "rps") -> float | None:
        return _ratio(get(a, tool, attr), get(b, tool, attr))

    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(a - b, 3)

    def peak(keys: tuple[str, ...], group: str, attr: str) -> float | None:
        values = [
            getattr(rows[k].memory[group], attr)
            for k in keys
            if k in rows and group in rows[k].memory
        ]
        return round(max(values), 1) if values else None

    c1 = extra.get("forward_c1", {})
    pop1 = ("edgerun_pop_hello",)
    pop1_all = ("edgerun_pop_hello", "edgerun_pop_transform", "edgerun_pop_edge_hello")
    pop2 = ("edgerun_pop_defaults_hello",)
    return {
        "edgerun_hello_rps_over_workerd_hello": ratio("edgerun_pop_hello", "workerd_hello"),
        "edgerun_hello_rps_over_workerd_hello_hey": ratio(
            "edgerun_pop_hello", "workerd_hello", "hey"
        ),
        "edgerun_transform_rps_over_workerd_transform": ratio(
            "edgerun_pop_transform", "workerd_transform"
        ),
        "edgerun_p99_hey_over_workerd_p99_hey": ratio(
            "edgerun_pop_hello", "workerd_hello", "hey", "p99_ms"
        ),
        "edgerun_over_ff_default_rps": ratio("edgerun_pop_hello", "ff_default_hello"),
        "edgerun_over_ff_default_rps_hey": ratio("edgerun_pop_hello", "ff_default_hello", "hey"),
        "edgerun_node_defaults_over_ff_default_rps": ratio(
            "edgerun_pop_defaults_hello", "ff_default_hello"
        ),
        "edgerun_edge_over_ff_default_rps": ratio("edgerun_pop_edge_hello", "ff_default_hello"),
        "edgerun_edge_over_workerd_hello_rps": ratio("edgerun_pop_edge_hello", "workerd_hello"),
        "edgerun_edge_over_uvicorn_raw_rps": ratio("edgerun_pop_edge_hello", "uvicorn_raw_hello"),
        "edgerun_transform_over_ff_default_transform_rps": ratio(
            "edgerun_pop_transform", "ff_default_transform"
        ),
        "edgerun_over_ff_asgi_rps": ratio("edgerun_pop_hello", "ff_asgi_hello"),
        "edgerun_over_uvicorn_raw_rps": ratio("edgerun_pop_hello", "uvicorn_raw_hello"),
        "forward_added_p50_ms": diff(
            get("edgerun_forwarded_hello", "wrk", "p50_ms"),
            get("edgerun_region_direct_hello", "wrk", "p50_ms"),
        ),
        "forward_added_p50_ms_hey": diff(
            get("edgerun_forwarded_hello", "hey", "p50_ms"),
            get("edgerun_region_direct_hello", "hey", "p50_ms"),
        ),
        "forward_added_p50_ms_one_connection": diff(
            c1.get("forwarded", {}).get("p50_ms"), c1.get("direct", {}).get("p50_ms")
        ),
        "forwarded_rps_over_region_direct_rps": ratio(
            "edgerun_forwarded_hello", "edgerun_region_direct_hello"
        ),
        "node_rss_mb": peak(pop1, "pop", "rss_mb"),
        "node_pss_mb": peak(pop1, "pop", "pss_mb"),
        "node_process_rss_mb": peak(pop1, "pop", "root_rss_mb"),
        "node_sandboxes_procs": peak(pop1, "pop", "procs"),
        "node_rss_mb_three_functions": peak(pop1_all, "pop", "rss_mb"),
        "node_pss_mb_three_functions": peak(pop1_all, "pop", "pss_mb"),
        "node_defaults_rss_mb": peak(pop2, "pop", "rss_mb"),
        "node_defaults_pss_mb": peak(pop2, "pop", "pss_mb"),
        "region_rss_mb_forwarded": peak(("edgerun_forwarded_hello",), "region", "rss_mb"),
        "region_pss_mb_forwarded": peak(("edgerun_forwarded_hello",), "region", "pss_mb"),
    }


def judge(ratios: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, (op, bound) in TARGETS.items():
        value = ratios.get(key)
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out[key] = {"target": f"{op} {bound:g}", "value": value, "met": met}
    return out


def machine_info() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def versions(s: Settings) -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return ""
        return (
            (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""
        )

    ff_py = HERE / ".venv-ff" / "bin" / "python"
    pkg = "import importlib.metadata as m; print(m.version('{}'))"
    return {
        "wrk": first_line(["wrk", "-v"]),
        "hey": "debian " + first_line(["dpkg-query", "-W", "-f", "${Version}", "hey"])
        if s.hey
        else "",
        "workerd": first_line([str(WORKERD), "--version"]),
        "functions_framework": first_line([str(ff_py), "-c", pkg.format("functions-framework")]),
        "gunicorn": first_line([str(ff_py), "-c", pkg.format("gunicorn")]),
        "uvicorn": first_line([sys.executable, "-c", pkg.format("uvicorn")]),
    }


def print_profile(tag: str, profile: dict[str, Any]) -> None:
    if "error" in profile:
        print(f"profile {tag}: {profile['error']}")
        return
    w = profile["wrk_under_profiler"]
    print(
        f"POP profile, {tag} under wrk (py-spy --nonblocking, {profile['samples']} "
        f"event-loop samples; {profile['file']})"
    )
    print(f"  wrk while profiled: {w['rps']} req/s, p50 {w['p50_ms']} ms")
    print(f"  placements while profiled: {profile.get('placements')}")
    for title, key in (
        ("self time by area", "area_self_pct"),
        ("self time by function", "self_pct"),
        ("inclusive time, edgerun functions", "edgerun_inclusive_pct"),
        ("inclusive time, library entry points", "library_inclusive_pct"),
    ):
        print(f"  {title} (% of event-loop samples)")
        for name, pct in profile[key]:
            print(f"    {pct:5.1f}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk/hey run")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=200, help="requests before measuring")
    parser.add_argument("--max-load", type=float, default=0.8, help="1-min load to wait for")
    parser.add_argument("--load-wait", type=float, default=300, help="longest wait, seconds")
    parser.add_argument(
        "--only",
        default="workerd,ff,uvicorn,edgerun",
        help="comma-separated subset of workerd,ff,uvicorn,edgerun",
    )
    parser.add_argument("--no-hey", action="store_true", help="wrk only")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy pop-1 under wrk; writes PATH.<case>.speedscope.json",
    )
    args = parser.parse_args()
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    hey = None if args.no_hey else shutil.which("hey")
    s = Settings(args.threads, args.connections, args.duration, args.warmup, hey)
    if shutil.which("wrk") is None:
        sys.exit("peers_bench: wrk is not installed (run bash scripts/bench peers)")

    # SIGTERM/SIGHUP unwind like Ctrl-C, so every server is stopped.
    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)

    started = time.monotonic()
    machine = machine_info()
    print("Data-plane speed vs peers (edgerun, issue 5)")
    print(
        f"  {machine['date']}  nproc={machine['nproc']}  {machine['cpu']}  "
        f"kernel={machine['kernel']}  python={machine['python']}"
    )
    quiet = wait_for_quiet(args.max_load, args.load_wait)
    machine["loadavg"] = quiet
    tools = versions(s)
    print(
        f"  loadavg at start {quiet['at_start']}, when measuring {quiet['when_measuring']} "
        f"(waited {quiet['waited_s']} s)"
    )
    print(
        f"  load: wrk -t{s.threads} -c{s.connections} -d{s.duration}s --latency; "
        + (f"hey -z {s.duration}s -c {s.connections}" if hey else "hey: not installed")
    )
    print(f"  warm-up: {s.warmup} requests per server; versions: {tools}")
    print()
    print(HEADER)

    rows: list[Row] = []
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="peers-logs-") as logs:
        rows += peer_rows(s, Path(logs), only)
        if "edgerun" in only:
            try:
                er, extra = edgerun_rows(s, args.profile)
                rows += er
            except (RuntimeError, OSError, TimeoutError, httpx.HTTPError) as exc:
                print(f"  edgerun: FAILED {type(exc).__name__}: {exc}", flush=True)
                rows.append(Row("edgerun", "edgerun", error=f"{type(exc).__name__}: {exc}"[:500]))

    by_key = {r.key: r for r in rows}
    print()
    print(HEADER)
    for r in rows:
        print(format_row(r))
    print("  (RSS / PSS: peak sums over the server's whole process tree, sampled every 100 ms")
    print("   (PSS every 2 s); edgerun rows: the POP's tree (sandboxes, zygotes, template")
    print("   included), the region's on the direct row, the larger of the two when forwarded;")
    print("   steal%: CPU time the hypervisor took from this VM during the row)")
    for r in rows:
        if r.placements:
            print(f"  placements during {r.key}: {r.placements}")
    for r in rows:
        for group, peak in r.memory.items():
            if r.key.startswith("edgerun"):
                print(f"  memory {r.key} [{group}]: {peak.as_dict()}")
    if "forward_c1" in extra:
        c1 = extra["forward_c1"]
        print(f"  one connection (wrk -t1 -c1): forwarded {c1['forwarded']}, direct {c1['direct']}")

    ratios = compute_ratios(by_key, extra)
    targets = judge(ratios)
    print("ratios")
    for k, v in ratios.items():
        print(f"  {k}: {v}")
    print("targets")
    for k, t in targets.items():
        verdict = "-" if t["met"] is None else ("met" if t["met"] else "NOT met")
        print(f"  {k:<36} {t['target']:>6}  got {t['value']!s:<9} {verdict}")
    for tag, prof in extra.get("profile", {}).items():
        print_profile(tag, prof)
    machine["loadavg"]["at_end"] = loadavg()
    elapsed = round(time.monotonic() - started, 1)
    print(f"elapsed: {elapsed} s; loadavg at end {machine['loadavg']['at_end']}")
    result = {
        "bench": "peers",
        "machine": machine,
        "versions": tools,
        "settings": {
            "wrk": f"-t{s.threads} -c{s.connections} -d{s.duration}s --latency",
            "hey": f"-z {s.duration}s -c {s.connections}" if hey else None,
            "warmup": s.warmup,
            "body_bytes": ORDER.stat().st_size,
        },
        "rows": {r.key: r.as_dict() for r in rows},
        "forward_one_connection": extra.get("forward_c1"),
        "requests_to_local_warm": extra.get("requests_to_local_warm"),
        "edgerun_nodes": extra.get("pop_settings"),
        "ratios": ratios,
        "targets": targets,
        "profile": extra.get("profile"),
        "elapsed_s": elapsed,
    }
    print(json.dumps(result, separators=(",", ":")))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("peers_bench: interrupted; every server it started was stopped", file=sys.stderr)
        sys.exit(130)
