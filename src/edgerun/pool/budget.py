"""The memory budget a node's pools share.

A node with one worker process owns its whole budget (:class:`Budget`). A node
with N workers has N pools but one budget (:class:`SharedBudget`): each worker
publishes what it holds (sandboxes, zygotes, starts under way) into its own
slot of a small shared memory file, and a pool's free memory is the capacity
less every slot. Only starts change the charge, so the warm path reads the
slots (a few hundred nanoseconds) and never locks; a reservation checks and
charges under an ``flock`` (held for microseconds, released by the kernel if
its holder dies).

A worker can evict only its own idle sandboxes. When it finds no room it posts
*pressure* (how many MB it misses and below which eviction value others may
evict for it); the first other worker whose reliever tick takes it evicts its
least valuable idle sandboxes to match, and posts again what it could not
free. That is the one cross-worker step, and it happens on a 50 ms tick, never
inside a request. The lock is only tried for LOCK_WAIT_S: a stalled holder
means "no room now" for the others, never a frozen event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import mmap
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

_MAGIC = 0x45524255  # "ERBU"
_HEADER = struct.Struct("<IIqdd")  # magic, slots, pressure_mb, pressure_below, pressure_at
_SLOT = struct.Struct("<qq")  # pid, charged_mb
PRESSURE_TTL_S = 1.0
"""Pressure nobody renews is forgotten (its asker got room, gave up or died)."""
LOCK_WAIT_S = 0.02
OTHERS_TTL_S = 0.001
"""The other workers' total is re-read at most this often on the warm path (summing
64 slots per request would cost more than the rest of the decision); always fresh
under the lock, where a reservation decides."""


class BudgetBusy(LookupError):
    """Another worker held the budget's lock too long: no room, for now (look again)."""


class Budget:
    """One worker's budget: the whole capacity, nobody else charging it."""

    def __init__(self, capacity_mb: int) -> None:
        self.capacity_mb = capacity_mb

    def others_mb(self) -> int:
        """What the node's other workers hold."""
        return 0

    def publish(self, mine_mb: int) -> None:
        """Tell the other workers what this one holds now."""

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Check-and-charge without another worker doing the same meanwhile."""
        yield

    @property
    def shared(self) -> bool:
        return False

    def ask_room(self, short_mb: int, evict_below: float | None) -> None:
        """This worker misses ``short_mb``: others may evict idle sandboxes for it."""

    def pressure(self) -> tuple[int, float | None] | None:
        """What another worker asked to be freed, and below which value (None: any)."""
        return None

    def take_pressure(self) -> tuple[int, float | None] | None:
        """Take what another worker asked to be freed, so that no other worker frees
        it too (whatever this one cannot free, it asks for again)."""
        return None

    def slots(self) -> list[tuple[int, int]]:
        """(pid, charged MB) of each worker."""
        return []

    def engine_mb(self) -> int:
        """What the node's shared sandbox engine holds (zygotes), when it has one."""
        return 0


class SharedBudget(Budget):
    """The budget of a node whose workers are separate processes (see module doc)."""

    def __init__(self, path: Path, slot: int) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            self._map = mmap.mmap(self._fd, 0)
        except BaseException:
            os.close(self._fd)
            raise
        magic, count, _mb, _below, _at = _HEADER.unpack_from(self._map, 0)
        if magic != _MAGIC or not 0 <= slot < count:
            self.close()
            raise ValueError(f"{path} is no budget file with a slot {slot}")
        capacity = struct.unpack_from("<q", self._map, _HEADER.size + count * _SLOT.size)[0]
        super().__init__(int(capacity))
        self.slot = slot
        self._count = count
        self._mine = -1
        self._offsets = [_HEADER.size + i * _SLOT.size for i in range(count)]
        self._engine = self._offsets[-1] + 8
        """The last slot is the shared engine's (its zygotes), not a worker's."""
        self._workers = [off for i, off in enumerate(self._offsets[:-1]) if i != slot]
        self._others = 0
        self._others_at = -math.inf
        self._locked = False
        _SLOT.pack_into(self._map, self._offsets[slot], os.getpid(), 0)

    @staticmethod
    def create(path: Path, capacity_mb: int, workers: int) -> None:
        """Lay out a fresh budget file (the supervisor, before it starts workers):
        a slot per worker and one for the engine (slot ``workers``)."""
        size = _HEADER.size + (workers + 1) * _SLOT.size + 8
        data = bytearray(size)
        _HEADER.pack_into(data, 0, _MAGIC, workers + 1, 0, math.inf, 0.0)
        struct.pack_into("<q", data, size - 8, capacity_mb)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, bytes(data))
        finally:
            os.close(fd)
        os.replace(tmp, path)

    @staticmethod
    def clear_slot(path: Path, slot: int) -> None:
        """Forget a dead worker's charge (its sandboxes died with it)."""
        with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
            _SLOT.pack_into(m, _HEADER.size + slot * _SLOT.size, 0, 0)

    @property
    def shared(self) -> bool:
        return True

    def others_mb(self) -> int:
        now = time.monotonic()
        if not self._locked and now - self._others_at < OTHERS_TTL_S:
            return self._others
        m, unpack = self._map, _SLOT.unpack_from
        self._others = sum(unpack(m, off)[1] for off in self._workers)
        self._others_at = now
        return self._others

    def engine_mb(self) -> int:
        return int(struct.unpack_from("<q", self._map, self._engine)[0])

    def publish(self, mine_mb: int) -> None:
        if mine_mb != self._mine:
            self._mine = mine_mb
            struct.pack_into("<q", self._map, self._offsets[self.slot] + 8, mine_mb)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Held for microseconds; a holder that stalls (stopped, swapping) makes the
        others give up after LOCK_WAIT_S rather than freeze their event loops."""
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BudgetBusy(0) from None
                time.sleep(0.0002)
        self._locked = True
        try:
            yield
        finally:
            self._locked = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def ask_room(self, short_mb: int, evict_below: float | None) -> None:
        below = math.inf if evict_below is None else evict_below
        with contextlib.suppress(BudgetBusy), self.exclusive():
            _m, mb, old_below, at = _HEADER.unpack_from(self._map, 0)[1:]
            if time.monotonic() - at > PRESSURE_TTL_S:
                mb, old_below = 0, -math.inf
            struct.pack_into(
                "<qdd", self._map, 8, max(mb, short_mb), max(old_below, below), time.monotonic()
            )

    def pressure(self) -> tuple[int, float | None] | None:
        mb, below, at = struct.unpack_from("<qdd", self._map, 8)
        if mb <= 0 or time.monotonic() - at > PRESSURE_TTL_S:
            return None
        return int(mb), None if math.isinf(below) else below

    def take_pressure(self) -> tuple[int, float | None] | None:
        try:
            with self.exclusive():
                asked = self.pressure()
                if asked is not None:
                    struct.pack_into("<q", self._map, 8, 0)
                return asked
        except BudgetBusy:
            return None

    def slots(self) -> list[tuple[int, int]]:
        return [_SLOT.unpack_from(self._map, off) for off in self._offsets[:-1]]

    def close(self) -> None:
        with contextlib.suppress(BufferError, ValueError):
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)
