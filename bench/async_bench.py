"""Asynchronous invocations: how fast a POP takes events (202s), how fast it runs
them, and how long an event waits from its 202 to the start of its run, each
against the same function called synchronously in the same run (the baseline).

A cluster whose POP runs ``examples/hello`` (``placement = "edge"``) with
``async_slots`` (default 4) events at once:

- **enqueue**: ``--events`` events POSTed by ``--clients`` concurrent clients;
  202s per second (each is an fsync of the POP's queue).
- **drain**: from the first 202 to the last event run (the POP's
  ``async.succeeded``); events per second, against synchronous calls per second
  made by as many clients as ``async_slots``.
- **queue to start**: ``--spaced`` events sent one at a time, 50 ms apart, on an
  idle queue; from the moment the client sends it (the run often starts before
  the 202 is read) to the ``at`` of the run's log record (same machine, same
  clock); p50/p99, against a synchronous call's round trip.
- Drain and enqueue overlap (the dispatcher runs as events arrive), so a drain
  rate equal to the enqueue rate means the runs kept up.

    .venv/bin/python bench/async_bench.py [--events 2000] [--clients 16] [--spaced 200]

Prints a table and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from percore_bench import edgerun_pop

EVENT = {"x-edgerun-invocation-type": "Event"}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def flood(url: str, auth: dict[str, str], n: int, clients: int, event: bool) -> float:
    """``n`` calls by ``clients`` concurrent clients; seconds it took."""
    todo = iter(range(n))
    headers = {**auth, **(EVENT if event else {})}

    async def client(http: httpx.AsyncClient) -> None:
        for i in todo:
            resp = await http.post(url, json={"name": f"n{i}"}, headers=headers)
            if resp.status_code != (202 if event else 200):
                raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=60) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return time.perf_counter() - started


def succeeded(pop: str, auth: dict[str, str]) -> int:
    return int(httpx.get(f"{pop}/v1/status", headers=auth).json()["async"]["succeeded"])


def run_started_at(pop: str, auth: dict[str, str], event_ids: set[str]) -> dict[str, float]:
    """When each event's run began, from the POP's log records."""
    found: dict[str, float] = {}
    since = 0.0
    while True:
        page = httpx.get(
            f"{pop}/v1/logs",
            params={"function": "hello", "since": repr(since), "limit": "1000",
                    "settled": "false"},
            headers=auth,
            timeout=30,
        ).json()["logs"]  # fmt: skip
        for e in page:
            event_id = e["request_id"].rsplit(".", 1)[0]
            if event_id in event_ids and e["status"] == 200:
                found.setdefault(event_id, e["at"])
        if len(page) < 1000:
            return found
        since = max(e["logged_at"] for e in page)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--spaced", type=int, default=200)
    args = parser.parse_args()
    with edgerun_pop() as (cluster, _):
        pop = cluster.url("pop-1")
        url = f"{pop}/v1/functions/hello/invocations"
        auth = {"authorization": f"Bearer {cluster.token}"}
        slots = 4  # NodeConfig.async_slots' default, which the POP runs with
        httpx.post(url, json={}, headers=auth)  # a warm sandbox for both
        # Synchronous baseline: as many concurrent clients as the events get slots.
        n_sync = args.events // 2
        sync_s = asyncio.run(flood(url, auth, n_sync, slots, event=False))
        before = succeeded(pop, auth)
        enqueue_s = asyncio.run(flood(url, auth, args.events, args.clients, event=True))
        first = time.perf_counter() - enqueue_s
        deadline = time.monotonic() + 600
        while succeeded(pop, auth) - before < args.events:
            if time.monotonic() > deadline:
                raise RuntimeError("the events did not all run in 10 minutes")
            time.sleep(0.05)
        drain_s = time.perf_counter() - first
        # Queue to start, on an idle queue; and a synchronous round trip beside it.
        sent: dict[str, float] = {}
        sync_ms: list[float] = []
        with httpx.Client(timeout=30) as http:
            for i in range(args.spaced):
                submitted = time.time()  # the run may start before the 202 is read
                resp = http.post(url, json={"name": f"s{i}"}, headers={**auth, **EVENT})
                sent[resp.json()["event_id"]] = submitted
                t0 = time.perf_counter()
                http.post(url, json={"name": f"sync{i}"}, headers=auth)
                sync_ms.append((time.perf_counter() - t0) * 1000)
                time.sleep(0.05)
        time.sleep(1.5)  # the last runs reach the log
        started = run_started_at(pop, auth, set(sent))
        waits = [max(0.0, (started[e] - sent[e]) * 1000) for e in sent if e in started]
    figures: dict[str, Any] = {
        "bench": "async",
        "events": args.events,
        "clients": args.clients,
        "async_slots": slots,
        "enqueue_per_s": round(args.events / enqueue_s, 1),
        "drain_per_s": round(args.events / drain_s, 1),
        "sync_per_s": round(n_sync / sync_s, 1),
        "drain_vs_sync": round((args.events / drain_s) / (n_sync / sync_s), 3),
        "queue_to_start_ms": {
            "p50": round(pct(waits, 50), 2),
            "p99": round(pct(waits, 99), 2),
            "n": len(waits),
        },
        "sync_round_trip_ms": {
            "p50": round(pct(sync_ms, 50), 2),
            "p99": round(pct(sync_ms, 99), 2),
        },
        "machine": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "nproc": os.cpu_count(),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        },
    }
    print(f"enqueue: {figures['enqueue_per_s']} events/s ({args.clients} clients, fsync each)")
    print(
        f"drain:   {figures['drain_per_s']} events/s with {slots} slots; synchronous with "
        f"{slots} clients {figures['sync_per_s']} calls/s (ratio {figures['drain_vs_sync']})"
    )
    q = figures["queue_to_start_ms"]
    s = figures["sync_round_trip_ms"]
    print(
        f"queue to start: p50 {q['p50']} ms, p99 {q['p99']} ms ({q['n']} events); "
        f"a synchronous round trip p50 {s['p50']} ms, p99 {s['p99']} ms"
    )
    if len(waits) < len(sent):
        print(f"warning: {len(sent) - len(waits)} spaced events had no run record", flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
