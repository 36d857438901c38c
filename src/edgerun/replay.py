"""Replay a request trace on fresh labs, one per placement mode, and compare them.

A user tool (``edgerun lab replay``): anyone can feed it their own traffic
(a JSONL trace) and functions (ordinary folders) and see what each placement
policy makes of it on real nodes with emulated distance. The figures are
computed by pure functions (parsing, percentiles, shares) so they can be
tested without a lab; :func:`run_mode` is the part that starts one.

Times in a trace are seconds; only differences matter: the replay starts at
the earliest ``t``, and warm-up and ``--limit-seconds`` count from there.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import msgspec
from rich.table import Table

from edgerun.build import build_bundle, function_config
from edgerun.client import Client
from edgerun.config import NodeConfig, Role, apply_settings
from edgerun.lab import Lab, LabSpec, PlacementMode
from edgerun.models import NAME_RE, FunctionConfig

Mode = Literal["edgerun", "always-here", "always-forward", "ideal"]
MODES: tuple[Mode, ...] = ("edgerun", "always-here", "always-forward", "ideal")
IDEAL_ZYGOTE_MB = 16
"""Headroom per function for its zygote in the ``ideal`` POP (~8 MB plus heap)."""
SYNC_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 60.0
LAB_TOML = "lab.toml"
_TRACE_KEYS = frozenset({"t", "pop", "function", "data"})


class ReplayError(ValueError):
    """Bad input (trace, lab.toml, functions, options): the user can fix it."""


# --- inputs ----------------------------------------------------------------------


@dataclass(frozen=True)
class TraceRequest:
    t: float
    """Seconds since the first request of the trace."""
    pop: int
    """Index of the POP whose clients send it (0 = pop-1)."""
    function: str
    body: bytes | None = None
    """The JSON body of a direct invoke; None: an HTTP trigger GET instead."""


def parse_trace(lines: Iterable[str], source: str = "trace") -> list[TraceRequest]:
    """Requests of a JSONL trace, sorted by time and rebased to start at 0.

    Every line is checked so a user sees the first bad one by its number;
    blank lines are skipped."""
    out: list[TraceRequest] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise ReplayError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(item, dict):
            raise ReplayError(f"{where}: expected a JSON object, got {type(item).__name__}")
        unknown = sorted(item.keys() - _TRACE_KEYS)
        if unknown:
            raise ReplayError(f"{where}: unknown keys {unknown} (expected t, pop, function, data)")
        t, pop, function = item.get("t"), item.get("pop"), item.get("function")
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            raise ReplayError(f"{where}: 't' must be a number of seconds, got {t!r}")
        if isinstance(pop, bool) or not isinstance(pop, int) or pop < 0:
            raise ReplayError(f"{where}: 'pop' must be a POP index (0, 1, ...), got {pop!r}")
        if not isinstance(function, str) or not NAME_RE.match(function):
            raise ReplayError(f"{where}: 'function' must be a function name, got {function!r}")
        body = msgspec.json.encode(item["data"]) if "data" in item else None
        out.append(TraceRequest(float(t), pop, function, body))
    if not out:
        raise ReplayError(f"{source}: no requests")
    out.sort(key=lambda r: r.t)
    origin = out[0].t
    return [TraceRequest(r.t - origin, r.pop, r.function, r.body) for r in out]


def read_trace(path: Path) -> list[TraceRequest]:
    try:
        with path.open() as f:
            return parse_trace(f, str(path))
    except OSError as exc:
        raise ReplayError(f"cannot read {path}: {exc.strerror}") from None


def dump_trace(requests: Iterable[TraceRequest]) -> str:
    """The JSONL form of ``requests`` (what generators write)."""
    lines = []
    for r in requests:
        item: dict[str, Any] = {"t": round(r.t, 4), "pop": r.pop, "function": r.function}
        if r.body is not None:
            item["data"] = json.loads(r.body)
        lines.append(json.dumps(item, separators=(",", ":")))
    return "".join(line + "\n" for line in lines)


def limit(requests: Sequence[TraceRequest], seconds: float | None) -> list[TraceRequest]:
    """The requests of the first ``seconds`` of the trace (all when None)."""
    return [r for r in requests if seconds is None or r.t < seconds]


Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class LabSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The lab a trace is replayed on: ``lab.toml`` beside the trace, CLI flags on top."""

    pops: Positive = 2
    regions: Positive = 2
    client_pop_ms: NonNegative = 5.0
    pop_region_ms: NonNegative = 40.0
    region_region_ms: NonNegative = 60.0
    pop_capacity_mb: Positive = 1024
    region_capacity_mb: Positive = 8192
    pop_settings: dict[str, Any] = msgspec.field(default_factory=dict)
    """Extra NodeConfig fields for every POP (e.g. ``idle_ttl_s = 60``)."""
    region_settings: dict[str, Any] = msgspec.field(default_factory=dict)
    warmup_s: NonNegative = 0.0
    """Seconds of the trace replayed but left out of the figures."""


