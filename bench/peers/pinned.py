"""Data-plane speed vs peers, pinned per core (issue 11, part 5: a fair bench).

The shared mode (``peers_bench.py``) lets every server and the load generator use
every core. Here each server's whole process tree gets CPU 0 and the load generator
CPU 1, so the figures are per core and no server gains from spreading itself wider:

- each peer is started under ``taskset -c 0`` (its forks inherit the mask); the
  edgerun cluster is started from this process with its affinity set to CPU 0 (what
  ``taskset -c 0`` does before it execs), then the control plane and the region, idle
  for an edge hello, are given every CPU back, so only the POP's tree stays on CPU 0;
- after a warm-up (``wrk`` for ``--warmup`` seconds, which also starts the sandboxes
  the POP needs for the load) the whole tree, every thread of every process, is pinned
  again with ``taskset -a -p -c 0 PID`` (``bench/percore_bench.py``'s ``pin``), and
  after the run every task in the tree is checked to be still on CPU 0 only;
- the load is ``taskset -c 1 wrk -t1 -c32 -d{duration}s --latency`` (the same
  ``wrk`` helper as ``bench/percore_bench.py``).

Servers, a hello each: workerd (``workerd/config.capnp``, ``helloConfig``),
functions-framework in its default mode (Flask under gunicorn, ``ff/main.py``
``hello``), a bare ASGI hello under uvicorn + uvloop + httptools (``raw_asgi.py``), and
an edgerun POP serving ``examples/hello`` local-warm with ``placement = "edge"`` and
every isolation layer the machine allows (``percore_bench.edgerun_pop``: one POP,
one region, the control plane; up to 32 sandboxes per function). Every server runs alone:
each is started, warmed, measured and stopped in turn, the edgerun cluster too, and
the rounds are interleaved (workerd, ff, uvicorn, edgerun, then again), so machine
noise hits all alike; the best round of each counts.

It prints a table and the ratios and ends with one JSON line of figures.

    bash scripts/bench peers --pinned [--duration 8] [--rounds 2] [--only ...]
    .venv/bin/python bench/peers/pinned.py [...]     # without installing anything
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import peers_bench as peers

from edgerun.cluster import LocalCluster, free_port

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/: percore_bench
import percore_bench as percore

HERE = peers.HERE
SERVER_CPU = 0
HELLO = "/?name=world"

SERVERS: dict[str, str] = {
    "workerd": "workerd hello",
    "ff_default": "functions-framework (gunicorn) hello",
    "uvicorn_raw": "uvicorn+uvloop+httptools raw ASGI hello",
    "edgerun": "edgerun POP local-warm hello, all layers",
}
ONLY = {"workerd": "workerd", "ff": "ff_default", "uvicorn": "uvicorn_raw", "edgerun": "edgerun"}

PEER_COMMANDS: dict[str, tuple[list[str], Path]] = {
    "workerd": (
        [str(peers.WORKERD), "serve", "config.capnp", "helloConfig",
         "--socket-addr", "http=127.0.0.1:{port}"],
        HERE / "workerd",
    ),
    "ff_default": (
        [str(peers.FF_BIN), "--source", str(HERE / "ff" / "main.py"), "--target", "hello",
         "--host", "127.0.0.1", "--port", "{port}"],
        HERE / "ff",
    ),
    "uvicorn_raw": (
        [sys.executable, "-m", "uvicorn", "raw_asgi:app", "--app-dir", str(HERE),
         "--host", "127.0.0.1", "--port", "{port}", "--loop", "uvloop", "--http", "httptools",
         "--no-access-log", "--log-level", "warning"],
        HERE,
    ),
}  # fmt: skip
"""The same commands as the shared mode's hello rows; ``{port}`` is filled in."""


# --- affinity ---------------------------------------------------------------------------------


def tasks_off_cpu(root: int, cpu: int = SERVER_CPU) -> tuple[int, int, int]:
    """(processes, threads, threads allowed anything but ``cpu``) in ``root``'s tree."""
    pids = percore.tree(root)
    threads = off = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
                    allowed = status.split("Cpus_allowed_list:", 1)[1].split()[0]
                    threads += 1
                    off += allowed != str(cpu)
    return len(pids), threads, off


def release(pid: int) -> None:
    """Give a process tree every CPU of this machine back."""
    every = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    for p in percore.tree(pid):
        subprocess.run(["taskset", "-a", "-p", "-c", every, str(p)], capture_output=True)


