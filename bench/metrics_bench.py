"""What /metrics costs on the hot path: per-core req/s of a POP with ``metrics = true``
against the same POP with ``metrics = false`` (nothing counted at all).

Two clusters run side by side, each a POP serving ``examples/hello`` local-warm
(:func:`percore_bench.edgerun_pop`); each measurement pins the measured POP's
whole process tree on CPU 0 and runs ``taskset -c 1 wrk -t1 -c32`` against it.
Rounds are interleaved, and which POP goes first alternates, so machine noise
and warm-up hit both alike. The metrics POP is scraped once before and after
each of its rounds, so its counts are real and ``/metrics`` is checked to
count every request wrk made (a benchmark of a counter that does not count
would flatter it). Prints each round's req/s and their ratio; the figure is
the median of the per-round ratios (on / off); the last line is one JSON object.

    .venv/bin/python bench/metrics_bench.py [--duration 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from percore_bench import CONNECTIONS, edgerun_pop, pin, tree, wrk

from edgerun.cluster import LocalCluster


def served(cluster: LocalCluster) -> float:
    """The hello invocations the POP's /metrics counted (all workers)."""
    resp = httpx.get(
        f"{cluster.url('pop-1')}/metrics",
        headers={"authorization": f"Bearer {cluster.token}"},
        timeout=10,
    )
    resp.raise_for_status()
    return sum(
        s.value
        for fam in text_string_to_metric_families(resp.text)
        for s in fam.samples
        if s.name == "edgerun_invocations_total" and s.labels.get("function") == "hello"
    )


def cpu_s(pids: list[int]) -> float:
    """User plus system CPU seconds of these processes so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def measured(cluster: LocalCluster, url: str, duration: float) -> dict[str, float]:
    """req/s as measure_edgerun gives it, plus the POP tree's CPU per request (µs)
    during the timed run: the steadier figure on a shared machine, since waiting for
    a CPU another tenant holds costs no CPU time."""
    proc = cluster.nodes["pop-1"].proc
    assert proc is not None
    wrk(url, 2.0)  # start its sandboxes (one per connection), then pin them with the POP
    pin(proc.pid)
    placement = httpx.get(url).headers.get("x-edgerun-placement")
    if placement != "local-warm":
        raise RuntimeError(f"expected a local-warm hello, got {placement}")
    pids = tree(proc.pid)
    before = cpu_s(pids)
    result = wrk(url, duration)
    used = cpu_s(pids) - before
    made = result["rps"] * duration
    result["cpu_us"] = round(used / made * 1e6, 1) if made else 0.0
    return result


def per_call_us(n: int = 200_000) -> float:
    """What counting one local-warm invocation costs in-process (microseconds): a
    figure the machine's noise cannot hide, to set against a request's time."""
    from edgerun.node.metrics import NodeMetrics

    m = NodeMetrics("pop-1", "pop")
    headers = [
        ("x-edgerun-node", "pop-1"),
        ("x-edgerun-placement", "local-warm"),
        ("x-edgerun-reason", "warm"),
        ("x-edgerun-version", "0" * 64),
        ("x-edgerun-request-id", "abc"),
        ("x-edgerun-duration-ms", "0.10"),
        ("content-type", "application/json"),
    ]
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            m.replied("hello", 200, headers, time.perf_counter())
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        raise SystemExit("needs wrk and taskset (scripts/bench metrics installs wrk)")
    rounds: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    with contextlib.ExitStack() as stack:
        pops = {
            "on": stack.enter_context(edgerun_pop(settings={"metrics": True})),
            "off": stack.enter_context(edgerun_pop(settings={"metrics": False})),
        }
        off_cluster = pops["off"][0]
        resp = httpx.get(
            f"{off_cluster.url('pop-1')}/metrics",
            headers={"authorization": f"Bearer {off_cluster.token}"},
            timeout=10,
        )
        assert resp.status_code == 404, f"metrics = false still serves /metrics: {resp.status_code}"
        print(
            f"{'round':<8}{'on req/s':>12}{'off req/s':>12}{'on/off':>9}"
            f"{'on cpu µs':>12}{'off cpu µs':>12}{'on/off':>9}",
            flush=True,
        )
        for r in range(args.rounds):
            order = ("on", "off") if r % 2 == 0 else ("off", "on")
            got: dict[str, dict[str, float]] = {}
            for which in order:
                cluster, url = pops[which]
                before = served(cluster) if which == "on" else 0.0
                result = measured(cluster, url, args.duration)
                if which == "on":
                    counted = served(cluster) - before
                    # wrk's own count is not printed; req/s x duration is within a few %
                    # (and the warm-up calls before it are counted too).
                    made = result["rps"] * args.duration
                    if counted < made * 0.9:
                        raise RuntimeError(f"/metrics counted {counted:.0f} of ~{made:.0f}")
                    result["counted"] = counted
                got[which] = result
                rounds[which].append(result)
            ratio = got["on"]["rps"] / got["off"]["rps"]
            ratios.append(ratio)
            cpu_ratios.append(got["on"]["cpu_us"] / got["off"]["cpu_us"])
            print(
                f"{r + 1:<8}{got['on']['rps']:>12.0f}{got['off']['rps']:>12.0f}{ratio:>9.3f}"
                f"{got['on']['cpu_us']:>12.1f}{got['off']['cpu_us']:>12.1f}"
                f"{cpu_ratios[-1]:>9.3f}",
                flush=True,
            )
    median = statistics.median(ratios)
    cpu_median = statistics.median(cpu_ratios)
    call_us = per_call_us()
    best_on = max(x["rps"] for x in rounds["on"])
    best_off = max(x["rps"] for x in rounds["off"])
    print(
        f"median on/off {median:.3f} (cost {100 * (1 - median):+.1f}%), "
        f"CPU per request on/off {cpu_median:.3f} ({100 * (cpu_median - 1):+.1f}%), "
        f"best on {best_on:.0f} / best off {best_off:.0f} = {best_on / best_off:.3f}; "
        f"counting one call in-process: {call_us:.2f} us "
        f"({100 * call_us * best_off / 1e6:.2f}% of a request at {best_off:.0f} req/s)"
    )
    figures = {
        "bench": "metrics",
        "wrk": f"taskset -c 1 wrk -t1 -c{CONNECTIONS} -d{args.duration:g}s",
        "rounds": rounds,
        "ratios": [round(x, 4) for x in ratios],
        "median_ratio": round(median, 4),
        "cpu_ratios": [round(x, 4) for x in cpu_ratios],
        "median_cpu_ratio": round(cpu_median, 4),
        "best_ratio": round(best_on / best_off, 4),
        "per_call_us": round(call_us, 3),
        "machine": {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "nproc": os.cpu_count(),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        },
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
