"""One fuzzed cluster per session, and a line in the summary saying what the fuzzing sent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzz import harness

TOTAL = harness.Tally()
"""Every fuzz test's cases, for the terminal summary."""
RUNS: dict[str, dict[str, object]] = {}


@pytest.fixture(scope="session")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Fuzzed]:
    fuzzed = harness.start(tmp_path_factory.mktemp("fuzz"))
    yield fuzzed
    fuzzed.cluster.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RUNS:
        return
    terminalreporter.section("API fuzzing")
    for name, summary in RUNS.items():
        terminalreporter.write_line(f"{name:<20} {summary}")
    total = TOTAL.summary()
    terminalreporter.write_line(
        f"fuzz cases: {total['cases']}, 5xx: {total['server_errors']}, "
        f"failures: {total['failures']}, statuses: {total['statuses']}, {total['seconds']} s"
    )