def parse_lab_toml(text: str, source: str = LAB_TOML) -> LabSettings:
    import tomllib

    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ReplayError(f"{source}: {exc}") from None
    return _settings(raw, source)


def _settings(raw: dict[str, Any], source: str) -> LabSettings:
    try:
        settings = msgspec.convert(raw, LabSettings)
    except msgspec.ValidationError as exc:
        raise ReplayError(f"{source}: {exc}") from None
    roles: tuple[tuple[Role, dict[str, Any]], ...] = (
        ("pop", settings.pop_settings),
        ("region", settings.region_settings),
    )
    for role, extra in roles:
        try:
            apply_settings(NodeConfig(role=role, name=role, data_dir="."), extra)
        except ValueError as exc:
            raise ReplayError(f"{source}: {role}_settings: {exc}") from None
    return settings


def merge_settings(base: LabSettings, overrides: dict[str, Any]) -> LabSettings:
    """``base`` with the options the user gave (None: not given) on top."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return _settings({**msgspec.to_builtins(base), **given}, "options")


def parse_modes(text: str) -> list[Mode]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes:
        raise ReplayError("--modes names no mode")
    for m in modes:
        if m not in MODES:
            raise ReplayError(f"unknown mode {m!r}: choose from {', '.join(MODES)}")
    if len(set(modes)) != len(modes):
        raise ReplayError(f"--modes repeats a mode: {text}")
    return modes  # type: ignore[return-value]


def ideal_capacity_mb(memory_mb: Iterable[int]) -> int:
    """A POP budget that never has to evict: twice every function's memory (two
    sandboxes each at once) plus room for each one's zygote."""
    sizes = list(memory_mb)
    return 2 * sum(sizes) + IDEAL_ZYGOTE_MB * len(sizes)


def lab_spec(settings: LabSettings, mode: Mode, memory_mb: Iterable[int]) -> LabSpec:
    """The lab one mode runs on; ``ideal`` is ``always-here`` with room for everything."""
    placement: PlacementMode = "always-here" if mode == "ideal" else mode
    capacity = ideal_capacity_mb(memory_mb) if mode == "ideal" else settings.pop_capacity_mb
    return LabSpec(
        pops=settings.pops,
        regions=settings.regions,
        client_pop_ms=settings.client_pop_ms,
        pop_region_ms=settings.pop_region_ms,
        region_region_ms=settings.region_region_ms,
        pop_capacity_mb=capacity,
        region_capacity_mb=settings.region_capacity_mb,
        placement_mode=placement,
        pop_settings=dict(settings.pop_settings),
        region_settings=dict(settings.region_settings),
    )


# --- figures ---------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one replayed request got; ``status`` 0 when no answer came."""

    t: float
    pop: int
    function: str
    status: int
    latency_ms: float
    placement: str = ""
    reason: str = ""
    region_placement: str = ""
    lag_ms: float = 0.0
    """How late it was sent (the client could not keep up when this grows)."""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def at_pop(self) -> bool:
        return self.placement.startswith("local-")

    @property
    def cold(self) -> bool:
        return self.placement == "local-cold" or self.region_placement == "local-cold"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in (0, 1]) of an ascending, non-empty sequence."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(1, math.ceil(q * len(sorted_values) - 1e-9))
    return sorted_values[min(len(sorted_values), rank) - 1]


def _share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def figures(outcomes: Sequence[Outcome], warmup_s: float = 0.0) -> dict[str, Any]:
    """The figures of one mode over the requests sent at or after ``warmup_s``.

    Latency percentiles are over successful (2xx) requests; the others count
    as errors. Shares are of all counted requests."""
    counted = [o for o in outcomes if o.t >= warmup_s]
    n = len(counted)
    lat = sorted(o.latency_ms for o in counted if o.ok)
    at_pop = sum(o.at_pop for o in counted)
    cold = sum(o.cold for o in counted)

    def pct(q: float) -> float | None:
        return round(percentile(lat, q), 2) if lat else None

    return {
        "requests": n,
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "mean_ms": round(sum(lat) / len(lat), 2) if lat else None,
        "served_at_pop": _share(at_pop, n),
        "cold_starts": cold,
        "cold_start_share": _share(cold, n),
        "errors": n - len(lat),
        "statuses": dict(sorted(Counter(str(o.status) for o in counted).items())),
        "placements": dict(Counter(o.placement or "none" for o in counted).most_common()),
        "reasons": dict(Counter(o.reason or "none" for o in counted).most_common()),
        "send_lag_p99_ms": (
            round(percentile(sorted(o.lag_ms for o in counted), 0.99), 2) if counted else None
        ),
    }


