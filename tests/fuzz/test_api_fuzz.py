"""Fuzz the served OpenAPI documents of the control plane and a POP (see harness.py).

Part of the normal run: at least 2,000 generated cases in all, as the cluster
admin, as a tenant's key and anonymously, and every answer must be a documented
status, content type and schema, never a 5xx, and every error a JSON 4xx.
``bench/fuzz_api.py`` runs the same with many more cases. ``EDGERUN_FUZZ_SEED``
fixes Hypothesis's seed (to replay a run); by default each run explores anew.
"""

from __future__ import annotations

import os

import pytest

from tests.fuzz import conftest, harness

pytestmark = [pytest.mark.integration, pytest.mark.fuzz]

EXAMPLES = 25
"""Cases per operation and identity (fewer for operations without parameters)."""
AT_LEAST = {"control": 450, "pop": 230}
"""Cases each identity must have sent to a target: 3 x (450 + 230) = 2,040 in all."""
_SEED = os.environ.get("EDGERUN_FUZZ_SEED")


@pytest.mark.parametrize("identity", ["admin", "tenant", "anonymous"])
@pytest.mark.parametrize("target", ["control", "pop"])
def test_served_document_holds_for_every_answer(
    fuzzed: harness.Fuzzed, target: str, identity: str
) -> None:
    who = next(i for i in fuzzed.identities if i.name == identity)
    tally = harness.fuzz(fuzzed, target, who, examples=EXAMPLES, seed=int(_SEED) if _SEED else None)
    conftest.TOTAL.merge(tally)
    conftest.RUNS[f"{target} {identity}"] = tally.summary()
    print(f"{target} {identity}: {tally.summary()}")
    assert not tally.failures, f"{len(tally.failures)} kind(s) of failure:\n\n{tally.report()}"
    assert tally.server_errors == 0
    assert tally.cases >= AT_LEAST[target], f"only {tally.cases} cases ran"
