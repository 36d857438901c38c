"""Following logs across nodes: cursors per node, merged by time."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from edgerun.tail import PAGE, Tail, line, parse_since


def rec(node: str, at: float, rid: str = "r") -> dict[str, Any]:
    return {"at": at, "node": node, "function": "f", "request_id": rid, "status": 200}


class Nodes:
    """Fake nodes answering `since` queries from fixed entry lists."""

    def __init__(self, entries: dict[str, list[dict[str, Any]]]) -> None:
        self.entries = entries
        self.down: set[str] = set()
        self.asked: list[tuple[str, dict[str, str]]] = []

    def __call__(self, url: str, params: dict[str, str]) -> list[dict[str, Any]]:
        self.asked.append((url, params))
        if url in self.down:
            raise httpx.ConnectError("refused")
        since = float(params["since"])
        return [e for e in self.entries[url] if e["at"] > since][: int(params["limit"])]


def test_entries_of_all_nodes_come_merged_by_time() -> None:
    nodes = Nodes({"a": [rec("a", 1.0), rec("a", 3.0)], "b": [rec("b", 2.0)]})
    entries, more = Tail(since=0.0).poll(["a", "b"], nodes)
    assert [(e["node"], e["at"]) for e in entries] == [("a", 1.0), ("b", 2.0), ("a", 3.0)]
    assert not more


def test_each_poll_brings_only_what_is_new_per_node() -> None:
    nodes = Nodes({"a": [rec("a", 1.0)], "b": [rec("b", 5.0)]})
    tail = Tail(since=0.0)
    tail.poll(["a", "b"], nodes)
    nodes.entries["a"].append(rec("a", 2.0))  # older than b's newest: still shown
    entries, _ = tail.poll(["a", "b"], nodes)
    assert [(e["node"], e["at"]) for e in entries] == [("a", 2.0)]


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
