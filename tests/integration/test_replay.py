"""``edgerun lab replay`` end to end: a tiny trace on real labs, one per mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgerun.placement import Reason
from tests.conftest import FUNCTIONS

pytestmark = pytest.mark.integration

NAP = """import time


def handler(event, context):
    time.sleep(0.01)
    return "ok"
"""


def write_inputs(root: Path) -> Path:
    """Two functions, 10 requests over ~2 s from two POPs; echo gets JSON bodies."""
    functions = root / "functions"
    (functions / "echo").mkdir(parents=True)
    (functions / "echo" / "main.py").write_text((FUNCTIONS / "echo" / "main.py").read_text())
    (functions / "echo" / "edgerun.toml").write_text('handler = "main.handler"\nmemory_mb = 64\n')
    (functions / "nap").mkdir()
    (functions / "nap" / "main.py").write_text(NAP)
    (functions / "nap" / "edgerun.toml").write_text(
        'name = "nap"\nhandler = "main.handler"\nmemory_mb = 64\n'
    )
    lines = []
    for i in range(10):
        request: dict[str, object] = {"t": 3.0 + i * 0.22, "pop": i % 2, "function": "nap"}
        if i % 2:
            request |= {"function": "echo", "data": {"i": i}}
        lines.append(json.dumps(request))
    trace = root / "trace.jsonl"
    trace.write_text("\n".join(reversed(lines)) + "\n")  # unsorted on purpose
    (root / "lab.toml").write_text(
        "pops = 2\nregions = 1\nclient_pop_ms = 10\npop_region_ms = 40\n"
        "pop_capacity_mb = 512\nwarmup_s = 0.1\n"
        "pop_settings = { placement_horizon_s = 120.0, idle_ttl_s = 30 }\n"
    )
    return trace


def replay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgerun", "lab", "replay", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_replay_reports_what_ran_in_each_mode(tmp_path: Path) -> None:
    trace = write_inputs(tmp_path)
    done = replay(
        str(trace),
        "--functions",
        str(tmp_path / "functions"),
        "--modes",
        "edgerun,always-forward",
        "--json",
        "--png",
        str(tmp_path / "out.png"),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # exactly one JSON object on stdout
    assert result["functions"] == 2
    assert result["replayed"] == 10
    assert result["settings"]["pops"] == 2
    assert result["settings"]["pop_settings"] == {"placement_horizon_s": 120.0, "idle_ttl_s": 30}
    assert list(result["modes"]) == ["edgerun", "always-forward"]
    for figures in result["modes"].values():
        # The first request (t = 0 after rebasing) is warm-up, the other nine count.
        assert figures["requests"] == 9
        assert figures["statuses"] == {"200": 9}
        assert figures["errors"] == 0
        assert sum(figures["placements"].values()) == 9
        assert figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"]
        # Every request crossed the emulated client-POP link (10 ms round trip).
        assert figures["p50_ms"] >= 10.0

    forward = result["modes"]["always-forward"]
    assert forward["served_at_pop"] == 0.0
    assert forward["placements"] == {"forwarded:region-1": 9}
    assert forward["reasons"] == {"always-forward": 9}
    assert forward["p50_ms"] >= 50.0  # client-POP 10 + POP-region 40
    assert forward["cold_starts"] >= 1  # the region started each function once

    edgerun = result["modes"]["edgerun"]
    local = sum(n for p, n in edgerun["placements"].items() if p.startswith("local-"))
    assert edgerun["served_at_pop"] == round(local / 9, 4)
    assert set(edgerun["reasons"]) <= {r.value for r in Reason} - {"always-forward"}


def test_bad_input_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    trace = write_inputs(tmp_path)
    trace.write_text('{"t": 0, "pop": 0, "function": "nap"}\n{"t": 1, "pop": 0}\n')
    done = replay(str(trace), "--functions", str(tmp_path / "functions"), "--json")
    assert done.returncode == 2
    assert done.stdout == ""
    assert f"{trace}:2:" in done.stderr
    assert "Traceback" not in done.stderr

    trace.write_text('{"t": 0, "pop": 2, "function": "nap"}\n')
    done = replay(str(trace), "--functions", str(tmp_path / "functions"))
    assert done.returncode == 2
    assert "POP index 2" in done.stderr

    trace.write_text('{"t": 0, "pop": 0, "function": "nope"}\n')
    done = replay(str(trace), "--functions", str(tmp_path / "functions"))
    assert done.returncode == 2
    assert "'nope'" in done.stderr
