"""What checking a caller costs on the invoke path, against a public function's path.

Times the steps a node runs per invocation before placement: parsing the
bearer header, HMAC-SHA256 of the secret and the keyring lookup, the scope
check, and the per-key and per-function limiter (admit and release). The
baseline in the same run is what a public function's HTTP trigger pays: the
catalog lookup that finds it public. The keyring holds ``--keys`` live keys,
so a lookup's cost is shown not to grow with them.

    .venv/bin/python bench/auth_bench.py [--keys 10000] [--rounds 200000]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from edgerun.auth import KeyEntry, Keyring, Kind, digest, new_secret
from edgerun.limits import Limit, Limiter

HASH_KEY = b"k" * 32


def per_call_ns(fn: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(rounds):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / rounds)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=200_000)
    args = parser.parse_args()
    ring = Keyring(HASH_KEY)
    secrets = [new_secret() for _ in range(args.keys)]
    ring.apply(
        [
            KeyEntry(
                id=f"EK{i}", tenant="acme", scopes=["invoke:api-*"], digest=digest(HASH_KEY, s)
            )
            for i, s in enumerate(secrets)
        ]
    )
    header = f"Bearer {secrets[-1]}"
    functions = {"acme.api-orders": object()}
    limiter = Limiter()
    fn_limit = Limit(rate_per_s=1e6, max_concurrency=10_000)
    key_limit = Limit(rate_per_s=1e6, max_concurrency=10_000)

    def public() -> object:
        return functions.get("acme.api-orders")

    def key_only() -> None:
        functions.get("acme.api-orders")
        principal = ring.authenticate(header)
        assert principal is not None
        principal.check(Kind.INVOKE, "acme.api-orders")

    def key_and_limits() -> None:
        functions.get("acme.api-orders")
        principal = ring.authenticate(header)
        assert principal is not None
        principal.check(Kind.INVOKE, "acme.api-orders")
        limiter.admit(principal.key_id, key_limit, "acme.api-orders", fn_limit).release()

    base = per_call_ns(public, args.rounds)
    keyed = per_call_ns(key_only, args.rounds)
    limited = per_call_ns(key_and_limits, args.rounds)
    figures = {
        "keys_in_keyring": args.keys,
        "public_ns": round(base, 1),
        "key_check_ns": round(keyed, 1),
        "key_check_and_limits_ns": round(limited, 1),
        "key_check_over_public_ns": round(keyed - base, 1),
        "limits_over_key_check_ns": round(limited - keyed, 1),
    }
    print(f"{'path':<28}{'ns/call':>10}")
    print(f"{'public trigger (baseline)':<28}{base:>10.0f}")
    print(f"{'key: verify + scope':<28}{keyed:>10.0f}")
    print(f"{'key + rate/concurrency':<28}{limited:>10.0f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
