"""The pure parts of ``edgerun lab replay``: traces, settings, modes and figures."""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerun.replay import (
    LabSettings,
    Outcome,
    ReplayError,
    TraceRequest,
    cdf_points,
    dump_trace,
    figures,
    ideal_capacity_mb,
    lab_spec,
    limit,
    load_functions,
    merge_settings,
    parse_lab_toml,
    parse_modes,
    parse_trace,
    percentile,
    write_cdf_png,
)

# --- traces ---------------------------------------------------------------------


def test_a_trace_is_sorted_rebased_and_keeps_its_bodies() -> None:
    lines = [
        '{"t": 12.5, "pop": 1, "function": "b", "data": {"x": 1}}',
        "",
        '{"t": 10, "pop": 0, "function": "a"}',
        '{"t": 11, "pop": 0, "function": "a", "data": null}',
    ]
    assert parse_trace(lines) == [
        TraceRequest(0.0, 0, "a", None),
        TraceRequest(1.0, 0, "a", b"null"),
        TraceRequest(2.5, 1, "b", b'{"x":1}'),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"t": 1, "pop": 0}', "'function'"),
        ('{"t": "1", "pop": 0, "function": "a"}', "'t' must be a number"),
        ('{"t": true, "pop": 0, "function": "a"}', "'t' must be a number"),
        ('{"t": 1, "pop": -1, "function": "a"}', "'pop' must be a POP index"),
        ('{"t": 1, "pop": 0.5, "function": "a"}', "'pop' must be a POP index"),
        ('{"t": 1, "pop": 0, "function": "Bad_Name"}', "'function' must be a function name"),
        ('{"t": 1, "pop": 0, "function": "a", "dat": 1}', "unknown keys \\['dat'\\]"),
    ],
)
def test_a_bad_line_is_named_by_its_number(line: str, message: str) -> None:
    good = '{"t": 0, "pop": 0, "function": "a"}'
    with pytest.raises(ReplayError, match=f"^t.jsonl:3: .*{message}"):
        parse_trace([good, good, line], "t.jsonl")


def test_an_empty_trace_is_an_error() -> None:
    with pytest.raises(ReplayError, match="no requests"):
        parse_trace(["", "  "])


requests_st = st.lists(
    st.builds(
        TraceRequest,
        t=st.floats(0, 1e5, allow_nan=False).map(lambda t: round(t, 4)),
        pop=st.integers(0, 5),
        function=st.sampled_from(["a", "fn-1", "b2"]),
        body=st.one_of(
            st.none(),
            st.dictionaries(st.text(max_size=5), st.integers(), max_size=3).map(
                lambda d: json.dumps(d, separators=(",", ":")).encode()
            ),
        ),
    ),
    min_size=1,
    max_size=30,
)


@given(requests_st)
def test_dump_then_parse_gives_the_sorted_requests(requests: list[TraceRequest]) -> None:
    parsed = parse_trace(dump_trace(requests).splitlines())
    origin = min(r.t for r in requests)
    expected = sorted(requests, key=lambda r: r.t)
    assert [(r.pop, r.function) for r in parsed] == [(r.pop, r.function) for r in expected]
    assert [r.t for r in parsed] == pytest.approx([r.t - origin for r in expected], abs=1e-3)
    assert [r.body is None for r in parsed] == [r.body is None for r in expected]
    assert [json.loads(r.body) for r in parsed if r.body] == [
        json.loads(r.body) for r in expected if r.body
    ]
    assert parsed[0].t == 0.0
    assert all(a.t <= b.t for a, b in itertools.pairwise(parsed))


def test_limit_keeps_the_first_seconds() -> None:
    reqs = [TraceRequest(t, 0, "a") for t in (0.0, 0.5, 1.0, 1.5)]
    assert limit(reqs, 1.0) == reqs[:2]
    assert limit(reqs, None) == reqs


# --- settings and modes ---------------------------------------------------------------


