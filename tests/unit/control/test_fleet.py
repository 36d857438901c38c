"""Node liveness from heartbeats."""

from __future__ import annotations

import pytest

from edgerun.control.fleet import Fleet, check_heartbeat, url_points_at
from edgerun.errors import ApiError
from edgerun.models import Heartbeat


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def beat(**kw: object) -> Heartbeat:
    return Heartbeat(**{"url": "http://127.0.0.1:8720", "role": "pop", **kw})  # type: ignore[arg-type]


def test_a_node_that_never_beat_is_unknown() -> None:
    assert Fleet().view("k1")["state"] == "unknown"


def test_a_node_is_up_while_it_beats_and_down_after_three_missed_beats() -> None:
    clock = Clock()
    fleet = Fleet(clock)
    fleet.beat("k1", beat(interval_s=5.0))
    clock.now += 15.0
    assert fleet.view("k1")["state"] == "up"
    clock.now += 0.1
    assert fleet.view("k1")["state"] == "down"
    fleet.beat("k1", beat(interval_s=5.0))
    assert fleet.view("k1")["state"] == "up"


def test_the_view_carries_the_url_role_and_revision() -> None:
    fleet = Fleet(Clock())
    fleet.beat("k1", beat(revision=7, role="region"))
    view = fleet.view("k1")
    assert (view["url"], view["role"], view["revision"]) == ("http://127.0.0.1:8720", "region", 7)


@pytest.mark.parametrize(
    "bad",
    [
        {"url": "file:///etc/passwd"},
        {"url": "http://"},
        {"url": "http://h/" + "a" * 3000},
        {"role": "control"},
        {"revision": -1},
        {"workers": 0},
        {"interval_s": 0.0},
        {"interval_s": 3600.0},
    ],
)
def test_a_heartbeat_that_cannot_be_a_nodes_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ApiError) as err:
        check_heartbeat(beat(**bad))
    assert err.value.status == 400


def test_a_forgotten_node_is_unknown_again() -> None:
    fleet = Fleet(Clock())
    fleet.beat("k1", beat())
    fleet.forget("k1")
    assert fleet.view("k1")["state"] == "unknown"


@pytest.mark.parametrize(
    ("url", "peer", "ok"),
    [
        ("http://127.0.0.1:8720", "127.0.0.1", True),
        ("http://localhost:8720", "127.0.0.1", True),
        ("http://127.0.0.2:8720", "127.0.0.1", False),
        ("http://10.1.2.3:8720", "127.0.0.1", False),
        ("http://no-such-host.invalid:8720", "127.0.0.1", False),
        ("http://127.0.0.1:8720", "", False),
    ],
)
@pytest.mark.anyio
async def test_a_node_may_only_advertise_its_own_address(url: str, peer: str, ok: bool) -> None:
    assert await url_points_at(url, peer) is ok
