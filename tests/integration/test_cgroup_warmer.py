"""The cgroup MigrationWarmer on the real cgroup v1 tree: it moves while sandboxes
start, parks (back in its own cgroup) once they stop, and leaves nothing behind."""

from __future__ import annotations

import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edgerun.sandbox.cgroups import Cgroups, MigrationWarmer

pytestmark = pytest.mark.skipif(
    sys.platform != "linux"
    or os.geteuid() != 0
    or not Path("/sys/fs/cgroup/freezer").is_dir()
    or Path("/sys/fs/cgroup/cgroup.controllers").exists(),
    reason="needs root and cgroup v1 with a freezer",
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def cgroups() -> Iterator[Cgroups]:
    cg = Cgroups(f"warmer-test-{os.getpid()}-{secrets.token_hex(3)}")
    assert cg.version == 1
    yield cg
    cg.remove_all()


def thread_of(warmer: MigrationWarmer) -> int:
    thread = warmer._thread  # the one thing the test inspects: where that thread is
    assert thread.native_id is not None
    return thread.native_id


def freezer_of(tid: int) -> str:
    for line in Path(f"/proc/self/task/{tid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "freezer" in controllers.split(","):
            return path
    raise AssertionError("no freezer line")


def test_it_moves_only_while_sandboxes_start_and_parks_at_home(cgroups: Cgroups) -> None:
    clock = Clock()
    home = freezer_of(threading.get_native_id())
    warmer = cgroups.warmer(interval_s=0.005, window_s=60.0)
    assert warmer is not None
    warmer._clock = clock  # a fake clock decides when the window ends
    try:
        assert warmer.moves == 0 and not warmer.active
        warmer.touch()
        wait_until(lambda: warmer.moves >= 5, "the warmer to move")
        assert freezer_of(thread_of(warmer)).endswith(("/warm-a", "/warm-b"))
        clock.now += 61.0
        wait_until(lambda: freezer_of(thread_of(warmer)) == home, "the warmer to park at home")
        parked = warmer.moves
        time.sleep(0.05)  # parked: no move however long it waits
        assert warmer.moves == parked
    finally:
        warmer.close()


def test_closing_leaves_the_node_subtree_removable_with_the_node_alive(cgroups: Cgroups) -> None:
    warmer = cgroups.warmer(interval_s=0.005)
    assert warmer is not None
    warmer.touch()
    wait_until(lambda: warmer.moves >= 2, "the warmer to move")
    warmer.close()
    assert not warmer._thread.is_alive()
    subtree = cgroups.freezer_dir
    assert subtree is not None
    cgroups.remove_all()  # kills every task left in the subtree: none may be ours
    assert not subtree.exists()


def test_removing_the_subtree_with_the_warmer_inside_spares_the_node(cgroups: Cgroups) -> None:
    """Even if the warmer could not leave in time, cleanup never kills the node itself
    (were it killed, this test process would die with it)."""
    warmer = cgroups.warmer(interval_s=0.005)
    assert warmer is not None
    warmer.touch()
    wait_until(lambda: warmer.moves >= 2, "the warmer to move")
    cgroups.remove_all()  # the warmer's thread is in warm-a or warm-b right now
    warmer.close()
    assert not warmer._thread.is_alive()


def test_cgroup_v2_and_no_freezer_get_no_warmer(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("memory pids cpu")
    assert Cgroups("v2-test", root=tmp_path).warmer() is None
