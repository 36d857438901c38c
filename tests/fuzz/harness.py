"""Fuzzing the served OpenAPI documents with schemathesis, shared by the CI test
(``tests/fuzz/test_api_fuzz.py``) and the bench (``bench/fuzz_api.py``).

A real cluster is started with a few real things in it (functions, an alias,
a secret, a tenant with a key, a spare key and node credential), and every
operation of the control plane's and a POP's served document is fuzzed with
positive and negative cases, as the cluster admin, as a tenant's key and
anonymously. Generated names are random, so part of the cases pin path and
query parameters to those real things: otherwise almost nothing would get
past a 404.

Every answer must be: not a 5xx, a documented status, of the documented
content type, matching the documented schema (headers too), and, when it is
an error, JSON of the shape ``{"error": {"type", "message"}}``. Failures are
collected (one example per operation and kind), not raised mid-run, so one
run reports all of them.

The cluster is shared by every case, so cases that would destroy what the
others need (revoking the admin's or a node's key, deleting the deployed
functions) are rejected before they are sent; everything else, including
creating keys and tenants and revoking the spare ones, is sent as generated.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from edgerun.client import Client
from edgerun.cluster import LocalCluster
from tests.conftest import FUNCTIONS
from tests.integration.conftest import deploy_folder, node_knows, start_cluster, wait_for

ECHO, TENANT_ECHO = "echo", "acme.echo"
TENANT = "acme"
ALIAS = "prod"
SECRET = "API_TOKEN"
REQUEST_TIMEOUT_S = 30.0

# Bundles are uploaded as raw bytes, as any binary body is.
schemathesis.serializer.alias("application/zip", "application/octet-stream")


@dataclass(frozen=True)
class Known:
    """Real values on the fuzzed cluster, for pinned parameters."""

    functions: tuple[str, ...]
    bundle: str
    version: str
    request_id: str
    scratch_key: str
    """A default-tenant key nothing uses: revoking it is fine."""
    spare_node: str
    """A node credential no node uses: revoking it is fine."""
    protected_keys: frozenset[str]
    """Ids of the keys the run needs (the admin's, the tenant's, the nodes')."""


@dataclass(frozen=True)
class Identity:
    name: str
    headers: dict[str, str]


@dataclass
class Fuzzed:
    """A running cluster ready to fuzz, and who to fuzz it as."""

    cluster: LocalCluster
    known: Known
    identities: list[Identity]
    targets: dict[str, str]
    """Target name (``control``, ``pop``) -> base URL."""


@dataclass
class Tally:
    """What a run sent and what came back; failures keyed by operation and kind."""

    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    per_operation: Counter[str] = field(default_factory=Counter)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def merge(self, other: Tally) -> None:
        self.cases += other.cases
        self.statuses.update(other.statuses)
        self.per_operation.update(other.per_operation)
        for key, example in other.failures.items():
            self.failures.setdefault(key, example)
        self.seconds += other.seconds

    def summary(self) -> dict[str, Any]:
        return {
            "cases": self.cases,
            "server_errors": self.server_errors,
            "failures": len(self.failures),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "seconds": round(self.seconds, 1),
        }

    def report(self) -> str:
        return "\n\n".join(
            f"{op}: {kind}\n{example}" for (op, kind), example in self.failures.items()
        )


# --- the cluster --------------------------------------------------------------------


def start(root: Path) -> Fuzzed:
    """A cluster with real things in it; stop it with ``.cluster.stop()``."""
    cluster = start_cluster(root)
    try:
        return _populate(cluster)
    except BaseException:
        cluster.stop()
        raise


def _populate(cluster: LocalCluster) -> Fuzzed:
    admin = {"authorization": f"Bearer {cluster.token}"}
    pop = cluster.url("pop-1")
    with (
        Client(cluster.control_url, cluster.token) as client,
        httpx.Client(base_url=cluster.control_url, headers=admin, timeout=30) as http,
    ):
        client.create_tenant(TENANT)
        version = deploy_folder(client, ECHO, FUNCTIONS / "echo", handler="main.handler")
        # A key-only function with a rate limit: 401s, 403s and 429s on the invoke path.
        tenant_version = deploy_folder(
            client,
            TENANT_ECHO,
            FUNCTIONS / "echo",
            handler="main.handler",
            auth="key",
            rate_per_s=5.0,
        )
        client.set_alias(ECHO, ALIAS, version)
        http.put(
            f"/v1/functions/{ECHO}/secrets/{SECRET}", json={"value": "s3cret"}
        ).raise_for_status()
        bundle = client.get(ECHO).versions[version].bundle_sha256
        tenant_key = client.create_key(["read", "invoke"], tenant=TENANT, name="fuzz tenant")
        scratch = client.create_key(["read"], name="fuzz scratch")
        token = client.join_token("pop", "fuzz-spare")["token"]
        spare = httpx.post(f"{cluster.control_url}/v1/nodes/join", json={"token": token})
        spare.raise_for_status()
        nodes = {n["id"] for n in client.nodes()}
    for name, vid in ((ECHO, version), (TENANT_ECHO, tenant_version)):
        for node in ("pop-1", "region-1", "region-2"):
            wait_for(node_knows(cluster, node, name, vid), what=f"{node} to learn {name}")
    first = httpx.post(f"{pop}/v1/functions/{ECHO}/invocations", json={}, headers=admin, timeout=30)
    first.raise_for_status()
    known = Known(
        functions=(ECHO, TENANT_ECHO),
        bundle=bundle,
        version=version,
        request_id=first.headers["x-edgerun-request-id"],
        scratch_key=scratch["id"],
        spare_node=spare.json()["key_id"],
        protected_keys=frozenset({"admin", tenant_key["id"], *nodes} - {spare.json()["key_id"]}),
    )
    identities = [
        Identity("admin", admin),
        Identity("tenant", {"authorization": f"Bearer {tenant_key['secret']}"}),
        Identity("anonymous", {}),
    ]
    return Fuzzed(cluster, known, identities, {"control": cluster.control_url, "pop": pop})


# --- checks -------------------------------------------------------------------------


def json_errors(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case
) -> bool:
    """Every failure is a JSON 4xx with ``{"error": {"type": str, "message": str}}``
    (the functions fuzzed never answer an error of their own)."""
    status = response.status_code
    if status < 400:
        return True
    assert status < 500, f"answered {status}: a server error"
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.split(";")[0].strip() == "application/json", (
        f"a {status} answered with content-type {content_type!r}, not JSON"
    )
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(
            f"a {status} whose body is not JSON: {response.content[:200]!r}"
        ) from None
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"a {status} whose body has no 'error' object: {body!r:.200}"
    assert isinstance(error.get("type"), str) and isinstance(error.get("message"), str), (
        f"a {status} whose error lacks a string 'type' or 'message': {error!r:.200}"
    )
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    json_errors,
]


