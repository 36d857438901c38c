"""Scale in functions: one ``edgerun up`` topology (control, two regions, two POPs)
taken to 1k, 10k and 100k tiny functions through the SDK, as a user would.

    .venv/bin/python bench/scale_bench.py [--steps 1000,10000,100000]
        [--threads 8] [--probes 20] [--keep DIR]
    .venv/bin/python bench/scale_bench.py --reuse DIR --steps 100000
        (a kept cluster: only its start, restarts and stop)

At each step it reports:

- deploys/s (each function its own bundle: upload, then PUT);
- deploy -> invocable at every POP (p50/p99): after the step, ``--probes`` new
  functions are deployed one at a time, and both POPs are called (side by side)
  until they answer 200; the clock starts when the deploy call returns; and
  where those first calls ran, and what a POP measured a bundle fetch (a cache
  miss) to cost, as its placement counts it (``/v1/placement/explain``);
- per node: RSS of the node's own process and PSS of its tree (sandboxes and
  zygotes included, shared pages counted once), its data folder on disk, code
  bundles extracted there and zips held, and the feed lag (control revision
  minus the node's) at the end of the deploys, plus how long the slowest node
  took to catch up;
- ``/v1/health`` latency of every node, sampled every 0.25 s throughout (p50,
  p99, max, and how many took over 50 ms), by phase, from a process of its own
  (a thread beside the deploying threads would wait for their GIL and report
  it as the node's latency).

At the start and after the last step it times starting the topology (until every
node is healthy and, after the last step, in sync with the control plane and a
probe answers at every POP), restarting one POP (``edgerun stop``/``start``,
until it answers a probe), a POP joining with an empty registry copy (how long
it takes to hold every function, and its /v1/health latency meanwhile), and
stopping it all (SIGINT until no process is left). After each step it also
waits until both regions hold the zip of every function (they prefetch what
their POPs may forward).
The baseline in the same run is the first step: the figures at 10k and 100k are
also given as ratios to those at 1k. Ends with one JSON line.

Runs on the built-in topology's ports (8700-8721), so nothing else may hold them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import httpx
from proctree import alive, children, pss_mb, rss_mb, tree

from edgerun.client import Client
from edgerun.models import FunctionConfig

CONTROL = "http://127.0.0.1:8700"
NODES = {
    "region-1": "http://127.0.0.1:8710",
    "region-2": "http://127.0.0.1:8711",
    "pop-1": "http://127.0.0.1:8720",
    "pop-2": "http://127.0.0.1:8721",
}
POPS = ["pop-1", "pop-2"]
CONFIG = FunctionConfig(handler="main.handler")


def bundle(name: str) -> bytes:
    """A tiny function whose code differs per name (a bundle of its own)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(
            "main.py", f"NAME = {name!r}\n\ndef handler(event, context):\n    return NAME\n"
        )
    return buf.getvalue()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# --- processes -----------------------------------------------------------------
