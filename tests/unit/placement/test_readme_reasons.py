"""The README's table of placement reasons is the one the code generates."""

from __future__ import annotations

from tests.conftest import ROOT

from edgerun.placement import reasons_table


def test_readme_lists_every_reason_with_its_meaning() -> None:
    readme = (ROOT / "README.md").read_text()
    assert reasons_table() in readme