# --- generating cases ---------------------------------------------------------------


def load(url: str) -> Any:
    """The served document at ``url``, as schemathesis reads it."""
    return schemathesis.openapi.from_url(f"{url}/v1/openapi.json")


def operations(schema: Any) -> Iterator[Any]:
    for result in schema.get_all_operations():
        yield result.ok()


def _names(op: Any, location: str) -> set[str]:
    return {p.name for p in getattr(op, location)}


def _pins(op: Any, known: Known) -> list[dict[str, Any]]:
    """Keyword arguments of ``as_strategy`` that aim cases at real things."""
    path = _names(op, "path_parameters")
    query = _names(op, "query")
    pins: list[dict[str, Any]] = []
    names = [*known.functions]
    if op.path.startswith("/fn/") or op.path.endswith("/invocations"):
        names += [f"{ECHO}@{ALIAS}", f"{ECHO}@{known.version[:12]}"]
    for fn in names if "name" in path else []:
        pinned: dict[str, Any] = {"name": fn}
        if "alias" in path:
            pinned["alias"] = ALIAS
        if "key" in path:
            pinned["key"] = SECRET
        pins.append({"path_parameters": pinned})
    if "sha" in path:
        pins.append({"path_parameters": {"sha": known.bundle}})
    if "key_id" in path:
        spare = known.spare_node if op.path.startswith("/v1/nodes/") else known.scratch_key
        pins.append({"path_parameters": {"key_id": spare}})
    if "tenant" in path or "tenant" in query:
        where = "path_parameters" if "tenant" in path else "query"
        pins.append({where: {"tenant": TENANT}})
    if "function" in query:
        pins += [{"query": {"function": fn}} for fn in known.functions]
    if "request_id" in query:
        pins.append({"query": {"request_id": known.request_id}})
    if op.path == "/v1/admin/prewarm":
        pins += [{"body": {"function": fn, "count": 1}} for fn in known.functions]
    return pins


def strategy(op: Any, known: Known) -> st.SearchStrategy[Case]:
    """Positive and negative cases, half of them with parameters pinned to real things."""
    free = [op.as_strategy(generation_mode=mode) for mode in GenerationMode]
    pinned = [
        op.as_strategy(generation_mode=mode, **pin)
        for pin in _pins(op, known)
        for mode in GenerationMode
    ]
    if not pinned:
        return st.one_of(free)
    return st.one_of(st.one_of(free), st.one_of(pinned))


