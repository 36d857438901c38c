"""Node settings and local topologies, both read from TOML.

A node config describes one process (`edgerun node`); a topology describes a
whole local cluster (`edgerun up`), which is turned into one node config per
process so that `up` runs exactly what a multi-machine deployment runs.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

Role = Literal["control", "region", "pop"]
_T = TypeVar("_T")


class RegionRef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    url: str


class TlsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A node's ``[tls]`` table: HTTPS for what it serves, and whom it trusts when
    it calls out. The two are independent, so a node behind a TLS-terminating
    proxy can still insist that its regions and control plane prove who they are.
    Paths are PEM files, read at start-up (relative to the working directory)."""

    cert: str = ""
    """Certificate chain this node serves HTTPS with; with ``key``, or neither."""
    key: str = ""
    """The private key of ``cert`` (unencrypted)."""
    ca: str = ""
    """CA bundle the regions and control plane this node calls must chain to;
    empty: the system's default trust store."""

    def __post_init__(self) -> None:
        # One without the other would silently serve plain HTTP; say so at load.
        if bool(self.cert) != bool(self.key):
            raise ValueError("tls: cert and key must be set together (or neither)")


class OtelConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A node's ``[otel]`` table: OpenTelemetry traces, exported over OTLP/HTTP
    (see :mod:`edgerun.tracing`). Without an endpoint no span is made and the
    SDK is not even imported; W3C trace context still passes through."""

    endpoint: str = ""
    """OTLP/HTTP traces URL, e.g. ``http://127.0.0.1:4318/v1/traces``; empty: no traces."""
    service_name: str = ""
    """The ``service.name`` resource attribute; empty: ``edgerun-<role>``."""
    sample_ratio: float = 1.0
    """Share of new traces recorded; a caller's sampled flag is followed as it is."""
    export_interval_s: float = 1.0
    """How long finished spans wait to be exported together."""
    timeout_s: float = 10.0
    """Timeout of one export request."""

    def __post_init__(self) -> None:
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError("otel: endpoint must be an http:// or https:// URL")
        if not 0.0 <= self.sample_ratio <= 1.0:
            raise ValueError("otel: sample_ratio must be between 0 and 1")
        if self.export_interval_s <= 0 or self.timeout_s <= 0:
            raise ValueError("otel: export_interval_s and timeout_s must be positive")


class NodeConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    role: Role
    name: str
    data_dir: str
    host: str = "127.0.0.1"
    port: int = 0
    control_url: str = ""
    token_file: str = ""
    """Control plane: where the bootstrap admin token lives (generated on first start)."""
    secrets_key_file: str = ""
    """Control plane: the master key secrets are encrypted under (urlsafe base64 of 32
    bytes); by default ``secrets.key`` in ``data_dir``, created on first start."""
    secrets_key_env: str = ""
    """Control plane: the name of an environment variable holding the master key instead."""
    join_token_file: str = ""
    """Region or POP: a single-use join token, traded at first start for this node's
    own credential (kept in ``data_dir``); the file is removed once spent."""
    regions: list[RegionRef] = msgspec.field(default_factory=list)
    """Parent regions of a POP, in order of preference."""
    tls: TlsConfig = msgspec.field(default_factory=TlsConfig)
    """HTTPS: serve it (cert, key) and verify the nodes this one calls (ca)."""
    otel: OtelConfig = msgspec.field(default_factory=OtelConfig)
    """Traces: exported over OTLP/HTTP when ``endpoint`` is set."""
    capacity_mb: int = 1024
    """Memory budget for sandboxes; each charges its function's memory_mb."""
    workers: int = 0
    """Worker processes of a region or POP, sharing its port, budget and popularity;
    0: one per CPU it may use."""
    max_per_function: int = 8
    """Most sandboxes one function version may hold on this node."""
    max_memory_mb: int = 1024
    """The largest function (memory_mb) this node will run itself."""
    max_timeout_s: float = 60.0
    max_queue: int = 64
    """Requests that may wait for a worker before the node answers 429."""
    queue_timeout_s: float = 10.0
    max_payload_bytes: int = 6 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    """Request line and headers together; more is a 431."""
    max_headers: int = 100
    header_timeout_s: float = 10.0
    """From connection (or the first byte of a request) to its last header."""
    body_timeout_s: float = 60.0
    """From the last header to the last byte of the body."""
    shutdown_grace_s: float = 5.0
    """How long a stopping node lets requests in flight finish before it cancels them
    (``edgerun up`` gives its nodes 0.25 s: a Ctrl-C there means now)."""
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    """Peer addresses whose X-Forwarded-For and x-edgerun-request-id are believed
    (POPs are trusted through their node credentials instead)."""
    max_bundle_bytes: int = 250 * 1024 * 1024
    """Uncompressed size limit of a bundle."""
    code_cache_mb: int = 10_240
    """Disk a node's code cache (zips plus extracted code) may use; 0: no limit."""
    retain_versions: int = 3
    """Control plane: each function keeps its newest N versions and every version an
    alias points at; the others are collected, with their code on every node."""
    gc_interval_s: float = 60.0
    """How often the control plane collects versions and nodes collect code."""
    schedule_time_scale: float = 1.0
    """Control plane, a lab and test knob: schedules run on a clock this many times
    faster than real time (60: ``rate(1 minute)`` fires every second), from an anchor
    kept in ``schedules.db``. Leave it at 1 in production."""
    idle_ttl_s: float = 300.0
    """How long an idle warm worker is kept."""
    feed_wait_s: float = 20.0
    engine: Literal["auto", "zygote", "process"] = "auto"
    """``zygote`` (Linux: forked, isolated sandboxes) or ``process`` (portable)."""
    uid_base: int = 200_000
    uid_count: int = 50_000
    """Each function runs as its own uid from [uid_base, uid_base + uid_count)."""
    tmp_mb: int = 64
    """Size of each function's private /tmp, and the largest file it may write."""
    pids_max: int = 64
    nofile: int = 256
    zygote_ttl_s: float = 600.0
    """How long the zygote of a version nobody calls is kept."""
    warm_cgroup_moves: bool = True
    """cgroup v1: keep moving a new sandbox into its cgroup fast (about 0.2 ms instead of
    8-15 ms after a quiet spell) for a minute after each start, at about 2% of a core."""
    placement_horizon_s: float = 60.0
    """POP: how far ahead the placement policy counts what a sandbox here is worth
    (and what evicting one costs)."""
    profile_slot_s: float = 3600.0
    profile_slots: int = 168
    """POP: the time-of-day profile's cycle: by default the 168 hours of a week
    (a lab may compress a day into minutes)."""
    profile_capacity: int = 4096
    """POP: functions the profile keeps (about 1 KB each)."""
    prewarm_lead_s: float = 300.0
    """POP: how far ahead of a usual peak its sandboxes are started."""
    profile_save_s: float = 300.0
    """POP: how often the profile is saved to the data dir (and at shutdown)."""
    popularity_half_life_s: float = 120.0
    popularity_capacity: int = 100_000
    """POP: functions whose popularity is tracked (memory stays bounded)."""
    placement_mode: Literal["edgerun", "always-here", "always-forward"] = "edgerun"
    """POP: the placement policy; the other two are baselines for benchmarks."""
    log_format: Literal["json", "text"] = "json"
    """The node's own log lines (stderr): JSON lines for collectors, or text for people."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_retention_mb: int = 64
    """Region or POP: disk kept for invocation records and function output (oldest go
    first); they survive a restart."""
    advertise_url: str = ""
    """Region or POP: the URL other nodes and the CLI reach this node at (told to the
    control plane in heartbeats); by default http(s)://host:port."""
    async_slots: int = 4
    """Region or POP: queued events (asynchronous invocations) it runs at once, so
    they never take all of its room from synchronous calls."""
    async_retry_base_s: float = 60.0
    """The wait before an event's first retry; each next one doubles (±50% jitter)."""
    heartbeat_s: float = 5.0
    """Region or POP: how often it tells the control plane it is alive."""
    metrics: bool = True
    """Count for ``GET /metrics`` (Prometheus); off, nothing is counted at all."""
    metrics_max_functions: int = 200
    """Functions with a ``function`` label of their own in /metrics; the rest are
    counted as ``(other)``."""


