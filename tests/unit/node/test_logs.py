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


def test_a_flooding_function_does_not_push_out_another_functions_output() -> None:
    ring = LogRing(max_bytes=1000, max_bytes_per_function=100)
    ring.add("quiet", "quiet", "v", "n", "kept")
    for i in range(50):
        ring.add(f"flood-{i}", "flood", "v", "n", "x" * 60)

    assert [e.output for e in ring.find(request_id="quiet")] == ["kept"]
    assert ring.bytes_of("flood") <= 100


def test_over_the_whole_budget_the_biggest_function_gives_way_first() -> None:
    ring = LogRing(max_bytes=100, max_bytes_per_function=80)
    ring.add("small", "small", "v", "n", "s" * 10)
    ring.add("big-1", "big", "v", "n", "b" * 50)
    ring.add("big-2", "big", "v", "n", "b" * 30)
    ring.add("small-2", "small", "v", "n", "s" * 20)

    assert ring.find(request_id="big-1") == []
    assert [e.request_id for e in ring.find(function="small")] == ["small-2", "small"]
