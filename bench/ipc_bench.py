"""Node CPU per node<->sandbox round trip: the StreamReader/StreamWriter exchange the
node used before against its FrameChannel, both against the same echo peer (a process
that answers each frame and does nothing else), interleaved in one run.

Reports the node's CPU time (``time.process_time``) and the wall time per trip; the
peer's own work is not counted in the CPU figure.

    .venv/bin/python bench/ipc_bench.py [--trips 20000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sandbox_bench

from edgerun.sandbox.protocol import Invoke, encode_frame, read_from_sandbox


async def run(trips: int, rounds: int) -> dict[str, list[dict[str, float]]]:
    figures: dict[str, list[dict[str, float]]] = {"streams": [], "channel": []}
    async with sandbox_bench.echo_peer() as (reader, writer, channel):
        frame = encode_frame(Invoke(id="x", mode="direct", event={"a": 1}, timeout_s=5.0))
        for _ in range(rounds):
            for name in figures:
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(trips):
                    if name == "streams":
                        writer.write(frame)
                        async with asyncio.timeout(5.0):
                            await read_from_sandbox(reader)
                    else:
                        await channel.request(frame, 5.0)
                figures[name].append(
                    {
                        "node_cpu_us": round((time.process_time() - cpu) / trips * 1e6, 2),
                        "wall_us": round((time.perf_counter() - wall) / trips * 1e6, 2),
                    }
                )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trips", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    figures = uvloop.run(run(args.trips, args.rounds))
    print(f"{'transport':<10}{'node CPU µs/trip':>18}{'wall µs/trip':>14}")
    for name, rows in figures.items():
        for row in rows:
            print(f"{name:<10}{row['node_cpu_us']:>18.1f}{row['wall_us']:>14.1f}")
    best = {name: min(r["node_cpu_us"] for r in rows) for name, rows in figures.items()}
    print(
        json.dumps(
            {
                "bench": "ipc",
                "trips": args.trips,
                "rounds": figures,
                "best_node_cpu_us": best,
                "channel_over_streams_cpu": round(best["channel"] / best["streams"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
