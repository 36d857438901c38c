"""How long Ctrl-C takes to stop ``edgerun up``: from SIGINT to the moment no
process of the topology is left, idle and with a call in flight (the idle stop
is the baseline in the same run). Before ``edgerun up`` gave its nodes a short
grace (``shutdown_grace_s`` 0.25 s), a call in flight held the stop for
uvicorn's 5 s.

    .venv/bin/python bench/stop_bench.py [--rounds 3] [--call-s 10]

Runs the built-in topology (control, two regions, two POPs) on its usual ports
(8700-8721), so nothing else may hold them. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from proctree import alive, tree

from edgerun.build import build_bundle
from edgerun.client import Client
from edgerun.models import FunctionConfig

ROOT = Path(__file__).resolve().parent.parent
SLEEPER = ROOT / "tests" / "functions" / "sleeper"
CONTROL, POP = "http://127.0.0.1:8700", "http://127.0.0.1:8720"


def one_stop(home: Path, call_s: float) -> float:
    env = {**os.environ, "EDGERUN_HOME": str(home)}
    up = subprocess.Popen(
        [sys.executable, "-m", "edgerun", "up", "--data-dir", str(home / "cluster")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{POP}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("edgerun up did not come up in 60 s")
            time.sleep(0.1)
        token = (home / "cluster" / "control" / "admin-token").read_text().strip()
        if call_s:
            with Client(CONTROL, token) as client:
                client.deploy(
                    "sleeper",
                    build_bundle(SLEEPER),
                    FunctionConfig(handler="main.handler", timeout_s=60, placement="edge"),
                )
            time.sleep(1.0)  # the POP learns it from the feed
            threading.Thread(
                target=lambda: httpx.post(
                    f"{POP}/v1/functions/sleeper/invocations",
                    json={"seconds": call_s},
                    headers={"authorization": f"Bearer {token}"},
                    timeout=call_s + 30,
                ),
                daemon=True,
            ).start()
            time.sleep(1.5)  # it is running
        pids = tree(up.pid)
        started = time.perf_counter()
        up.send_signal(signal.SIGINT)
        while alive(pids):
            time.sleep(0.005)
        return time.perf_counter() - started
    finally:
        if up.poll() is None:
            up.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--call-s", type=float, default=10.0)
    args = parser.parse_args()
    figures: dict[str, list[float]] = {"idle": [], "call_in_flight": []}
    for _ in range(args.rounds):
        for case, call_s in (("idle", 0.0), ("call_in_flight", args.call_s)):
            with tempfile.TemporaryDirectory() as home:
                took = one_stop(Path(home), call_s)
            figures[case].append(round(took, 3))
            print(f"{case:<16}{took:8.3f} s", flush=True)
    for case, values in figures.items():
        print(f"{case}: median {statistics.median(values):.3f} s over {len(values)}")
    print(json.dumps({"bench": "stop", "seconds": figures,
                      "call_s": args.call_s,
                      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}))  # fmt: skip


if __name__ == "__main__":
    main()
