"""Per-core throughput, pinned: each server's whole process tree on CPU 0, the load
generator on CPU 1, peers in the same session.

Servers, one at a time, a hello each:
- workerd (bench/peers/workerd, ``helloConfig``), when installed (``bash scripts/bench
  peers`` installs it; null otherwise);
- bare uvicorn + uvloop + httptools raw ASGI (bench/peers/raw_asgi.py): the ceiling of
  a Python server on one core;
- an edgerun POP serving ``examples/hello`` local-warm (public HTTP trigger,
  ``placement = "edge"``), every isolation layer on; the POP, its zygotes and its
  sandboxes all on CPU 0 (the control plane and region, idle here, are not pinned).

Each is measured with ``taskset -c 1 wrk -t1 -c32 -d{duration}s``, ``--rounds`` times
interleaved (so machine noise hits all alike); the best round counts. The last line is
one JSON object with every figure and the ratios.

    .venv/bin/python bench/percore_bench.py [--duration 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from edgerun.build import build_bundle
from edgerun.client import Client
from edgerun.cluster import LocalCluster, free_port
from edgerun.config import ControlSpec, PopSpec, RegionSpec, Topology
from edgerun.models import FunctionConfig

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
WORKERD = PEERS / "node_modules" / ".bin" / "workerd"
EXAMPLES = HERE.parent / "examples"
CONNECTIONS = 32


def tree(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in children:
        out += tree(int(child))
    return out


def pin(pid: int, cpu: int = 0) -> int:
    """Pin a process tree (every thread of each) to ``cpu``; forks inherit it."""
    pids = tree(pid)
    for p in pids:
        subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(p)], capture_output=True)
    return len(pids)


def wrk(
    url: str, duration: float, *, cpus: str = "1", threads: int = 1, connections: int = CONNECTIONS
) -> dict[str, float]:
    out = subprocess.run(
        [
            "taskset",
            "-c",
            cpus,
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration:g}s",
            "--latency",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if rps is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "rps": float(rps.group(1)),
        "p50_ms": float(p50.group(1)) * scale[p50.group(2)] if p50 else float("nan"),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


def wait_ready(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer 200 within {timeout_s}s")


@contextlib.contextmanager
def process(cmd: list[str], cwd: Path, url: str) -> Iterator[int]:
    proc = subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_ready(url)
        yield proc.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def measure_workerd(duration: float) -> dict[str, float] | None:
    if not WORKERD.exists():
        return None
    port = free_port()
    url = f"http://127.0.0.1:{port}/?name=world"
    cmd = [
        str(WORKERD),
        "serve",
        "config.capnp",
        "helloConfig",
        "--socket-addr",
        f"http=127.0.0.1:{port}",
    ]
    with process(cmd, PEERS / "workerd", url) as pid:
        pin(pid)
        return wrk(url, duration)


def measure_raw(duration: float) -> dict[str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [
        sys.executable, "-m", "uvicorn", "raw_asgi:app", "--app-dir", str(PEERS),
        "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools",
        "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    with process(cmd, PEERS, url) as pid:
        pin(pid)
        return wrk(url, duration)


@contextlib.contextmanager
def edgerun_pop(
    *,
    capacity_mb: int = 1024,
    workers: int = 1,
    connections: int = CONNECTIONS,
    settings: dict[str, object] | None = None,
) -> Iterator[tuple[LocalCluster, str]]:
    """A cluster whose POP serves ``examples/hello`` (public, ``placement = "edge"``);
    yields it and the hello's URL at the POP. ``settings``: more of the POP's."""
    root = Path(tempfile.mkdtemp(prefix="edgerun-percore-"))
    topology = Topology(
        control=ControlSpec(port=free_port()),
        region=[RegionSpec(name="region-1", port=free_port())],
        pop=[
            PopSpec(
                name="pop-1",
                port=free_port(),
                regions=["region-1"],
                capacity_mb=capacity_mb,
                settings={"workers": workers, "max_per_function": connections, **(settings or {})},
            )
        ],
    )
    cluster = LocalCluster(topology, root)
    try:
        cluster.start()
        with Client(cluster.control_url, cluster.token) as client:
            config = FunctionConfig(handler="handler.handler", auth="public", placement="edge")
            client.deploy("hello", build_bundle(EXAMPLES / "hello"), config)
        url = f"{cluster.url('pop-1')}/fn/hello/?name=world"
        wait_ready(url)
        yield cluster, url
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def measure_edgerun(cluster: LocalCluster, url: str, duration: float) -> dict[str, float]:
    proc = cluster.nodes["pop-1"].proc
    assert proc is not None
    wrk(url, 2.0)  # start its sandboxes (one per connection), then pin them with the POP
    pin(proc.pid)
    placement = httpx.get(url).headers.get("x-edgerun-placement")
    if placement != "local-warm":
        raise RuntimeError(f"expected a local-warm hello, got {placement}")
    return wrk(url, duration)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        raise SystemExit("needs wrk and taskset (bash scripts/bench peers installs wrk)")
    rounds: dict[str, list[dict[str, float]]] = {"workerd": [], "uvicorn_raw": [], "edgerun": []}
    with edgerun_pop() as (cluster, url):
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", flush=True)
            w = measure_workerd(args.duration)
            if w is not None:
                rounds["workerd"].append(w)
            rounds["uvicorn_raw"].append(measure_raw(args.duration))
            rounds["edgerun"].append(measure_edgerun(cluster, url, args.duration))
    best = {k: max(v, key=lambda x: x["rps"]) if v else None for k, v in rounds.items()}

    def ratio(a: str, b: str) -> float | None:
        x, y = best[a], best[b]
        return round(x["rps"] / y["rps"], 3) if x and y else None

    print(f"{'server (pinned: tree on CPU 0, wrk on CPU 1)':<48}{'req/s':>10}{'p50 ms':>9}")
    for key, label in (
        ("workerd", "workerd hello"),
        ("uvicorn_raw", "uvicorn+uvloop+httptools raw ASGI hello"),
        ("edgerun", "edgerun POP local-warm hello, all layers"),
    ):
        b = best[key]
        print(
            f"{label:<48}{b['rps']:>10.0f}{b['p50_ms']:>9.2f}" if b else f"{label:<48}{'n/a':>10}"
        )
    figures = {
        "bench": "percore",
        "wrk": f"taskset -c 1 wrk -t1 -c{CONNECTIONS} -d{args.duration:g}s",
        "rounds": rounds,
        "best": best,
        "ratios": {
            "edgerun_over_workerd": ratio("edgerun", "workerd"),
            "edgerun_over_uvicorn_raw": ratio("edgerun", "uvicorn_raw"),
        },
        "machine": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "nproc": os.cpu_count(),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        },
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