def cdf_points(latencies: Iterable[float]) -> tuple[list[float], list[float]]:
    """(x, y) of the empirical CDF: y[i] is the share of values <= x[i]."""
    xs = sorted(latencies)
    return xs, [(i + 1) / len(xs) for i in range(len(xs))]


def write_cdf_png(latencies: dict[str, list[float]], path: Path, title: str) -> bool:
    """One CDF line per mode; False (nothing written) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, values in latencies.items():
        if values:
            xs, ys = cdf_points(values)
            ax.step(xs, ys, where="post", label=mode)
    ax.set_xscale("log")
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("latency seen by the client (ms, log scale)")
    ax.set_ylabel("share of requests")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --- functions -------------------------------------------------------------------


@dataclass(frozen=True)
class Function:
    name: str
    config: FunctionConfig
    bundle_sha256: str


@dataclass
class FunctionSet:
    """Every function of a folder, built once; identical bundles are kept once."""

    functions: list[Function]
    bundles: dict[str, bytes]

    @property
    def names(self) -> set[str]:
        return {f.name for f in self.functions}


def load_functions(root: Path, progress: Callable[[str], None] = lambda _m: None) -> FunctionSet:
    """Build each function folder under ``root`` as ``edgerun deploy`` would."""
    if not root.is_dir():
        raise ReplayError(f"{root} is not a folder of functions")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ReplayError(f"{root} holds no function folders")
    functions: list[Function] = []
    bundles: dict[str, bytes] = {}
    seen: dict[str, Path] = {}
    for i, folder in enumerate(folders):
        if i % 100 == 0:
            progress(f"building functions {i}/{len(folders)}...")
        name, config = function_config(folder, {})
        if name in seen:
            raise ReplayError(f"{folder} and {seen[name]} both deploy function {name!r}")
        seen[name] = folder
        bundle = build_bundle(folder, lambda line: progress(f"pip: {line[:80]}"))
        sha = hashlib.sha256(bundle).hexdigest()
        bundles.setdefault(sha, bundle)
        functions.append(Function(name, config, sha))
    return FunctionSet(functions, bundles)


def check_trace(requests: Sequence[TraceRequest], functions: FunctionSet, pops: int) -> None:
    """Every request names a known function and an existing POP."""
    names = functions.names
    for r in requests:
        if r.function not in names:
            raise ReplayError(f"the trace calls {r.function!r}, which is not among the functions")
        if r.pop >= pops:
            raise ReplayError(f"the trace sends to POP index {r.pop}, but the lab has {pops} POPs")


def deploy_all(client: Client, functions: FunctionSet) -> None:
    uploaded = {sha: client.upload_bundle(data) for sha, data in functions.bundles.items()}
    for fn in functions.functions:
        client.put_function(fn.name, uploaded[fn.bundle_sha256], fn.config)


def wait_synced(lab: Lab, timeout: float = SYNC_TIMEOUT_S) -> None:
    """Until every region and POP has applied the control plane's last revision."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as http:
        target = http.get(f"{lab.cluster.control_url}/v1/health").json()["revision"]
        for node in lab.cluster.by_role("region") + lab.cluster.by_role("pop"):
            while True:
                try:
                    revision = http.get(f"{node.url}/v1/health").json().get("revision", -1)
                except (httpx.HTTPError, ValueError):
                    revision = -1
                if revision >= target:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{node.config.name} is at revision {revision}, not {target}, "
                        f"after {timeout:g} s; see {node.log_path}"
                    )
                time.sleep(0.05)


# --- the replay ------------------------------------------------------------------


