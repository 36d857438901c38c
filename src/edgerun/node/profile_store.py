"""Keep a POP's request profile across restarts: one file, replaced atomically.

The profile is written with :func:`edgerun.files.write_atomic` (durably), so a
crash mid-write leaves either the previous profile or the new one.
"""

from __future__ import annotations

from pathlib import Path

from edgerun.files import write_atomic
from edgerun.placement.profile import (
    DEFAULT_ALPHA,
    DEFAULT_CAPACITY,
    DEFAULT_SLOT_S,
    DEFAULT_SLOTS,
    WeeklyProfile,
)


def save(profile: WeeklyProfile, path: Path) -> None:
    """Write ``profile`` to ``path`` atomically and durably."""
    write(profile.to_bytes(), path)


def write(data: bytes, path: Path) -> None:
    """Write a serialised profile (``WeeklyProfile.to_bytes``): the node serialises
    on its event loop, where the profile changes, and writes in a thread."""
    write_atomic(path, data, durable=True)


def load(
    path: Path,
    *,
    slot_s: float | None = None,
    slots: int | None = None,
    alpha: float | None = None,
    capacity: int | None = None,
) -> WeeklyProfile:
    """The profile saved at ``path``, or an empty one (with these settings) if
    there is none yet.

    Raises ValueError when the file is corrupt or was recorded with other
    slot settings: the caller logs it and starts with an empty profile.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return WeeklyProfile(
            slot_s=DEFAULT_SLOT_S if slot_s is None else slot_s,
            slots=DEFAULT_SLOTS if slots is None else slots,
            alpha=DEFAULT_ALPHA if alpha is None else alpha,
            capacity=DEFAULT_CAPACITY if capacity is None else capacity,
        )
    return WeeklyProfile.from_bytes(
        data, slot_s=slot_s, slots=slots, alpha=alpha, capacity=capacity
    )
