"""When ``edgerun up`` restarts a node that exited: a pure policy (no I/O, no clock).

The caller tells :class:`RestartPolicy` what happened (a node started, exited,
was stopped or started by the user) and when, and asks which nodes are due for
a restart at a given time. A node that keeps dying waits longer each time
(``first_delay_s`` doubling up to ``max_delay_s``); one that stayed up
``reset_after_s`` starts again from the first delay. A node the user stopped
stays stopped until the user starts it; with ``restart=False`` (``edgerun up
--no-restart``) a node that exits stays down.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class NodeState(StrEnum):
    RUNNING = "running"
    BACKOFF = "restarting"  # exited; restarted at ``restart_at``
    STOPPED = "stopped"  # stopped by the user (or exiting because of it)
    DEAD = "dead"  # exited and not restarted (--no-restart)


@dataclass
class NodeRecord:
    state: NodeState = NodeState.RUNNING
    started_at: float = 0.0
    restart_at: float | None = None
    quick_exits: int = 0  # exits in a row, each before reset_after_s of uptime
    restarts: int = 0  # restarts by the policy (not by the user)


@dataclass(frozen=True)
class Backoff:
    first_delay_s: float = 0.5
    max_delay_s: float = 10.0
    reset_after_s: float = 30.0

    def delay(self, quick_exits: int) -> float:
        """The wait before restart after the ``quick_exits``-th exit in a row (1, 2, ...)."""
        exponent = min(max(quick_exits - 1, 0), 64)
        return float(min(self.max_delay_s, self.first_delay_s * 2.0**exponent))


class RestartPolicy:
    def __init__(self, names: list[str], *, restart: bool = True, backoff: Backoff = Backoff()):
        self.restart = restart
        self.backoff = backoff
        self.nodes = {name: NodeRecord() for name in names}

    def started(self, name: str, now: float) -> None:
        """A process for ``name`` was started (by the caller, at ``now``)."""
        record = self.nodes[name]
        record.state = NodeState.RUNNING
        record.started_at = now
        record.restart_at = None

    def exited(self, name: str, now: float) -> float | None:
        """``name``'s process exited at ``now``: when to start it again (None: not)."""
        record = self.nodes[name]
        if record.state is NodeState.STOPPED:
            return None  # the user stopped it: expected, and it stays down
        if now - record.started_at >= self.backoff.reset_after_s:
            record.quick_exits = 0
        record.quick_exits += 1
        if not self.restart:
            record.state = NodeState.DEAD
            record.restart_at = None
            return None
        record.state = NodeState.BACKOFF
        record.restart_at = now + self.backoff.delay(record.quick_exits)
        return record.restart_at

    def stop(self, name: str) -> None:
        """The user stops ``name``: no restart until :meth:`start`."""
        record = self.nodes[name]
        record.state = NodeState.STOPPED
        record.restart_at = None

    def start(self, name: str) -> bool:
        """The user starts ``name``: True when the caller should start a process now
        (it is not running); the backoff starts over."""
        record = self.nodes[name]
        if record.state is NodeState.RUNNING:
            return False
        record.quick_exits = 0
        record.restart_at = None
        return True

    def due(self, now: float) -> list[str]:
        """Nodes whose restart is due at ``now``; the caller starts them and says so
        with :meth:`started`."""
        return [
            name
            for name, r in self.nodes.items()
            if r.state is NodeState.BACKOFF and r.restart_at is not None and r.restart_at <= now
        ]

    def restarting(self, name: str, now: float) -> None:
        """The caller restarts ``name`` as :meth:`due` said."""
        self.nodes[name].restarts += 1
        self.started(name, now)

    def next_due(self) -> float | None:
        times = [r.restart_at for r in self.nodes.values() if r.restart_at is not None]
        return min(times) if times else None
