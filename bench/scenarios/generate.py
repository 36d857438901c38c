"""Write the replay scenarios: a trace, function folders and a lab.toml each.

    .venv/bin/python bench/scenarios/generate.py [--seed 1] [--only NAME]

Deterministic for a seed; the output is committed so anyone can run, e.g.
``edgerun lab replay bench/scenarios/costly-imports/trace.jsonl --functions
bench/scenarios/costly-imports/functions``. Every function of a scenario has
the same ``main.py`` (so one bundle serves them all) and gets its behaviour
from ``env`` in its ``edgerun.toml``: ``DURATION_MS`` (each call sleeps that
long) and ``IMPORT_MS`` (the module import sleeps that long). Imports sleep
rather than burn CPU because the whole lab shares one machine: a POP's
imports burning its cores would slow the region too, which distance does not.

Scenarios (each about 75-90 s of traffic at 10-25 requests/s in total):

- ``cheap-starts``: 40 functions, durations log-uniform 1..200 ms, Zipf(s=1)
  popularity, Poisson arrivals, 2 POPs, 1 region, 5 ms client-POP and 40 ms
  POP-region round trips, POPs with room for 10% of the functions.
- ``costly-imports``: the same with imports of 150..300 ms per function.
- ``tight-memory``: 1,000 functions of 64 MB, POPs with room for 5% of them.
- ``shifting-popularity``: 80 functions; the hot set rotates every minute and
  the request rate follows a daily cycle compressed into 30 s.

``shifting-popularity`` runs its POPs with a time-of-day profile of the
compressed day (``profile_slot_s``, ``profile_slots`` and ``prewarm_lead_s``
in its lab.toml's ``pop_settings``).
"""

from __future__ import annotations

import argparse
import bisect
import math
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgerun.replay import TraceRequest, dump_trace, ideal_capacity_mb

HERE = Path(__file__).resolve().parent
ZYGOTE_MB = 16
"""What a POP's budget allows per function beside its sandbox: the pool charges
each loaded zygote ~8 MB plus its heap."""
DAY_S = 30.0
"""The shifting-popularity scenario's compressed day."""

MAIN_PY = '''"""A stand-in function: its import and each call take as long as its env says."""

import os
import time

time.sleep(float(os.environ.get("IMPORT_MS", "0")) / 1000)  # a heavy import
_DURATION_S = float(os.environ.get("DURATION_MS", "0")) / 1000


def handler(event, context):
    time.sleep(_DURATION_S)
    return "ok"
'''


@dataclass
class Scenario:
    name: str
    functions: int
    memory_mb: int
    seconds: float
    rate: float
    pop_share: float
    """The share of the functions a POP has room for."""
    import_ms: tuple[float, float] = (0.0, 0.0)
    lab: dict[str, object] = field(default_factory=dict)


SCENARIOS = [
    Scenario("cheap-starts", functions=40, memory_mb=128, seconds=75, rate=20, pop_share=0.10),
    Scenario(
        "costly-imports",
        functions=40,
        memory_mb=128,
        seconds=75,
        rate=20,
        pop_share=0.10,
        import_ms=(150.0, 300.0),
    ),
    Scenario("tight-memory", functions=1000, memory_mb=64, seconds=75, rate=20, pop_share=0.05),
    Scenario(
        "shifting-popularity", functions=80, memory_mb=128, seconds=90, rate=18, pop_share=0.10
    ),
]


def zipf_sampler(n: int, rng: random.Random, s: float = 1.0) -> Callable[[], int]:
    """Index 0 is the most popular; P(i) proportional to 1 / (i + 1)^s."""
    cumulative: list[float] = []
    total = 0.0
    for i in range(n):
        total += 1 / (i + 1) ** s
        cumulative.append(total)
    return lambda: min(n - 1, bisect.bisect_left(cumulative, rng.random() * total))


def poisson_times(
    rng: random.Random, seconds: float, rate: Callable[[float], float]
) -> list[float]:
    """Arrival times of a Poisson process of varying ``rate`` (by thinning)."""
    peak = max(rate(t / 10) for t in range(int(seconds * 10) + 1))
    times: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= seconds:
            return times
        if rng.random() * peak <= rate(t):
            times.append(t)


