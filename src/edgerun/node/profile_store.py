"""Keep a POP's request profile across restarts: one file, replaced atomically.

The profile is written to a temporary file in the same folder, flushed to
disk, then renamed over the old one, so a crash mid-write leaves either the
previous profile or the new one, never half of each.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from edgerun.placement.profile import (
    DEFAULT_ALPHA,
    DEFAULT_CAPACITY,
    DEFAULT_SLOT_S,
    DEFAULT_SLOTS,
    WeeklyProfile,
)


def save(profile: WeeklyProfile, path: Path) -> None:
    """Write ``profile`` to ``path`` atomically (temp file + fsync + rename)."""
    data = profile.to_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
