"""The restart policy of `edgerun up` (edgerun.keeper.RestartPolicy), on a fake clock."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edgerun.keeper import Backoff, NodeState, RestartPolicy


def crash_loop(policy: RestartPolicy, name: str, times: int, now: float = 0.0) -> list[float]:
    """Let ``name`` die right after each restart; the delays it waited."""
    delays = []
    for _ in range(times):
        at = policy.exited(name, now)
        assert at is not None
        delays.append(at - now)
        assert policy.due(at - 0.001) == []
        assert policy.due(at) == [name]
        policy.restarting(name, at)
        now = at + 0.1
    return delays


def test_backoff_doubles_from_half_a_second_to_ten() -> None:
    policy = RestartPolicy(["region-1", "pop-1"])
    policy.started("region-1", 0.0)
    policy.started("pop-1", 0.0)
    assert crash_loop(policy, "region-1", 8) == [0.5, 1, 2, 4, 8, 10, 10, 10]
    assert policy.nodes["region-1"].restarts == 8
    assert policy.nodes["pop-1"].state is NodeState.RUNNING  # the others are untouched


def test_a_node_that_stayed_up_long_enough_starts_over() -> None:
    policy = RestartPolicy(["r"])
    policy.started("r", 0.0)
    crash_loop(policy, "r", 4)
    started = policy.nodes["r"].started_at
    assert policy.exited("r", started + 29.9) == started + 29.9 + 8  # not long enough
    policy.restarting("r", started + 40)
    assert policy.exited("r", started + 70) == started + 70.5  # up 30 s: first delay again


def test_a_node_stopped_by_the_user_is_not_restarted_until_started() -> None:
    policy = RestartPolicy(["r"])
    policy.started("r", 0.0)
    policy.stop("r")
    assert policy.exited("r", 1.0) is None
    assert policy.due(1000.0) == [] and policy.next_due() is None
    assert policy.nodes["r"].state is NodeState.STOPPED
    assert policy.start("r") is True
    policy.started("r", 1000.0)
    assert policy.start("r") is False  # already running
    assert policy.exited("r", 1000.1) == 1000.6  # a crash after the start: restarted again


def test_stopping_a_node_waiting_for_its_restart_cancels_it() -> None:
    policy = RestartPolicy(["r"])
    policy.started("r", 0.0)
    assert policy.exited("r", 1.0) == 1.5
    policy.stop("r")
    assert policy.due(2.0) == []
    assert policy.start("r") is True


def test_starting_a_node_by_hand_resets_its_backoff() -> None:
    policy = RestartPolicy(["r"])
    policy.started("r", 0.0)
    crash_loop(policy, "r", 5)
    policy.exited("r", 100.0)
    assert policy.start("r") is True
    policy.started("r", 101.0)
    assert policy.exited("r", 101.1) == 101.6


def test_no_restart_keeps_a_dead_node_dead() -> None:
    policy = RestartPolicy(["r", "p"], restart=False)
    policy.started("r", 0.0)
    assert policy.exited("r", 5.0) is None
    assert policy.nodes["r"].state is NodeState.DEAD
    assert policy.due(1e9) == []
    assert policy.start("r") is True  # by hand, it may still be started


events = st.lists(
    st.tuples(
        st.sampled_from(["exit", "stop", "start", "tick"]),
        st.sampled_from(["a", "b"]),
        st.floats(min_value=0, max_value=100),
    ),
    max_size=60,
)


@given(events, st.booleans())
def test_restart_times_stay_within_the_backoff_bounds(
    seq: list[tuple[str, str, float]], restart: bool
) -> None:
    backoff = Backoff()
    policy = RestartPolicy(["a", "b"], restart=restart, backoff=backoff)
    now = 0.0
    for name in policy.nodes:
        policy.started(name, now)
    for op, name, dt in seq:
        now += dt
        record = policy.nodes[name]
        if op == "exit" and record.state in (NodeState.RUNNING, NodeState.STOPPED):
            was = record.state
            at = policy.exited(name, now)
            if was is NodeState.STOPPED or not restart:
                assert at is None
            else:
                assert at is not None
                assert backoff.first_delay_s <= at - now <= backoff.max_delay_s
        elif op == "stop":
            policy.stop(name)
        elif op == "start" and policy.start(name):
            policy.started(name, now)
        for due in policy.due(now):
            assert restart
            assert policy.nodes[due].state is NodeState.BACKOFF
            policy.restarting(due, now)
        for r in policy.nodes.values():
            assert r.state is not NodeState.STOPPED or r.restart_at is None
            assert r.state is NodeState.BACKOFF or r.restart_at is None
