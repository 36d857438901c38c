"""This checkout's POP against another checkout's (an earlier revision), in the same
run: what a change costs the warm path, whatever it is.

Each side runs ``percore_bench.edgerun_pop`` from its own checkout with its own
``.venv`` (hello, local-warm, the POP's tree pinned to CPU 0, wrk on CPU 1), in
interleaved pairs; each side's rounds report req/s and the POP tree's CPU per
request. The figure is the ratio of medians (this / other).

    git worktree add /tmp/base <rev> && (cd /tmp/base && ./scripts/install)
    .venv/bin/python bench/revisions_bench.py --other /tmp/base [--pairs 4] [--rounds 3]

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run inside a checkout (its bench/ on the path): one POP, `rounds` timed runs.
_ONE = r"""
import contextlib, json, os, sys
from pathlib import Path
sys.path.insert(0, str(Path.cwd() / "bench"))
import httpx
from percore_bench import edgerun_pop, pin, tree, wrk

def cpu_s(pids):
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / tick
    return total

duration, rounds = float(sys.argv[1]), int(sys.argv[2])
with edgerun_pop() as (cluster, url):
    proc = cluster.nodes["pop-1"].proc
    wrk(url, 2.0)
    pin(proc.pid)
    assert httpx.get(url).headers.get("x-edgerun-placement") == "local-warm"
    for _ in range(rounds):
        pids = tree(proc.pid)
        before = cpu_s(pids)
        r = wrk(url, duration)
        used = cpu_s(pids) - before
        print(json.dumps({"rps": r["rps"], "cpu_us": used / (r["rps"] * duration) * 1e6}))
"""


def side(checkout: Path, duration: float, rounds: int) -> list[dict[str, float]]:
    out = subprocess.run(
        [str(checkout / ".venv" / "bin" / "python"), "-c", _ONE, str(duration), str(rounds)],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--other", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    got: dict[str, list[dict[str, float]]] = {"this": [], "other": []}
    for pair in range(args.pairs):
        order = (("this", ROOT), ("other", args.other))
        for name, checkout in order if pair % 2 == 0 else order[::-1]:
            rounds = side(checkout, args.duration, args.rounds)
            got[name] += rounds
            print(name, " ".join(f"{r['rps']:.0f}" for r in rounds), flush=True)
    med = {n: statistics.median(r["rps"] for r in rs) for n, rs in got.items()}
    cpu = {n: statistics.median(r["cpu_us"] for r in rs) for n, rs in got.items()}
    best = {n: max(r["rps"] for r in rs) for n, rs in got.items()}
    print(
        f"median req/s this {med['this']:.0f} / other {med['other']:.0f} = "
        f"{med['this'] / med['other']:.3f}; best {best['this']:.0f} / {best['other']:.0f}; "
        f"CPU per request {cpu['this']:.0f} / {cpu['other']:.0f} µs"
    )
    print(json.dumps({
        "bench": "revisions", "other": str(args.other), "rounds": got,
        "median_rps": med, "best_rps": best, "median_cpu_us": cpu,
        "ratio": round(med["this"] / med["other"], 4),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
