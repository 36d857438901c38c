"""API fuzzing at scale: the CI run's harness (tests/fuzz/harness.py) with many more cases.

Starts a real local cluster (control, two regions, a POP) with a few real
functions, keys and tenants in it, then fuzzes the served OpenAPI documents
of the control plane and the POP with schemathesis, as the cluster admin, a
tenant's key and anonymously, in rounds until ``--cases`` cases were sent
(each round draws new data). Every answer must be a documented status,
content type and schema, never a 5xx, and every error a JSON 4xx. Prints a
table per target and identity, the failures if any (the cluster's logs are
then kept), and one JSON line; exits 1 on any failure.

    .venv/bin/python bench/fuzz_api.py [--cases 20000] [--seed N] [--targets control,pop]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the harness lives with the tests it serves

from tests.fuzz.harness import Tally, fuzz, load, operations, start  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20_000, help="at least this many in all")
    parser.add_argument("--seed", type=int, default=None, help="Hypothesis seed (round n: +n)")
    parser.add_argument("--targets", default="control,pop")
    args = parser.parse_args()
    targets = args.targets.split(",")
    root = Path(tempfile.mkdtemp(prefix="edgerun-fuzz-bench-"))
    started = time.monotonic()
    fuzzed = start(root / "cluster")
    total, runs = Tally(), {}
    rounds = 0
    try:
        pairs = [(t, who) for t in targets for who in fuzzed.identities]
        per_target = {t: sum(1 for _ in operations(load(fuzzed.targets[t]))) for t in targets}
        while total.cases < args.cases:
            left = args.cases - total.cases
            examples = max(5, math.ceil(1.1 * left / sum(per_target[t] for t, _ in pairs)))
            seed = None if args.seed is None else args.seed + rounds
            for target, who in pairs:
                tally = fuzz(fuzzed, target, who, examples=examples, seed=seed)
                runs.setdefault(f"{target} {who.name}", Tally()).merge(tally)
                total.merge(tally)
                print(f"round {rounds}: {target} {who.name}: {tally.cases} cases", file=sys.stderr)
            rounds += 1
    finally:
        fuzzed.cluster.stop()
    seconds = time.monotonic() - started
    print(f"{'run':<20}{'cases':>8}{'2xx':>8}{'4xx':>8}{'5xx':>6}{'failures':>10}{'s':>8}")
    for name, t in runs.items():
        ok = sum(n for s, n in t.statuses.items() if s < 300)
        client = sum(n for s, n in t.statuses.items() if 400 <= s < 500)
        print(
            f"{name:<20}{t.cases:>8}{ok:>8}{client:>8}{t.server_errors:>6}"
            f"{len(t.failures):>10}{t.seconds:>8.1f}"
        )
    if total.failures:
        print(total.report(), file=sys.stderr)
        print(f"cluster logs kept in {root}", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        **total.summary(),
        "bench": "fuzz",
        "seconds": round(seconds, 1),
        "fuzz_seconds": round(total.seconds, 1),
        "cases_per_s": round(total.cases / total.seconds, 1) if total.seconds else None,
        "rounds": rounds,
        "seed": args.seed,
        "runs": {name: t.summary() for name, t in runs.items()},
    }
    print(json.dumps(result))
    return 1 if total.failures or total.server_errors else 0


if __name__ == "__main__":
    sys.exit(main())