def test_lab_toml_gives_the_settings_and_flags_override_it() -> None:
    settings = parse_lab_toml(
        """
pops = 3
regions = 1
pop_region_ms = 30
warmup_s = 5
pop_settings = { idle_ttl_s = 60, placement_horizon_s = 90.0 }
"""
    )
    assert (settings.pops, settings.regions, settings.pop_region_ms) == (3, 1, 30.0)
    assert settings.pop_settings == {"idle_ttl_s": 60, "placement_horizon_s": 90.0}
    merged = merge_settings(settings, {"pops": 1, "regions": None, "warmup_s": 0.0})
    assert (merged.pops, merged.regions, merged.warmup_s) == (1, 1, 0.0)
    assert merged.pop_settings == settings.pop_settings


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("pops = 0", "pops"),
        ("popz = 1", "popz"),
        ("pop_region_ms = -1", "pop_region_ms"),
        ("pops = ", "lab.toml"),
        ("pop_settings = { idle_tll_s = 60 }", "pop_settings.*idle_tll_s"),
        ('region_settings = { idle_ttl_s = "x" }', "region_settings.*idle_ttl_s"),
        ("pop_settings = { port = 1 }", "may not set port"),
    ],
)
def test_bad_lab_toml_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(ReplayError, match=message):
        parse_lab_toml(text)


def test_modes_are_checked() -> None:
    assert parse_modes("edgerun, ideal") == ["edgerun", "ideal"]
    for bad, message in (("", "no mode"), ("edge", "unknown mode"), ("ideal,ideal", "repeats")):
        with pytest.raises(ReplayError, match=message):
            parse_modes(bad)


def test_ideal_is_always_here_with_room_for_every_function() -> None:
    settings = LabSettings(pop_capacity_mb=256, pop_settings={"idle_ttl_s": 60})
    assert ideal_capacity_mb([128, 64]) == 2 * 192 + 2 * 16
    ideal = lab_spec(settings, "ideal", [128, 64])
    assert (ideal.placement_mode, ideal.pop_capacity_mb) == ("always-here", 416)
    assert ideal.pop_settings == {"idle_ttl_s": 60}
    plain = lab_spec(settings, "always-forward", [128, 64])
    assert (plain.placement_mode, plain.pop_capacity_mb) == ("always-forward", 256)


@given(st.lists(st.integers(16, 4096), max_size=50))
def test_the_ideal_pop_holds_two_sandboxes_and_a_zygote_of_each(sizes: list[int]) -> None:
    assert ideal_capacity_mb(sizes) >= sum(2 * m + 8 for m in sizes)


# --- figures ----------------------------------------------------------------------------


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1), st.floats(0.001, 1.0))
def test_nearest_rank_percentile(values: list[float], q: float) -> None:
    ordered = sorted(values)
    p = percentile(ordered, q)
    assert p in ordered
    assert sum(v <= p for v in ordered) >= q * len(ordered) - 1e-9
    assert sum(v < p for v in ordered) < q * len(ordered) + 1e-9


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1))
def test_percentiles_grow_with_q(values: list[float]) -> None:
    ordered = sorted(values)
    ps = [percentile(ordered, q) for q in (0.01, 0.5, 0.95, 0.99, 1.0)]
    assert ps == sorted(ps)
    assert ps[-1] == max(values)


def test_percentile_of_known_values() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.95), percentile(values, 0.99)) == (
        50.0,
        95.0,
        99.0,
    )
    with pytest.raises(ValueError):
        percentile([], 0.5)


def outcome(t: float, placement: str, status: int = 200, ms: float = 10.0, **kw: str) -> Outcome:
    return Outcome(t, 0, "a", status, ms, placement, **kw)


def test_figures_count_where_requests_ran_after_the_warmup() -> None:
    outcomes = [
        outcome(0.5, "local-cold", ms=999),  # warm-up: left out
        outcome(1.0, "local-cold", ms=40, reason="popular"),
        outcome(1.1, "local-warm", ms=10, reason="warm"),
        outcome(1.2, "forwarded:region-1", ms=60, region_placement="local-cold"),
        outcome(1.3, "forwarded:region-1", ms=50, region_placement="local-warm"),
        outcome(1.4, "reject", status=503, ms=1),
        outcome(1.5, "", status=0, ms=5),
    ]
    f = figures(outcomes, warmup_s=1.0)
    assert f["requests"] == 6
    assert f["errors"] == 2
    assert f["statuses"] == {"0": 1, "200": 4, "503": 1}
    assert f["served_at_pop"] == round(2 / 6, 4)
    assert f["cold_starts"] == 2
    assert f["cold_start_share"] == round(2 / 6, 4)
    assert (f["p50_ms"], f["p99_ms"], f["mean_ms"]) == (40.0, 60.0, 40.0)
    assert f["placements"] == {
        "forwarded:region-1": 2,
        "local-cold": 1,
        "local-warm": 1,
        "reject": 1,
        "none": 1,
    }


