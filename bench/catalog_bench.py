"""A node's registry copy (``node/catalog.py``): what one change costs with 1k, 10k
and 100k functions known, against the whole-file JSON rewrite it replaced (same
run, same records), how long a restart takes until a record is served (no
record is read at start), and what a read of a record not in memory costs.

    .venv/bin/python bench/catalog_bench.py [--sizes 1000 10000 100000] [--changes 200]

Prints a table and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import msgspec

from edgerun.auth import Keyring
from edgerun.files import write_atomic
from edgerun.models import FunctionConfig, FunctionRecord, Version
from edgerun.node.catalog import Catalog


def record(i: int, revision: int = 1) -> FunctionRecord:
    v = Version(sha256=f"{i:064x}", handler="main.handler", size=1000, created_at=0.0)
    return FunctionRecord(
        name=f"fn-{i}", config=FunctionConfig(), versions={v.sha256: v},
        aliases={"latest": v.sha256}, created_at=0.0, updated_at=0.0, revision=revision,
    )  # fmt: skip


def json_rewrite_us(functions: dict[str, FunctionRecord], path: Path, changes: int) -> float:
    """The earlier node: every change rewrote the whole snapshot."""
    started = time.perf_counter()
    for i in range(changes):
        functions[f"fn-{i}"] = record(i, revision=2)
        write_atomic(path, msgspec.json.encode({"revision": i, "functions": functions}))
    return (time.perf_counter() - started) / changes * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--changes", type=int, default=200)
    args = parser.parse_args()
    rows = []
    print(f"{'functions':>10}{'sqlite µs/change':>18}{'json µs/change':>16}{'ratio':>8}"
          f"{'restart ms':>12}{'miss µs':>9}")  # fmt: skip
    for n in args.sizes:
        root = Path(tempfile.mkdtemp(prefix="edgerun-catalog-"))
        catalog = Catalog(root / "registry.db", Keyring(b"k" * 32))
        for start in range(0, n, 1000):  # as the feed sends it: pages of 1000
            catalog.apply(start, [record(i) for i in range(start, min(n, start + 1000))])
        started = time.perf_counter()
        for i in range(args.changes):
            catalog.apply(n + i, [record(i, revision=2)])
        sqlite_us = (time.perf_counter() - started) / args.changes * 1e6
        catalog.close()
        started = time.perf_counter()
        again = Catalog(root / "registry.db", Keyring(b"k" * 32))
        assert again.get(f"fn-{n - 1}") is not None  # serving: a record is one read away
        restart_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        for i in range(0, n, max(1, n // 1000)):  # misses: each a point read and a decode
            again.get(f"fn-{i}")
        miss_us = (time.perf_counter() - started) / len(range(0, n, max(1, n // 1000))) * 1e6
        again.close()
        json_changes = max(3, args.changes * 1000 // n)  # the big ones are slow
        everything = {f"fn-{i}": record(i) for i in range(n)}
        json_us = json_rewrite_us(everything, root / "registry.json", json_changes)
        rows.append({
            "functions": n, "sqlite_us_per_change": round(sqlite_us, 1),
            "json_us_per_change": round(json_us, 1),
            "json_over_sqlite": round(json_us / sqlite_us, 1),
            "restart_ms": round(restart_ms, 1), "miss_us": round(miss_us, 1),
        })  # fmt: skip
        r = rows[-1]
        print(f"{n:>10}{r['sqlite_us_per_change']:>18}{r['json_us_per_change']:>16}"
              f"{r['json_over_sqlite']:>8}{r['restart_ms']:>12}{r['miss_us']:>9}")  # fmt: skip
    print(json.dumps({
        "bench": "catalog", "changes": args.changes, "rows": rows,
        "machine": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "nproc": os.cpu_count(),
                    "loadavg": Path("/proc/loadavg").read_text().split()[:3]},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