def fn_name(i: int, n: int) -> str:
    return f"fn-{i:0{len(str(n - 1))}d}"


def trace(sc: Scenario, rng: random.Random, pops: int) -> list[TraceRequest]:
    names = [fn_name(i, sc.functions) for i in range(sc.functions)]
    if sc.name != "shifting-popularity":
        pick = zipf_sampler(sc.functions, rng)
        times = poisson_times(rng, sc.seconds, lambda _t: sc.rate)
        return [TraceRequest(round(t, 4), rng.randrange(pops), names[pick()]) for t in times]
    # 80% of requests go to a hot set of 10 that moves on every minute, the rest
    # spread Zipf over all; the rate swings +-70% around its mean once a "day".
    hot_size = 10
    pick_hot = zipf_sampler(hot_size, rng)
    pick_any = zipf_sampler(sc.functions, rng)
    times = poisson_times(
        rng, sc.seconds, lambda t: sc.rate * (1 + 0.7 * math.sin(2 * math.pi * t / DAY_S))
    )
    out: list[TraceRequest] = []
    for t in times:
        if rng.random() < 0.8:
            index = (int(t // 60) * hot_size + pick_hot()) % sc.functions
        else:
            index = pick_any()
        out.append(TraceRequest(round(t, 4), rng.randrange(pops), names[index]))
    return out


def write_functions(sc: Scenario, rng: random.Random, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    for i in range(sc.functions):
        name = fn_name(i, sc.functions)
        duration = math.exp(rng.uniform(0, math.log(200)))
        env = {"DURATION_MS": f"{duration:.1f}"}
        if sc.import_ms[1]:
            env["IMPORT_MS"] = f"{rng.uniform(*sc.import_ms):.0f}"
        fn = folder / name
        fn.mkdir(parents=True)
        (fn / "main.py").write_text(MAIN_PY)
        env_toml = ", ".join(f'{k} = "{v}"' for k, v in env.items())
        (fn / "edgerun.toml").write_text(
            f'name = "{name}"\nhandler = "main.handler"\nmemory_mb = {sc.memory_mb}\n'
            f"timeout_s = 5\nenv = {{ {env_toml} }}\n"
        )


def toml_value(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def lab_toml(sc: Scenario) -> str:
    held = max(1, round(sc.functions * sc.pop_share))
    settings: dict[str, object] = {
        "pops": 2,
        "regions": 1,
        "client_pop_ms": 5.0,
        "pop_region_ms": 40.0,
        "pop_capacity_mb": held * (sc.memory_mb + ZYGOTE_MB),
        # Regions are big: room for every function, as in the ideal POP.
        "region_capacity_mb": ideal_capacity_mb([sc.memory_mb] * sc.functions),
        "warmup_s": 10.0,
    }
    if sc.name == "shifting-popularity":
        # 24 "hours" of the compressed day; warm two of them ahead of a usual peak.
        settings["pop_settings"] = {
            "profile_slot_s": DAY_S / 24,
            "profile_slots": 24,
            "prewarm_lead_s": 2 * DAY_S / 24,
        }
    settings.update(sc.lab)
    lines = [
        f"# {sc.name}: written by bench/scenarios/generate.py; see its docstring.",
        f"# POPs hold {held} of {sc.functions} functions ({sc.memory_mb} MB + {ZYGOTE_MB} MB "
        "for the zygote each).",
    ]
    lines += [f"{k} = {toml_value(v)}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def generate(sc: Scenario, seed: int) -> None:
    rng = random.Random(f"{seed}/{sc.name}")
    folder = HERE / sc.name
    folder.mkdir(exist_ok=True)
    write_functions(sc, rng, folder / "functions")
    requests = trace(sc, rng, pops=2)
    (folder / "trace.jsonl").write_text(dump_trace(requests))
    (folder / "lab.toml").write_text(lab_toml(sc))
    print(
        f"{sc.name}: {sc.functions} functions, {len(requests)} requests over "
        f"{requests[-1].t:.0f} s ({len(requests) / sc.seconds:.1f}/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=[s.name for s in SCENARIOS])
    args = parser.parse_args()
    for sc in SCENARIOS:
        if args.only in (None, sc.name):
            generate(sc, args.seed)


if __name__ == "__main__":
    main()