def _harmless(case: Case, known: Known) -> bool:
    """False for a case that would break the shared cluster: revoking a key the run
    needs, or deleting a deployed function. Path parameters are matched as substrings,
    so no encoding or dot-segment trick reaches them either."""
    if case.method.upper() != "DELETE":
        return True
    values = " ".join(str(v) for v in (case.path_parameters or {}).values())
    if any(key in values for key in known.protected_keys):
        return False
    return not (case.path == "/v1/functions/{name}" and any(f in values for f in known.functions))


def _bounded(case: Case) -> None:
    """A change-feed long-poll holds its request up to 60 s when nothing changed:
    waits are exercised by the integration tests; here a valid one becomes 0."""
    query = case.query
    if case.path == "/v1/changes" and query and "wait" in query:
        wait = str(query["wait"])
        if wait.isascii() and wait.isdigit():
            query["wait"] = 0


MUTATIONS = st.tuples(
    st.integers(min_value=0),
    st.binary(min_size=1, max_size=8),
    st.booleans(),
    st.sampled_from([1, 1, 1, 1, 700, 3000]),
)
"""Where to put which bytes into a request body, whether they replace or are inserted,
and how many times (now and then enough to pass a route's body limit)."""


def _mutate(kwargs: dict[str, Any], mutation: tuple[int, bytes, bool, int]) -> bytes | None:
    """Put a few random bytes into the body ``kwargs`` would send, as a byte-level fuzzer
    would: invalid UTF-8, broken JSON, a zip cut short. None when there is no body."""
    if "json" in kwargs:
        raw = json.dumps(kwargs.pop("json"), ensure_ascii=False).encode("utf-8", "surrogatepass")
    elif isinstance(kwargs.get("data"), bytes | str):
        data = kwargs.pop("data")
        raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
    else:
        return None
    at, chunk, replace, times = mutation
    chunk *= times
    at %= len(raw) + 1
    raw = raw[:at] + chunk + raw[at + (len(chunk) if replace else 0) :]
    kwargs["data"] = raw
    return raw


def fuzz_operation(
    op: Any,
    base_url: str,
    identity: Identity,
    known: Known,
    *,
    examples: int,
    session: requests.Session,
    tally: Tally,
    seed: int | None = None,
) -> None:
    """Send up to ``examples`` generated cases of ``op`` and check every answer.

    A quarter of the cases with a body have a few of its bytes mutated: schemathesis
    only sends well-formed bodies, and what a server does with malformed ones matters."""
    mutations = st.one_of(st.none(), st.none(), st.none(), MUTATIONS)

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy(op, known), mutation=mutations)
    def run(case: Case, mutation: tuple[int, bytes, bool, int] | None) -> None:
        if identity.name == "admin" and not _harmless(case, known):
            reject()
        _bounded(case)
        raw = None
        if mutation is None:
            response: Any = case.call(
                base_url=base_url,
                session=session,
                headers=identity.headers,
                timeout=REQUEST_TIMEOUT_S,
            )
        else:
            kwargs = case.as_transport_kwargs(base_url=base_url, headers=identity.headers)
            raw = _mutate(kwargs, mutation)
            if raw is None:
                reject()
            response = session.request(**kwargs, timeout=REQUEST_TIMEOUT_S)
        tally.cases += 1
        tally.statuses[response.status_code] += 1
        tally.per_operation[f"{identity.name} {op.label}"] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=identity.headers)
        except (FailureGroup, AssertionError) as exc:
            example = str(exc) if raw is None else f"{exc}\nwith the body mutated to {raw!r:.500}"
            tally.failures.setdefault((f"{identity.name} {op.label}", _kind(exc)), example)

    if seed is not None:
        run = hypothesis.seed(seed)(run)
    run()


def _kind(exc: FailureGroup | AssertionError) -> str:
    """One line naming the kind of failure, so repeats of it are counted once."""
    failures = getattr(exc, "exceptions", None) or [exc]
    titles = sorted({getattr(f, "title", type(f).__name__) for f in failures})
    return ", ".join(titles)


def fuzz(
    fuzzed: Fuzzed,
    target: str,
    identity: Identity,
    *,
    examples: int,
    seed: int | None = None,
    on_operation: Callable[[str, Tally], None] | None = None,
) -> Tally:
    """Fuzz every operation of ``target``'s served document as ``identity``."""
    base_url = fuzzed.targets[target]
    schema = load(base_url)
    tally = Tally()
    started = time.monotonic()
    with requests.Session() as session:
        for op in operations(schema):
            part = Tally()
            t0 = time.monotonic()
            fuzz_operation(
                op,
                base_url,
                identity,
                fuzzed.known,
                examples=examples,
                session=session,
                tally=part,
                seed=seed,
            )
            part.seconds = time.monotonic() - t0
            tally.merge(part)
            if on_operation is not None:
                on_operation(f"{target} {identity.name} {op.label}", part)
    tally.seconds = time.monotonic() - started
    return tally
