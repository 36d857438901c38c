"""Following logs across nodes: cursors per node, merged by time."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from edgerun.tail import PAGE, Tail, line, parse_since


def rec(node: str, at: float, rid: str = "r", logged_at: float | None = None) -> dict[str, Any]:
    return {
        "at": at, "logged_at": at if logged_at is None else logged_at, "node": node,
        "function": "f", "request_id": rid, "status": 200,
    }  # fmt: skip


class Nodes:
    """Fake nodes answering `since` queries from entry lists, settled up to `now`."""

    def __init__(self, entries: dict[str, list[dict[str, Any]]], now: float = 1e9) -> None:
        self.entries = entries
        self.now = now
        self.down: set[str] = set()
        self.asked: list[tuple[str, dict[str, str]]] = []

    def __call__(self, url: str, params: dict[str, str]) -> tuple[list[dict[str, Any]], float]:
        self.asked.append((url, params))
        if url in self.down:
            raise httpx.ConnectError("refused")
        since = float(params["since"])
        found = sorted(
            (e for e in self.entries[url] if since < e["logged_at"] <= self.now),
            key=lambda e: e["logged_at"],
        )
        return found[: int(params["limit"])], self.now


def test_entries_of_all_nodes_come_merged_by_time() -> None:
    nodes = Nodes({"a": [rec("a", 1.0), rec("a", 3.0)], "b": [rec("b", 2.0)]})
    entries, more = Tail(since=0.0).poll(["a", "b"], nodes)
    assert [(e["node"], e["at"]) for e in entries] == [("a", 1.0), ("b", 2.0), ("a", 3.0)]
    assert not more


def test_each_poll_brings_only_what_is_new_per_node() -> None:
    nodes = Nodes({"a": [rec("a", 1.0)], "b": [rec("b", 5.0)]}, now=10.0)
    tail = Tail(since=0.0)
    tail.poll(["a", "b"], nodes)
    nodes.now = 20.0
    nodes.entries["a"].append(rec("a", 12.0))
    entries, _ = tail.poll(["a", "b"], nodes)
    assert [(e["node"], e["at"]) for e in entries] == [("a", 12.0)]


def test_a_long_call_that_ends_after_a_short_one_is_not_missed() -> None:
    nodes = Nodes({"a": [rec("a", 101.0, "short", logged_at=101.1)]}, now=102.0)
    tail = Tail(since=0.0)
    first, _ = tail.poll(["a"], nodes)
    # It arrived first (at=100) but was logged when it ended, after the cursor moved.
    nodes.entries["a"].append(rec("a", 100.0, "long", logged_at=103.0))
    nodes.now = 104.0
    second, _ = tail.poll(["a"], nodes)
    assert [e["request_id"] for e in first + second] == ["short", "long"]


def test_a_node_that_is_down_is_reported_and_the_others_still_read() -> None:
    nodes = Nodes({"a": [rec("a", 1.0)], "b": [rec("b", 2.0)]})
    nodes.down.add("a")
    tail = Tail(since=0.0)
    entries, _ = tail.poll(["a", "b"], nodes)
    assert [e["node"] for e in entries] == ["b"]
    assert "refused" in tail.problems["a"]
    nodes.down.clear()
    entries, _ = tail.poll(["a", "b"], nodes)
    assert [e["node"] for e in entries] == ["a"]
    assert tail.problems == {}


def test_a_full_page_asks_to_poll_again_at_once() -> None:
    nodes = Nodes({"a": [rec("a", float(i)) for i in range(1, PAGE + 5)]})
    tail = Tail(since=0.0)
    first, more = tail.poll(["a"], nodes)
    assert (len(first), more) == (PAGE, True)
    rest, more = tail.poll(["a"], nodes)
    assert (len(rest), more) == (4, False)


def test_filters_are_sent_to_the_nodes() -> None:
    nodes = Nodes({"a": []})
    Tail(since=0.0, function="f", errors_only=True).poll(["a"], nodes)
    [(_, params)] = nodes.asked
    assert (params["function"], params["status"]) == ("f", "error")


@pytest.mark.parametrize(
    ("text", "ago"), [("10m", 600.0), ("90s", 90.0), ("2h", 7200.0), ("1d", 86400.0)]
)
def test_since_takes_durations(text: str, ago: float) -> None:
    assert parse_since(text, 10_000_000.0) == 10_000_000.0 - ago


def test_since_rejects_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="10m"):
        parse_since("ten minutes", 0.0)


def test_a_line_names_node_function_status_and_request() -> None:
    text = line(rec("pop-1", 1.5, "abc") | {"error": "ValueError", "placement": "local-warm"})
    assert "pop-1" in text and "f 200 ValueError" in text and "local-warm" in text
    assert text.endswith("abc")