async def replay(
    urls: Sequence[str], requests: Sequence[TraceRequest], speed: float = 1.0, *, key: str = ""
) -> list[Outcome]:
    """Send each request at its time (divided by ``speed``) to ``urls[pop]``, concurrently,
    with the secret of a key that may invoke the functions."""
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    loop = asyncio.get_running_loop()
    headers = {"authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits, headers=headers) as http:

        async def one(r: TraceRequest, due: float) -> Outcome:
            lag_ms = max(0.0, loop.time() - due) * 1000
            base = urls[r.pop]
            start = time.perf_counter()
            try:
                if r.body is None:
                    resp = await http.get(f"{base}/fn/{r.function}/")
                else:
                    resp = await http.post(
                        f"{base}/v1/functions/{r.function}/invocations",
                        content=r.body,
                        headers={"content-type": "application/json"},
                    )
            except httpx.HTTPError:
                elapsed = (time.perf_counter() - start) * 1000
                return Outcome(r.t, r.pop, r.function, 0, elapsed, lag_ms=lag_ms)
            elapsed = (time.perf_counter() - start) * 1000
            h = resp.headers
            return Outcome(
                r.t,
                r.pop,
                r.function,
                resp.status_code,
                elapsed,
                h.get("x-edgerun-placement", ""),
                h.get("x-edgerun-reason", ""),
                h.get("x-edgerun-region-placement", ""),
                lag_ms,
            )

        origin = loop.time()
        tasks: list[asyncio.Task[Outcome]] = []
        for r in requests:
            due = origin + r.t / speed
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(one(r, due)))
        return list(await asyncio.gather(*tasks))


@dataclass
class ModeRun:
    mode: Mode
    spec: LabSpec
    outcomes: list[Outcome]
    data_dir: Path | None = None
    """Where the lab's nodes kept their data and logs (when kept)."""


def run_mode(
    mode: Mode,
    settings: LabSettings,
    functions: FunctionSet,
    requests: Sequence[TraceRequest],
    *,
    speed: float = 1.0,
    keep_data: bool = False,
    progress: Callable[[str], None] = lambda _m: None,
) -> ModeRun:
    """A fresh lab for ``mode``: start, deploy, wait for every node, replay, stop."""
    spec = lab_spec(settings, mode, (f.config.memory_mb for f in functions.functions))
    root = Path(tempfile.mkdtemp(prefix=f"edgerun-replay-{mode}-"))
    lab = Lab(spec, root)
    try:
        progress(f"{mode}: starting the lab...")
        lab.start()
        progress(f"{mode}: deploying {len(functions.functions)} functions...")
        with Client(lab.cluster.control_url, lab.cluster.token) as client:
            deploy_all(client, functions)
        wait_synced(lab, SYNC_TIMEOUT_S + len(functions.functions) / 20)
        urls = [lab.client_url(f"pop-{i + 1}") for i in range(spec.pops)]
        span = requests[-1].t / speed if requests else 0.0
        progress(f"{mode}: replaying {len(requests)} requests over {span:.0f} s...")
        outcomes = asyncio.run(replay(urls, requests, speed, key=lab.cluster.token))
    finally:
        progress(f"{mode}: stopping the lab...")
        lab.stop()
        if not keep_data:
            shutil.rmtree(root, ignore_errors=True)
    return ModeRun(mode, spec, outcomes, root if keep_data else None)


def report(runs: Sequence[ModeRun], settings: LabSettings, extra: dict[str, Any]) -> dict[str, Any]:
    """The one JSON object ``--json`` prints: the settings and each mode's figures."""
    return {
        **extra,
        "settings": msgspec.to_builtins(settings),
        "modes": {
            run.mode: {
                "placement_mode": run.spec.placement_mode,
                "pop_capacity_mb": run.spec.pop_capacity_mb,
                **figures(run.outcomes, settings.warmup_s),
            }
            for run in runs
        },
    }


def summary_table(result: dict[str, Any], title: str) -> Table:
    """The per-mode figures of :func:`report` as a table for people."""
    warmup = result["settings"]["warmup_s"]
    table = Table(
        title=f"{title}: {result['replayed']} requests replayed "
        f"({warmup:g} s of warm-up left out), {result['functions']} functions"
    )
    columns = (
        "mode",
        "POP MB",
        "requests",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "at POP",
        "cold",
        "errors",
    )
    for col in columns:
        table.add_column(col, justify="right")

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    for mode, f in result["modes"].items():
        table.add_row(
            mode,
            str(f["pop_capacity_mb"]),
            str(f["requests"]),
            ms(f["p50_ms"]),
            ms(f["p95_ms"]),
            ms(f["p99_ms"]),
            f"{f['served_at_pop']:.1%}",
            f"{f['cold_starts']} ({f['cold_start_share']:.1%})",
            str(f["errors"]),
        )
    return table
