"""The per-node ring of captured output."""

from edgerun.node.logs import LogRing


def test_find_by_request_id_returns_that_invocation() -> None:
    ring = LogRing()
    ring.add("r1", "f", "v", "pop-1", "one")
    ring.add("r2", "f", "v", "pop-1", "two")

    assert [e.output for e in ring.find(request_id="r2")] == ["two"]


def test_find_by_function_is_newest_first() -> None:
    ring = LogRing()
    for i in range(3):
        ring.add(f"r{i}", "f", "v", "pop-1", str(i))

    assert [e.output for e in ring.find(function="f")] == ["2", "1", "0"]


def test_oldest_entries_fall_out_past_the_count_limit() -> None:
    ring = LogRing(max_entries=2)
    for i in range(3):
        ring.add(f"r{i}", "f", "v", "pop-1", str(i))

    assert ring.find(request_id="r0") == []
    assert len(ring.find(function="f")) == 2


def test_oldest_entries_fall_out_past_the_byte_limit() -> None:
    ring = LogRing(max_bytes=10)
    ring.add("a", "f", "v", "n", "x" * 8)
    ring.add("b", "f", "v", "n", "y" * 8)

    assert [e.request_id for e in ring.find(function="f")] == ["b"]
