"""Per-function uids: distinct, stable, bounded."""

from pathlib import Path

import pytest

from edgerun.sandbox.uids import UidMap


def test_each_function_gets_its_own_uid(tmp_path: Path) -> None:
    uids = UidMap(tmp_path / "u.json", 1000, 10)

    assert uids.uid_for("a") != uids.uid_for("b")


def test_uids_survive_a_restart(tmp_path: Path) -> None:
    first = UidMap(tmp_path / "u.json", 1000, 10).uid_for("b")

    assert UidMap(tmp_path / "u.json", 1000, 10).uid_for("b") == first


def test_an_exhausted_range_is_an_error(tmp_path: Path) -> None:
    uids = UidMap(tmp_path / "u.json", 1000, 1)
    uids.uid_for("a")

    with pytest.raises(RuntimeError, match="exhausted"):
        uids.uid_for("b")