IDENTITY_FIELDS = frozenset(
    {
        "role",
        "name",
        "host",
        "port",
        "data_dir",
        "control_url",
        "token_file",
        "join_token_file",
        "regions",
    }
)
"""NodeConfig fields a topology derives itself; ``settings`` may not change them."""


def apply_settings(cfg: NodeConfig, settings: dict[str, Any]) -> NodeConfig:
    """``cfg`` with extra NodeConfig fields from a topology's ``settings``.

    Validated by NodeConfig itself, so any field (including ones added later)
    works and an unknown key or a wrong type is a clear ``ValueError``."""
    if not settings:
        return cfg
    fixed = sorted(IDENTITY_FIELDS & settings.keys())
    if fixed:
        raise ValueError(f"node {cfg.name}: settings may not set {', '.join(fixed)}")
    try:
        return msgspec.convert({**msgspec.to_builtins(cfg), **settings}, NodeConfig)
    except msgspec.ValidationError as exc:
        raise ValueError(f"node {cfg.name}: invalid settings: {exc}") from None


def load_node_config(path: Path) -> NodeConfig:
    return _load(path, NodeConfig)


def dump_toml(cfg: NodeConfig) -> str:
    """Serialise a node config as TOML (flat keys, then the tables: ``[tls]``
    and ``[otel]`` when set, and the array of regions)."""
    lines: list[str] = []
    for key, value in msgspec.structs.asdict(cfg).items():
        if key in ("regions", "tls", "otel"):
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    tls = {k: v for k, v in msgspec.structs.asdict(cfg.tls).items() if v}
    if tls:
        lines += ["", "[tls]", *(f"{k} = {_toml_value(v)}" for k, v in tls.items())]
    if cfg.otel != OtelConfig():
        otel = msgspec.structs.asdict(cfg.otel)
        lines += ["", "[otel]", *(f"{k} = {_toml_value(v)}" for k, v in otel.items())]
    for region in cfg.regions:
        lines += [
            "",
            "[[regions]]",
            f"name = {_toml_value(region.name)}",
            f"url = {_toml_value(region.url)}",
        ]
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return msgspec.json.encode(str(value)).decode()


class ControlSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    port: int = 8700
    settings: dict[str, Any] = msgspec.field(default_factory=dict)


class RegionSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    port: int
    capacity_mb: int = 8192
    max_memory_mb: int = 4096
    max_timeout_s: float = 300.0
    settings: dict[str, Any] = msgspec.field(default_factory=dict)
    """Any other NodeConfig fields for this node (e.g. ``idle_ttl_s``)."""


class PopSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    port: int
    regions: list[str] = msgspec.field(default_factory=list)
    """Names of the parent regions, preferred first; all regions when empty."""
    capacity_mb: int = 1024
    max_memory_mb: int = 512
    max_timeout_s: float = 30.0
    code_cache_mb: int = 10_240
    placement_mode: Literal["edgerun", "always-here", "always-forward"] = "edgerun"
    settings: dict[str, Any] = msgspec.field(default_factory=dict)
    """Any other NodeConfig fields for this node (e.g. ``idle_ttl_s``)."""


class Topology(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    control: ControlSpec = msgspec.field(default_factory=ControlSpec)
    region: list[RegionSpec] = msgspec.field(default_factory=list)
    pop: list[PopSpec] = msgspec.field(default_factory=list)


def default_topology() -> Topology:
    return Topology(
        region=[RegionSpec(name="region-1", port=8710), RegionSpec(name="region-2", port=8711)],
        pop=[
            PopSpec(name="pop-1", port=8720, regions=["region-1", "region-2"]),
            PopSpec(name="pop-2", port=8721, regions=["region-2", "region-1"]),
        ],
    )


def load_topology(path: Path) -> Topology:
    topo = _load(path, Topology)
    names = [r.name for r in topo.region] + [p.name for p in topo.pop]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: node names must be unique")
    known = {r.name for r in topo.region}
    for pop in topo.pop:
        missing = [r for r in pop.regions if r not in known]
        if missing:
            raise ValueError(f"{path}: pop {pop.name!r} names unknown regions {missing}")
    return topo


def _load(path: Path, type: type[_T]) -> _T:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    try:
        return msgspec.convert(raw, type)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{path}: {exc}") from None