@contextlib.contextmanager
def edgerun_on_cpu0() -> Iterator[tuple[LocalCluster, str]]:
    """``percore_bench.edgerun_pop`` started with this thread on CPU 0, so the POP is
    born there like a ``taskset -c 0`` child; the idle control plane and region are
    then released to every CPU."""
    mask = os.sched_getaffinity(0)
    with contextlib.ExitStack() as stack:
        os.sched_setaffinity(0, {SERVER_CPU})
        try:
            cluster, url = stack.enter_context(percore.edgerun_pop())
        finally:
            os.sched_setaffinity(0, mask)
        for name, node in cluster.nodes.items():
            if name != "pop-1" and node.proc is not None:
                release(node.proc.pid)
        yield cluster, url


def pop_status(cluster: LocalCluster) -> dict[str, Any]:
    resp = httpx.get(
        f"{cluster.url('pop-1')}/v1/status",
        headers={"authorization": f"Bearer {cluster.token}"},
        timeout=5,
    )
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    return body


def placements(cluster: LocalCluster) -> Counter[str]:
    return Counter(
        {
            f"{p['placement']} ({p['reason']})": p["count"]
            for p in pop_status(cluster)["placements"]
            if p["function"] == "hello"
        }
    )


# --- one measurement ----------------------------------------------------------------------------


def measure(root: int, url: str, duration: float, warmup_s: float) -> dict[str, Any]:
    """Warm up (unless ``warmup_s`` is 0), pin ``root``'s whole tree to CPU 0, run wrk
    from CPU 1, check the pins."""
    if warmup_s > 0:
        percore.wrk(url, warmup_s)
    percore.pin(root, SERVER_CPU)
    steal0, total0 = peers.cpu_times()
    result: dict[str, Any] = dict(percore.wrk(url, duration))
    steal1, total1 = peers.cpu_times()
    procs, threads, off = tasks_off_cpu(root)
    result["steal_pct"] = round(100 * (steal1 - steal0) / max(1, total1 - total0), 1)
    result["procs"] = procs
    result["threads"] = threads
    result["threads_off_cpu0"] = off
    return result


def measure_peer(key: str, duration: float, warmup_s: float, logdir: Path) -> dict[str, Any]:
    cmd, cwd = PEER_COMMANDS[key]
    port = free_port()
    full = ["taskset", "-c", str(SERVER_CPU), *(a.replace("{port}", str(port)) for a in cmd)]
    url = f"http://127.0.0.1:{port}{HELLO}"
    with peers.server(full, cwd=cwd, ready_url=url, logdir=logdir, name=key) as proc:
        return measure(proc.pid, url, duration, warmup_s)


def measure_edgerun(duration: float, warmup_s: float) -> dict[str, Any]:
    with edgerun_on_cpu0() as (cluster, url):
        proc = cluster.nodes["pop-1"].proc
        assert proc is not None
        percore.wrk(url, warmup_s)  # starts the sandboxes the load needs
        before = placements(cluster)
        result = measure(proc.pid, url, duration, 0)
        status = pop_status(cluster)
        result["placements"] = dict(placements(cluster) - before)
        result["isolation_off"] = [
            layer["name"] for layer in status.get("isolation", []) if not layer.get("active")
        ]
        result["isolation"] = [layer["name"] for layer in status.get("isolation", [])]
    return result


