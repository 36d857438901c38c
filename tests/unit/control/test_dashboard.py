"""The dashboard's snapshot, from what nodes answer (no I/O)."""

from __future__ import annotations

from typing import Any

from edgerun.control.dashboard import MAX_ERRORS, Board, percentile
from edgerun.models import FunctionConfig, FunctionRecord, Version

POP = {"name": "pop-1", "role": "pop", "url": "http://p", "state": "up"}
REGION = {"name": "region-1", "role": "region", "url": "http://r", "state": "up"}


def record(name: str = "f") -> FunctionRecord:
    v = Version(sha256="a" * 64, handler="main.handler", size=1, created_at=0.0)
    return FunctionRecord(
        name=name, config=FunctionConfig(), versions={v.sha256: v},
        aliases={"latest": v.sha256}, created_at=0.0, updated_at=0.0, revision=1,
    )  # fmt: skip


def status(counts: list[tuple[str, str, str, int]]) -> dict[str, Any]:
    rows = [{"function": f, "placement": p, "reason": r, "count": n} for f, p, r, n in counts]
    return {"placements": rows, "pool": {"capacity_mb": 256, "used_mb": 128}, "regions": []}


def entry(at: float, ms: float, **kw: Any) -> dict[str, Any]:
    base = {"at": at, "function": "f", "status": 200, "duration_ms": ms, "request_id": "r"}
    return base | {"placement": "local-warm"} | kw


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99)) == (50.0, 99.0)
    assert percentile([], 50) is None


def test_rates_and_share_come_from_counter_differences() -> None:
    board = Board()
    board.update(100.0, [POP], {"pop-1": status([("f", "local-warm", "popular", 10)])}, {}, [])
    snap = board.update(
        102.0,
        [POP],
        {
            "pop-1": status(
                [("f", "local-warm", "popular", 16), ("f", "forwarded:region-1", "rare", 2)]
            )
        },
        {},
        [],
    )
    [pop] = snap["pops"]
    assert pop["rate"] == 4.0  # 8 new calls in 2 s
    assert pop["here_share"] == 0.75
    assert pop["reasons"] == {"popular": 6, "rare": 2}


def test_the_first_tick_has_no_rate_yet() -> None:
    snap = Board().update(1.0, [POP], {"pop-1": status([("f", "local-warm", "x", 5)])}, {}, [])
    assert snap["pops"][0]["rate"] is None


def test_a_restarted_node_does_not_show_a_negative_rate() -> None:
    board = Board()
    board.update(1.0, [POP], {"pop-1": status([("f", "local-warm", "x", 50)])}, {}, [])
    snap = board.update(2.0, [POP], {"pop-1": status([("f", "local-warm", "x", 3)])}, {}, [])
    assert snap["pops"][0]["rate"] == 0.0


def test_percentiles_count_each_call_once_where_the_caller_called() -> None:
    board = Board()
    entries = {
        "pop-1": [entry(10.0, 5.0, placement="forwarded:region-1")],
        "region-1": [entry(10.0, 3.0, from_node="pop-1")],  # the same call, at the region
    }
    snap = board.update(11.0, [POP, REGION], {}, entries, [record()])
    [fn] = snap["functions"]
    assert (fn["calls_per_min"], fn["p50_ms"]) == (1, 5.0)
    assert fn["runs_on"] == {"region-1": 1}


def test_cold_starts_and_where_it_runs_are_counted_per_node() -> None:
    board = Board()
    new = [entry(10.0, 9.0, placement="local-cold"), entry(10.5, 1.0)]
    snap = board.update(11.0, [POP], {}, {"pop-1": new}, [record()])
    [fn] = snap["functions"]
    assert (fn["cold_starts"], fn["runs_on"]) == (1, {"pop-1": 2})


def test_calls_older_than_a_minute_fall_out() -> None:
    board = Board()
    board.update(10.0, [POP], {}, {"pop-1": [entry(10.0, 1.0)]}, [record()])
    snap = board.update(71.0, [POP], {}, {}, [record()])
    assert snap["functions"][0]["calls_per_min"] == 0


def test_errors_are_kept_newest_first_and_bounded() -> None:
    board = Board()
    failures = [entry(float(i), 1.0, status=500, error="ValueError") for i in range(80)]
    for i, e in enumerate(failures):
        e["request_id"] = f"r{i}"
    snap = board.update(100.0, [POP], {}, {"pop-1": failures}, [])
    assert len(snap["errors"]) == MAX_ERRORS
    assert snap["errors"][0]["request_id"] == "r79"


def test_a_node_that_did_not_answer_is_shown_as_such() -> None:
    snap = Board().update(1.0, [POP], {"pop-1": None}, {}, [])
    assert snap["nodes"][0]["answering"] is False
