"""The node's invocation log on disk: records, output, retention, queries."""

from __future__ import annotations

from pathlib import Path

from edgerun.node.logs import DROPPED, Journal, LogEntry


def entry(request_id: str, function: str = "f", at: float = 1.0, **kw: object) -> LogEntry:
    return LogEntry(at=at, node="pop-1", request_id=request_id, function=function, **kw)  # type: ignore[arg-type]


def test_find_by_request_id_returns_that_invocation(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.add(entry("r1", output="one"))
    journal.add(entry("r2", output="two"))

    assert [e.output for e in journal.find(request_id="r2")] == ["two"]


def test_entries_survive_a_new_journal_on_the_same_folder(tmp_path: Path) -> None:
    first = Journal(tmp_path)
    first.add(entry("r1", status=200, placement="local-warm"))
    first.flush()

    [found] = Journal(tmp_path).find(request_id="r1")
    assert (found.status, found.placement) == (200, "local-warm")


def test_a_restarted_writer_appends_after_its_own_segments(tmp_path: Path) -> None:
    first = Journal(tmp_path)
    first.add(entry("r1"))
    first.flush()
    second = Journal(tmp_path)
    second.add(entry("r2", at=2.0))
    second.flush()

    assert [e.request_id for e in second.find()] == ["r1", "r2"]


def test_each_worker_reads_what_the_others_wrote(tmp_path: Path) -> None:
    w0, w1 = Journal(tmp_path, writer="w0"), Journal(tmp_path, writer="w1")
    w0.add(entry("a", at=1.0))
    w1.add(entry("b", at=2.0))
    w1.flush()

    assert [e.request_id for e in w0.find()] == ["a", "b"]


def test_since_returns_only_later_entries_oldest_first(tmp_path: Path) -> None:
    logged = iter(range(5))
    journal = Journal(tmp_path, clock=lambda: float(next(logged)))
    for i in range(5):
        journal.add(entry(f"r{i}", at=float(i)))

    assert [e.request_id for e in journal.find(since=2.0)] == ["r3", "r4"]
    assert [e.request_id for e in journal.find(since=0.0, limit=2)] == ["r1", "r2"]


def test_without_since_the_newest_entries_are_kept(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for i in range(5):
        journal.add(entry(f"r{i}", at=float(i)))

    assert [e.request_id for e in journal.find(limit=2)] == ["r3", "r4"]


def test_errors_only_keeps_failed_statuses_and_handler_errors(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.add(entry("ok", status=200))
    journal.add(entry("bad", status=503, error="Unavailable"))
    journal.add(entry("raised", status=500, error="Unhandled"))
    journal.add(entry("gone", status=499, error="ClientClosed"))  # the caller hung up

    assert [e.request_id for e in journal.find(errors=True)] == ["bad", "raised"]


def test_readable_hides_other_functions(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.add(entry("mine", function="acme.f"))
    journal.add(entry("theirs", function="other.f"))

    found = journal.find(readable=lambda fn: fn.startswith("acme."))
    assert [e.request_id for e in found] == ["mine"]


def test_oldest_segments_go_past_the_size_limit(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=512 << 10)
    for i in range(4000):
        journal.add(entry(f"r{i}", at=float(i), output="x" * 100))
        journal.flush()

    size = sum(p.stat().st_size for p in tmp_path.glob("*.jsonl"))
    assert size <= 512 << 10
    assert journal.find(request_id="r0") == []
    assert journal.find(request_id="r3999") != []


def test_a_flooding_function_loses_its_own_output_not_others(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=512 << 10)  # 64 KiB segments
    journal.add(entry("quiet-1", function="quiet", output="hello"))
    for i in range(50):
        journal.add(entry(f"loud-{i}", function="loud", at=2.0 + i, output="y" * 4096))
    journal.add(entry("quiet-2", function="quiet", at=100.0, output="hello again"))

    assert [e.output for e in journal.find(function="quiet")] == ["hello", "hello again"]
    loud = journal.find(function="loud")
    assert len(loud) == 50  # every record kept
    assert loud[-1].output == DROPPED
    assert loud[0].output == "y" * 4096


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.add(entry("r1"))
    journal.flush()
    [segment] = tmp_path.glob("*.jsonl")
    with segment.open("ab") as f:
        f.write(b'{"at": 2.0, "node": "pop-1", "requ')

    assert [e.request_id for e in Journal(tmp_path).find()] == ["r1"]


def test_since_counts_when_an_entry_was_logged_not_when_it_arrived(tmp_path: Path) -> None:
    clock = iter([10.0, 20.0])
    journal = Journal(tmp_path, clock=lambda: next(clock))
    journal.add(entry("short", at=9.0))  # logged at 10
    journal.add(entry("long", at=5.0))  # arrived first, ended (logged) at 20

    assert [e.request_id for e in journal.find(since=10.0)] == ["long"]
    assert [e.request_id for e in journal.find(since=0.0, until=15.0)] == ["short"]


def test_the_first_writer_removes_segments_of_writers_that_are_gone(tmp_path: Path) -> None:
    for writer in ("w0", "w1", "w2"):
        old = Journal(tmp_path, writer=writer)
        old.add(entry(f"from-{writer}"))
        old.flush()

    Journal(tmp_path, writer="w0", writers=["w0", "w1"])

    assert sorted(p.name.split("-")[0] for p in tmp_path.glob("*.jsonl")) == ["w0", "w1"]


def test_a_huge_error_type_is_capped(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.add(entry("r1", status=500, error="X" * 10_000_000))

    [found] = journal.find(request_id="r1")
    assert len(found.error) == 128


def test_a_query_holds_at_most_limit_entries_and_keeps_the_newest(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for i in range(500):
        journal.add(entry(f"r{i}", at=float(i)))

    found = journal.find(limit=3)
    assert [e.request_id for e in found] == ["r497", "r498", "r499"]