def test_figures_of_nothing_successful() -> None:
    f = figures([outcome(0, "", status=0)])
    assert (f["requests"], f["errors"], f["p50_ms"], f["served_at_pop"]) == (1, 1, None, 0.0)
    assert figures([])["requests"] == 0


placements = st.sampled_from(["local-warm", "local-cold", "forwarded:region-1", "reject", ""])


@given(
    st.lists(
        st.builds(
            Outcome,
            t=st.floats(0, 100),
            pop=st.just(0),
            function=st.just("a"),
            status=st.sampled_from([0, 200, 429, 500, 503]),
            latency_ms=st.floats(0, 1e4),
            placement=placements,
            region_placement=st.sampled_from(["", "local-cold", "local-warm"]),
        )
    ),
    st.floats(0, 100),
)
def test_figures_are_consistent(outcomes: list[Outcome], warmup: float) -> None:
    f = figures(outcomes, warmup)
    counted = [o for o in outcomes if o.t >= warmup]
    assert f["requests"] == len(counted) == sum(f["statuses"].values())
    assert sum(f["placements"].values()) == len(counted)
    assert 0.0 <= f["served_at_pop"] <= 1.0
    assert f["cold_starts"] <= len(counted)
    assert f["errors"] == sum(not 200 <= o.status < 300 for o in counted)
    if f["p50_ms"] is not None:
        assert f["p50_ms"] <= f["p95_ms"] <= f["p99_ms"]
    else:
        assert f["errors"] == f["requests"]


@given(st.lists(st.floats(0, 1e4, allow_nan=False), min_size=1))
def test_cdf_points_rise_to_one(values: list[float]) -> None:
    xs, ys = cdf_points(values)
    assert xs == sorted(values)
    assert ys == sorted(ys)
    assert math.isclose(ys[-1], 1.0)
    assert all(0 < y <= 1 for y in ys)


# --- functions --------------------------------------------------------------------------


def write_function(root: Path, folder: str, manifest: str) -> None:
    (root / folder).mkdir(parents=True)
    (root / folder / "main.py").write_text("def handler(event, context):\n    return 1\n")
    (root / folder / "edgerun.toml").write_text(manifest)


def test_functions_are_built_once_and_identical_bundles_kept_once(tmp_path: Path) -> None:
    write_function(tmp_path, "one", 'handler = "main.handler"\nmemory_mb = 64\n')
    write_function(tmp_path, "x", 'name = "two"\nhandler = "main.handler"\nenv = { A = "1" }\n')
    fset = load_functions(tmp_path)
    assert [(f.name, f.config.memory_mb) for f in fset.functions] == [("one", 64), ("two", 128)]
    assert fset.functions[1].config.env == {"A": "1"}
    assert len(fset.bundles) == 1


def test_two_folders_deploying_one_name_are_an_error(tmp_path: Path) -> None:
    write_function(tmp_path, "one", 'handler = "main.handler"\n')
    write_function(tmp_path, "two", 'name = "one"\nhandler = "main.handler"\n')
    with pytest.raises(ReplayError, match="both deploy function 'one'"):
        load_functions(tmp_path)


def test_the_cdf_png_is_skipped_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert not write_cdf_png({"edgerun": [1.0, 2.0]}, tmp_path / "cdf.png", "t")
    assert not (tmp_path / "cdf.png").exists()


def test_the_cdf_png_has_a_line_per_mode(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "out" / "cdf.png"
    assert write_cdf_png({"edgerun": [1.0, 20.0], "ideal": [2.0], "none": []}, path, "t")
    assert path.read_bytes().startswith(b"\x89PNG")