def node_pids(up_pid: int) -> dict[str, tuple[int, set[int]]]:
    """Each node's process and its tree, found by the node's name in its command line."""
    found: dict[str, tuple[int, set[int]]] = {}
    for pid in children(up_pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = b" ".join(cmd).decode(errors="replace")
        for name in ["control", *NODES]:
            if f"/{name}/" in text or text.endswith(f"/{name}"):
                found[name] = (pid, tree(pid))
    return found


def du_mb(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                continue
    return total / (1 << 20)


def bundles_on_disk(node_dir: Path) -> tuple[int, int]:
    """Bundles extracted, and zips held (a multi-worker node keeps them per worker)."""
    code = zips = 0
    for root in [node_dir, *node_dir.glob("w[0-9]*")]:
        with contextlib.suppress(OSError):
            code += sum(1 for name in os.listdir(root / "code") if len(name) == 64)
        for shard in (root / "zips").glob("*"):
            with contextlib.suppress(OSError):
                zips += sum(1 for name in os.listdir(shard) if name.endswith(".zip"))
    return code, zips


# --- the topology --------------------------------------------------------------
class Topology:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, revision: int = 0, probe: str = "") -> float:
        """Start ``edgerun up``; seconds until every node is healthy (and at
        ``revision``, and ``probe`` answers at every POP)."""
        env = {**os.environ, "EDGERUN_HOME": str(self.home)}
        began = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgerun", "up", "--data-dir", str(self.home / "cluster")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + 300
        with httpx.Client(timeout=2) as http:
            pending = {"control": CONTROL, **NODES}
            while pending:
                for name, url in list(pending.items()):
                    try:
                        resp = http.get(f"{url}/v1/health")
                    except httpx.HTTPError:
                        continue
                    if resp.status_code == 200 and resp.json().get("revision", 0) >= revision:
                        del pending[name]
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not up in 300 s: {sorted(pending)}")
                time.sleep(0.02)
            if probe:
                for pop in POPS:
                    wait_invocable(http, self.token, NODES[pop], probe, deadline)
        return time.perf_counter() - began

    @property
    def token(self) -> str:
        return (self.home / "cluster" / "control" / "admin-token").read_text().strip()

    def stop(self) -> float:
        assert self.proc is not None
        pids = tree(self.proc.pid)
        began = time.perf_counter()
        self.proc.send_signal(signal.SIGINT)
        while alive(pids):
            time.sleep(0.005)
        took = time.perf_counter() - began
        self.proc.wait(5)
        self.proc = None
        return took

    def restart_node(self, name: str, probe: str) -> float:
        """``edgerun stop NAME`` then ``edgerun start NAME``: seconds from the start
        command until the node answers ``probe``."""
        env = {**os.environ, "EDGERUN_HOME": str(self.home)}
        cli = [sys.executable, "-m", "edgerun"]
        subprocess.run([*cli, "stop", name], env=env, check=True, capture_output=True)
        began = time.perf_counter()
        subprocess.run([*cli, "start", name], env=env, check=True, capture_output=True)
        with httpx.Client(timeout=5) as http:
            wait_invocable(http, self.token, NODES[name], probe, time.monotonic() + 60)
        return time.perf_counter() - began

    def fresh_catch_up(self, name: str, head: int) -> dict[str, float]:
        """Drop ``name``'s registry copy (a node joining with nothing) and restart
        it; its /v1/health sampled every 50 ms until it holds revision ``head``."""
        env = {**os.environ, "EDGERUN_HOME": str(self.home)}
        cli = [sys.executable, "-m", "edgerun"]
        subprocess.run([*cli, "stop", name], env=env, check=True, capture_output=True)
        for f in (self.home / "cluster" / name).glob("**/registry.db*"):
            f.unlink()
        subprocess.run([*cli, "start", name], env=env, check=True, capture_output=True)
        began = time.perf_counter()
        samples: list[float] = []
        with httpx.Client(timeout=10) as http:
            while True:
                t = time.perf_counter()
                revision = int(http.get(f"{NODES[name]}/v1/health").json()["revision"])
                samples.append((time.perf_counter() - t) * 1000)
                if revision >= head:
                    break
                if time.perf_counter() - began > 600:
                    raise RuntimeError(f"{name} did not catch up in 600 s")
                time.sleep(0.05)
        return {
            "over_50ms": sum(1 for ms in samples if ms > 50),
            "catch_up_s": round(time.perf_counter() - began, 2),
            "health_ms_p50": round(pct(samples, 0.5), 1),
            "health_ms_p99": round(pct(samples, 0.99), 1),
            "health_ms_max": round(max(samples), 1),
            "samples": len(samples),
        }

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            for pid in tree(self.proc.pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def wait_invocable(http: httpx.Client, token: str, url: str, name: str, deadline: float) -> float:
    """Seconds until ``url`` answers 200 for ``name`` (polled every 5 ms)."""
    return answered(http, token, url, name, deadline)[0]


def answered(
    http: httpx.Client, token: str, url: str, name: str, deadline: float
) -> tuple[float, str]:
    """:func:`wait_invocable`, and where the first answer ran (x-edgerun-placement)."""
    began = time.perf_counter()
    while True:
        try:
            resp = http.post(
                f"{url}/v1/functions/{name}/invocations",
                json={},
                headers={"authorization": f"Bearer {token}"},
                timeout=30,
            )
            if resp.status_code == 200:
                return time.perf_counter() - began, resp.headers.get("x-edgerun-placement", "")
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not invocable at {url}")
        time.sleep(0.005)


def _sample_health(conn: Connection, stop: Event) -> None:
    """In a process of its own: samples every node's /v1/health every 0.25 s and
    sends back ``(time, node, ms or None)``. Not a thread of the bench, whose
    deploying threads would hold the GIL and inflate the latencies it reads."""
    samples: list[tuple[float, str, float | None]] = []
    with httpx.Client(timeout=10) as http:
        while not stop.wait(0.25):
            for name, url in NODES.items():
                began = time.perf_counter()
                try:
                    http.get(f"{url}/v1/health").raise_for_status()
                except httpx.HTTPError:
                    samples.append((time.time(), name, None))
                    continue
                samples.append((time.time(), name, (time.perf_counter() - began) * 1000))
    conn.send(samples)
    conn.close()


class HealthWatch:
    """Every node's /v1/health latency, sampled from another process, by phase."""

    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = {n: [] for n in NODES}
        self.by_phase: dict[str, list[float]] = {}
        """Every node's samples by what the bench was doing then."""
        self.errors = 0
        self._phases: list[tuple[float, str]] = [(0.0, "deploy")]
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._conn, child = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_sample_health, args=(child, self._stop), daemon=True)

    @property
    def phase(self) -> str:
        return self._phases[-1][1]

    @phase.setter
    def phase(self, name: str) -> None:
        self._phases.append((time.time(), name))

    def __enter__(self) -> HealthWatch:
        self._proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        samples = self._conn.recv() if self._conn.poll(30) else []
        self._proc.join(10)
        for at, name, ms in samples:
            if ms is None:
                self.errors += 1
                continue
            phase = next(p for t, p in reversed(self._phases) if t <= at)
            self.latency[name].append(ms)
            self.by_phase.setdefault(phase, []).append(ms)


def code_bundles(http: httpx.Client, token: str, node: str) -> int:
    """Bundles the node's code cache holds (zips and extracted), from its status."""
    resp = http.get(
        f"{NODES[node]}/v1/status",
        params={"limit": 1},
        headers={"authorization": f"Bearer {token}"},
    )
    return int(resp.json()["code_cache"]["bundles"])


def revisions(http: httpx.Client) -> dict[str, int]:
    out = {"control": int(http.get(f"{CONTROL}/v1/health").json()["revision"])}
    for name, url in NODES.items():
        out[name] = int(http.get(f"{url}/v1/health").json()["revision"])
    return out


# --- one step -------------------------------------------------------------------
def deploy_range(token: str, start: int, stop: int, threads: int) -> float:
    """Deploy fn-start..fn-stop-1 with ``threads`` clients; deploys per second."""
    local = threading.local()

    def one(i: int) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = Client(CONTROL, token, timeout=60)
        name = f"fn-{i:06d}"
        client.deploy(name, bundle(name), CONFIG)

    began = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(one, range(start, stop)):
            pass
    return (stop - start) / (time.perf_counter() - began)


def step(
    top: Topology, have: int, want: int, threads: int, probes: int, steps_done: int
) -> dict[str, Any]:
    home = top.home / "cluster"
    token = top.token
    with HealthWatch() as watch, httpx.Client(timeout=30) as http:
        rate = deploy_range(token, have, want, threads)
        watch.phase = "catch_up"
        revs = revisions(http)
        lag = {n: revs["control"] - revs[n] for n in NODES}
        began = time.perf_counter()
        deadline = time.monotonic() + 600
        while any(revisions(http)[n] < revs["control"] for n in NODES):
            if time.monotonic() > deadline:
                raise RuntimeError("nodes did not catch up in 600 s")
            time.sleep(0.05)
        catch_up = time.perf_counter() - began
        watch.phase = "region_prefetch"
        expected = want + probes * steps_done
        held = 0
        while time.monotonic() < deadline + 600:  # regions fetch behind the deploys
            held = min(code_bundles(http, token, r) for r in ("region-1", "region-2"))
            if held >= expected:
                break
            time.sleep(1)
        prefetched = time.perf_counter() - began if held >= expected else float("nan")
        invocable: list[float] = []
        placements: dict[str, int] = {}
        watch.phase = "probes"
        with Client(CONTROL, token) as client, ThreadPoolExecutor(len(POPS)) as both:
            for k in range(probes):
                name = f"probe-{want}-{k}"
                client.deploy(name, bundle(name), CONFIG)
                deployed = time.perf_counter()

                def at(pop: str, name: str = name, deployed: float = deployed) -> str:
                    with httpx.Client(timeout=30) as own:
                        _s, placement = answered(
                            own, token, NODES[pop], name, time.monotonic() + 60
                        )
                    invocable.append(time.perf_counter() - deployed)
                    return placement.split(":")[0]

                for placement in both.map(at, POPS):
                    placements[placement] = placements.get(placement, 0) + 1
            # What a miss costs a POP: its measured fetch of a bundle from its region.
            name = f"fetch-{want}"
            client.deploy(name, bundle(name), CONFIG)
            deadline = time.monotonic() + 60
            while True:
                resp = http.get(
                    f"{NODES['pop-1']}/v1/placement/explain",
                    params={"function": name},
                    headers={"authorization": f"Bearer {token}"},
                )
                if resp.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            fetch_ms = resp.json()["inputs"]["costs_ms"]["fetch_ms"]
    pids = node_pids(top.proc.pid) if top.proc else {}
    nodes = {
        n: {
            "rss_mb": round(rss_mb({pids[n][0]}), 1) if n in pids else None,
            "tree_pss_mb": round(pss_mb(pids[n][1]), 1) if n in pids else None,
            "disk_mb": round(du_mb(home / n), 1),
            "bundles": bundles_on_disk(home / n)[0],
            "zips": bundles_on_disk(home / n)[1],
            "lag_after_deploys": lag[n],
            "health_ms_p50": round(pct(watch.latency[n], 0.5), 1),
            "health_ms_p99": round(pct(watch.latency[n], 0.99), 1),
            "health_ms_max": round(max(watch.latency[n], default=float("nan")), 1),
        }
        for n in NODES
    }
    nodes["control"] = {
        "rss_mb": round(rss_mb({pids["control"][0]}), 1) if "control" in pids else None,
        "disk_mb": round(du_mb(home / "control"), 1),
    }
    return {
        "functions": want,
        "deploys_per_s": round(rate, 1),
        "catch_up_s": round(catch_up, 2),
        "regions_hold_every_zip_s": round(prefetched, 2),
        "invocable_ms_p50": round(pct(invocable, 0.5) * 1000, 1),
        "invocable_ms_p99": round(pct(invocable, 0.99) * 1000, 1),
        "invocable_ms_max": round(max(invocable) * 1000, 1),
        "first_call_ran": placements,
        "pop_fetch_ms": round(fetch_ms, 2),
        "health_errors": watch.errors,
        "health_ms_by_phase": {
            phase: {
                "p50": round(pct(v, 0.5), 1),
                "p99": round(pct(v, 0.99), 1),
                "max": round(max(v), 1),
                "samples": len(v),
                "over_50ms": sum(1 for ms in v if ms > 50),
            }
            for phase, v in watch.by_phase.items()
        },
        "nodes": nodes,
    }


def show(s: dict[str, Any]) -> None:
    print(
        f"\n{s['functions']:>7} functions: {s['deploys_per_s']} deploys/s, nodes caught up"
        f" {s['catch_up_s']} s after the last deploy, regions held every zip after"
        f" {s['regions_hold_every_zip_s']} s; deploy->invocable at every POP"
        f" p50 {s['invocable_ms_p50']} ms p99 {s['invocable_ms_p99']} ms"
        f" (max {s['invocable_ms_max']}); first calls ran {s['first_call_ran']};"
        f" a POP's fetch of a bundle (miss) {s['pop_fetch_ms']} ms"
    )
    for phase, h in s["health_ms_by_phase"].items():
        print(f"  /v1/health while {phase}: p50 {h['p50']} p99 {h['p99']} max {h['max']} ms"
              f" ({h['samples']} samples, every node; {h['over_50ms']} over 50 ms)")  # fmt: skip
    print(f"  {'node':<10}{'RSS MB':>8}{'tree PSS':>9}{'disk MB':>9}{'bundles':>9}"
          f"{'zips':>7}{'lag':>7}{'health p50':>12}{'p99':>8}{'max':>8}")  # fmt: skip
    for name, n in s["nodes"].items():
        print(
            f"  {name:<10}{n['rss_mb']:>8}{n.get('tree_pss_mb', ''):>9}{n['disk_mb']:>9}"
            f"{n.get('bundles', ''):>9}{n.get('zips', ''):>7}"
            f"{n.get('lag_after_deploys', ''):>7}{n.get('health_ms_p50', ''):>12}"
            f"{n.get('health_ms_p99', ''):>8}{n.get('health_ms_max', ''):>8}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", default="1000,10000,100000")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--keep", type=Path, help="keep the cluster's data here")
    parser.add_argument(
        "--reuse",
        type=Path,
        help="a folder a --keep run left: no deploys, only start, restarts and stop"
        " (the last of --steps must be the number of functions it holds)",
    )
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    home = args.reuse or args.keep or Path(tempfile.mkdtemp(prefix="edgerun-scale-"))
    if args.keep and not args.reuse and home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    top = Topology(home)
    result: dict[str, Any] = {"bench": "scale", "steps": [], "reused": bool(args.reuse)}
    try:
        have = 0
        if args.reuse:
            top.start()
            have = steps[-1]
        else:
            result["start_empty_s"] = round(top.start(), 2)
            print(f"started empty in {result['start_empty_s']} s", flush=True)
            for want in steps:
                s = step(top, have, want, args.threads, args.probes, len(result["steps"]))
                show(s)
                result["steps"].append(s)
                have = want
        with httpx.Client() as http:
            head = revisions(http)["control"]
        finish(top, have, head, result)
    finally:
        top.kill()
        if not (args.keep or args.reuse):
            shutil.rmtree(home, ignore_errors=True)
    if result["steps"]:
        base = result["steps"][0]
        for s in result["steps"][1:]:
            s["ratio_to_first"] = {
                "deploys_per_s": round(s["deploys_per_s"] / base["deploys_per_s"], 2),
                "invocable_ms_p99": round(s["invocable_ms_p99"] / base["invocable_ms_p99"], 2),
            }
    result["functions"] = have
    result["threads"] = args.threads
    result["probes"] = args.probes
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(json.dumps(result))


def finish(top: Topology, have: int, head: int, result: dict[str, Any]) -> None:
    """Stop, start (until in sync and serving), restart a POP, a POP joining empty, stop."""
    result["stop_full_s"] = round(top.stop(), 2)
    result["start_full_s"] = round(top.start(revision=head, probe=f"probe-{have}-0"), 2)
    result["restart_pop_s"] = round(top.restart_node("pop-1", f"probe-{have}-1"), 2)
    result["fresh_pop"] = fresh = top.fresh_catch_up("pop-2", head)
    print(
        f"a POP with an empty registry copy caught up with {have} functions in"
        f" {fresh['catch_up_s']} s; its /v1/health meanwhile p50 {fresh['health_ms_p50']}"
        f" p99 {fresh['health_ms_p99']} max {fresh['health_ms_max']} ms"
        f" ({fresh['samples']} samples)",
        flush=True,
    )
    result["stop_again_s"] = round(top.stop(), 2)
    print(
        f"\nat {have} functions: stop {result['stop_full_s']} s, start (every node in"
        f" sync, a probe answering at each POP) {result['start_full_s']} s,"
        f" pop-1 restarted and answering in {result['restart_pop_s']} s,"
        f" stop {result['stop_again_s']} s"
    )


if __name__ == "__main__":
    main()