# --- report -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; best counts")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk before each")
    parser.add_argument("--max-load", type=float, default=0.8, help="1-min load to wait for")
    parser.add_argument("--load-wait", type=float, default=300, help="longest wait, seconds")
    parser.add_argument(
        "--only",
        default="workerd,ff,uvicorn,edgerun",
        help="comma-separated subset of workerd,ff,uvicorn,edgerun",
    )
    parser.add_argument("--pinned", action="store_true", help=argparse.SUPPRESS)  # run.sh's flag
    args = parser.parse_args()
    wanted = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in wanted if x not in ONLY]
    if unknown:
        parser.error(f"--only: unknown {unknown}; choose from {sorted(ONLY)}")
    keys = [k for k in SERVERS if k in {ONLY[x] for x in wanted}]
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("pinned: needs wrk and taskset (bash scripts/bench peers --pinned installs wrk)")
    if len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0):
        sys.exit("pinned: needs CPUs 0 and 1 (the servers on 0, wrk on 1)")
    needed = {"workerd": peers.WORKERD, "ff_default": peers.FF_BIN}
    for key, path in needed.items():
        if key in keys and not path.exists():
            sys.exit(f"pinned: {path} is missing (bash scripts/bench peers --pinned installs it)")

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)

    started = time.monotonic()
    machine = peers.machine_info()
    wrk_cmd = f"taskset -c 1 wrk -t1 -c{percore.CONNECTIONS} -d{args.duration:g}s --latency"
    print("Data-plane speed vs peers, pinned per core (edgerun, issue 11 part 5)")
    print(
        f"  {machine['date']}  nproc={machine['nproc']}  {machine['cpu']}  "
        f"kernel={machine['kernel']}  python={machine['python']}"
    )
    quiet = peers.wait_for_quiet(args.max_load, args.load_wait)
    machine["loadavg"] = quiet
    tools = peers.versions(peers.Settings(1, percore.CONNECTIONS, int(args.duration), 0, None))
    print(f"  loadavg at start {quiet['at_start']}, when measuring {quiet['when_measuring']}")
    print(f"  servers: whole tree on CPU {SERVER_CPU}; load: {wrk_cmd}; warm-up {args.warmup:g} s")
    print(f"  {args.rounds} rounds, interleaved; best round counts; versions: {tools}")

    rounds: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="peers-pinned-logs-") as logs:
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", flush=True)
            for key in keys:
                try:
                    if key == "edgerun":
                        got = measure_edgerun(args.duration, args.warmup)
                    else:
                        got = measure_peer(key, args.duration, args.warmup, Path(logs))
                except (
                    RuntimeError,
                    OSError,
                    TimeoutError,
                    httpx.HTTPError,
                    subprocess.SubprocessError,
                ) as exc:
                    errors[key] = f"{type(exc).__name__}: {exc}"[:500]
                    print(f"  {key}: FAILED {errors[key]}", flush=True)
                    continue
                rounds[key].append(got)
                extra = f"  placements {got['placements']}" if "placements" in got else ""
                print(
                    f"  {SERVERS[key]:<44}{got['rps']:>10.0f} req/s  p50 {got['p50_ms']:.2f} ms"
                    f"  steal {got['steal_pct']}%  {got['procs']} procs, "
                    f"{got['threads_off_cpu0']} of {got['threads']} threads off CPU 0{extra}",
                    flush=True,
                )

    best = {k: max(v, key=lambda x: x["rps"]) if v else None for k, v in rounds.items()}

    def ratio(a: str, b: str) -> float | None:
        x, y = best.get(a), best.get(b)
        return round(x["rps"] / y["rps"], 3) if x and y and y["rps"] else None

    ratios = {
        "edgerun_over_workerd": ratio("edgerun", "workerd"),
        "edgerun_over_ff_default": ratio("edgerun", "ff_default"),
        "edgerun_over_uvicorn_raw": ratio("edgerun", "uvicorn_raw"),
    }
    print()
    title = "server (tree on CPU 0, wrk -t1 -c32 on CPU 1)"
    print(f"{title:<46}{'best r/s':>10}{'p50 ms':>8}  rounds (req/s)")
    for key in keys:
        b = best[key]
        each = " / ".join(f"{x['rps']:.0f}" for x in rounds[key])
        if b:
            print(f"{SERVERS[key]:<46}{b['rps']:>10.0f}{b['p50_ms']:>8.2f}  {each}")
        else:
            print(f"{SERVERS[key]:<46}{'-':>10}{'-':>8}  ({errors.get(key, 'not run')})")
    print("ratios (best req/s over best req/s)")
    for k, v in ratios.items():
        print(f"  {k}: {v}")
    edgerun = best.get("edgerun")
    if edgerun is not None:
        print(f"  edgerun placements in the best round: {edgerun['placements']}")
        off = edgerun["isolation_off"]
        print(f"  edgerun isolation layers: {edgerun['isolation']}; off: {off or 'none'}")
    machine["loadavg"]["at_end"] = peers.loadavg()
    elapsed = round(time.monotonic() - started, 1)
    print(f"elapsed: {elapsed} s; loadavg at end {machine['loadavg']['at_end']}")
    figures = {
        "bench": "peers_pinned",
        "machine": machine,
        "versions": tools,
        "settings": {
            "wrk": wrk_cmd,
            "server_cpu": SERVER_CPU,
            "load_cpu": 1,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
        },
        "rps": {k: round(b["rps"], 1) if b else None for k, b in best.items()},
        "ratios": ratios,
        "best": best,
        "rounds": rounds,
        "errors": errors,
        "elapsed_s": elapsed,
    }
    print(json.dumps(figures, separators=(",", ":")))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("pinned: interrupted; every server it started was stopped", file=sys.stderr)
        sys.exit(130)
