"""The control plane's registry (``control/registry.py``) at 1k, 10k and 100k
functions: deploys/s, a page of the change feed for a node 1000 revisions
behind (against the query-per-record read it replaced, same run, same file), a
fresh node's whole catch-up from 0, a page of the function list, a collection
pass, and how long ``revision()`` (what /v1/health reads) waits while a thread
reads the feed. The 1k row is the baseline of the others (``x1k`` columns).

    .venv/bin/python bench/registry_bench.py [--sizes 1000 10000 100000] [--deploys 500]

The registry is filled in one bulk transaction (one version and ``latest`` per
function, every tenth deleted); only the measured calls go through the API.
Prints a table and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import threading
import time
from pathlib import Path

import msgspec

from edgerun.control.registry import SqliteRegistry
from edgerun.models import FunctionConfig, FunctionRecord, Version, version_id

PAGE = 1000
HANDLER = FunctionConfig().handler
CONFIG = msgspec.json.encode(FunctionConfig()).decode()


def fill(reg: SqliteRegistry, n: int) -> None:
    """``n`` functions at revisions 1..n, every tenth a tombstone."""
    now = time.time()
    functions, versions, aliases = [], [], []
    for i in range(n):
        deleted = i % 10 == 9
        functions.append((f"fn-{i}", CONFIG, now, now, i + 1, int(deleted)))
        if not deleted:
            vid = version_id(f"{i:064x}", HANDLER)
            versions.append((f"fn-{i}", vid, f"{i:064x}", HANDLER, 1000, now))
            aliases.append((f"fn-{i}", "latest", vid))
    with reg.transaction() as cur:
        cur.executemany("INSERT INTO functions VALUES (?, ?, ?, ?, ?, ?)", functions)
        cur.executemany(
            "INSERT INTO versions (function, sha256, bundle_sha256, handler, size, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            versions,
        )
        cur.executemany("INSERT INTO aliases VALUES (?, ?, ?)", aliases)
        cur.execute("UPDATE meta SET value = ? WHERE key = 'revision'", (n,))
    with reg.read() as cur:  # the fill's huge WAL is not what deploys should pay for
        cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def per_record_page(path: Path, since: int) -> list[FunctionRecord]:
    """The page as the registry read it before: two queries per record."""
    db = sqlite3.connect(str(path))
    try:
        rows = db.execute(
            "SELECT name, config, created_at, updated_at, revision, deleted FROM functions"
            " WHERE revision > ? ORDER BY revision LIMIT ?",
            (since, PAGE),
        ).fetchall()
        out = []
        for name, config, created_at, updated_at, revision, deleted in rows:
            versions = {
                vid: Version(sha256=vid, bundle_sha256=b, handler=h, size=s, created_at=c)
                for vid, b, h, s, c in db.execute(
                    "SELECT sha256, bundle_sha256, handler, size, created_at FROM versions"
                    " WHERE function = ? ORDER BY created_at",
                    (name,),
                )
            }
            aliases = dict(
                db.execute(
                    "SELECT alias, sha256 FROM aliases WHERE function = ? ORDER BY alias", (name,)
                ).fetchall()
            )
            out.append(
                FunctionRecord(
                    name=name,
                    config=msgspec.json.decode(config, type=FunctionConfig),
                    versions=versions,
                    aliases=aliases,
                    created_at=created_at,
                    updated_at=updated_at,
                    revision=revision,
                    deleted=bool(deleted),
                )
            )
        return out
    finally:
        db.close()


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def best(fn: object, repeat: int = 5) -> float:
    """The fastest of ``repeat`` runs, in seconds."""
    assert callable(fn)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(n: int, deploys: int) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="edgerun-registry-"))
    path = root / "registry.db"
    reg = SqliteRegistry(path)
    fill(reg, n)
    config = FunctionConfig()
    started = time.perf_counter()
    for i in range(deploys):  # redeploys with new code: a version and `latest` each
        reg.deploy(f"fn-{i * 7 % n if (i * 7 % n) % 10 != 9 else 0}", config, f"{n + i:064x}", 1000)
    deploy_s = time.perf_counter() - started
    head = reg.revision()
    since = head - PAGE
    page_s = best(lambda: reg.changes(since, PAGE))
    old_page_s = best(lambda: per_record_page(path, since))
    _, page = reg.changes(since, PAGE)
    assert page == per_record_page(path, since), "the two reads disagree"
    encode_s = best(lambda: msgspec.json.encode({"revision": head, "functions": page}))
    list_s = best(lambda: reg.list_functions(after="fn-5", limit=200))
    started = time.perf_counter()
    reg.collect(3)  # the first pass after a start looks at every function
    collect_s = time.perf_counter() - started
    for i in range(100):
        reg.deploy(f"fn-{i * 10}", config, f"{2 * n + i:064x}", 1000)
    started = time.perf_counter()
    reg.collect(3)  # the next ones at the functions changed since (100 here)
    collect_next_s = time.perf_counter() - started

    def catch_up(live_only: bool) -> tuple[int, int]:
        cursor, pages, records = 0, 0, 0
        while True:
            cursor, batch = reg.changes(cursor, PAGE, live_only=live_only and cursor == 0)
            pages, records = pages + 1, records + len(batch)
            if len(batch) < PAGE:
                return pages, records

    started = time.perf_counter()
    pages, with_tombstones = catch_up(False)
    catch_up_s = time.perf_counter() - started
    started = time.perf_counter()
    fresh_pages, fresh_records = catch_up(True)
    fresh_s = time.perf_counter() - started

    # revision() (what /v1/health answers) while a thread reads feed pages.
    done = threading.Event()
    reader = threading.Thread(target=lambda: (catch_up(False), done.set()))
    waits = []
    reader.start()
    while not done.is_set():
        t = time.perf_counter()
        reg.revision()
        waits.append(time.perf_counter() - t)
        time.sleep(0.001)
    reader.join()
    reg.close()
    return {
        "functions": n,
        "deploys_per_s": round(deploys / deploy_s),
        "page_ms": ms(page_s),
        "per_record_page_ms": ms(old_page_s),
        "encode_page_ms": ms(encode_s),
        "catch_up_pages": pages,
        "catch_up_records": with_tombstones,
        "catch_up_ms_per_page": ms(catch_up_s / pages),
        "fresh_pages": fresh_pages,
        "fresh_records": fresh_records,
        "fresh_s": round(fresh_s, 3),
        "list_200_ms": ms(list_s),
        "collect_first_ms": ms(collect_s),
        "collect_next_ms": ms(collect_next_s),
        "revision_during_feed_ms": {
            "p50": ms(statistics.median(waits)),
            "max": ms(max(waits)),
            "n": len(waits),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--deploys", type=int, default=500)
    args = parser.parse_args()
    rows = []
    print(f"{'functions':>10}{'deploys/s':>10}{'x1k':>6}{'page ms':>9}{'x1k':>6}"
          f"{'old page':>10}{'encode':>8}{'fresh s':>9}{'pages':>7}{'list':>7}"
          f"{'collect':>9}{'next':>7}{'rev max':>9}")  # fmt: skip
    for n in args.sizes:
        r = measure(n, args.deploys)
        base = rows[0] if rows else r
        r["deploys_vs_first"] = round(r["deploys_per_s"] / base["deploys_per_s"], 2)  # type: ignore[operator]
        r["page_vs_first"] = round(r["page_ms"] / base["page_ms"], 2)  # type: ignore[operator]
        rows.append(r)
        rev = r["revision_during_feed_ms"]
        assert isinstance(rev, dict)
        print(f"{n:>10}{r['deploys_per_s']:>10}{r['deploys_vs_first']:>6}{r['page_ms']:>9}"
              f"{r['page_vs_first']:>6}{r['per_record_page_ms']:>10}{r['encode_page_ms']:>8}"
              f"{r['fresh_s']:>9}{r['fresh_pages']:>7}{r['list_200_ms']:>7}"
              f"{r['collect_first_ms']:>9}{r['collect_next_ms']:>7}{rev['max']:>9}")  # fmt: skip
    print(json.dumps({
        "bench": "registry", "deploys": args.deploys, "page": PAGE, "baseline": "first size",
        "rows": rows,
        "machine": {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "nproc": os.cpu_count(),
                    "loadavg": Path("/proc/loadavg").read_text().split()[:3]},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
