"""A node's OpenAPI document lists exactly the routes it serves, invocations included."""

from __future__ import annotations

from typing import Any, cast

import pytest
import schemathesis

from edgerun.auth.guard import Need
from edgerun.node import admin
from edgerun.node.app import NodeApp
from edgerun.node.front import Front
from edgerun.node.invoke import Checked, Incoming, Origin, Reply
from edgerun.node.openapi import INVOCATION_ROUTES, openapi_document
from edgerun.openapi import operations

ROUTES = admin.api_routes(cast(NodeApp, None))
"""The table only binds handlers; none runs here."""


def test_every_route_is_documented_and_nothing_else() -> None:
    """A new admin route fails here until the document describes it; the invocation
    routes are served by Front outside the router, so they are listed by hand."""
    served = {(r.method, r.path) for r in ROUTES} | INVOCATION_ROUTES
    assert operations(openapi_document()) == served


def test_the_document_is_served_to_anyone() -> None:
    assert any(r.path == "/v1/openapi.json" and r.need is Need.PUBLIC for r in ROUTES)


def test_security_follows_what_each_route_needs() -> None:
    paths = openapi_document()["paths"]
    for r in ROUTES:
        security = paths[r.path][r.method.lower()]["security"]
        assert ({} in security) == (r.need is Need.PUBLIC), f"{r.method} {r.path}"
    assert {} in paths["/fn/{name}/{path}"]["get"]["security"]  # public functions
    assert {} not in paths["/v1/functions/{name}/invocations"]["post"]["security"]


def test_the_document_is_valid_openapi() -> None:
    schema = schemathesis.openapi.from_dict(openapi_document())
    loaded = [result.ok() for result in schema.get_all_operations()]
    assert len(loaded) == len(operations(openapi_document()))


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "path"), sorted(INVOCATION_ROUTES))
async def test_the_documented_invocation_routes_are_the_ones_front_invokes(
    method: str, path: str
) -> None:
    invoked: list[Incoming] = []

    def check(req: Incoming) -> Checked:
        return Checked(req.target, None, Origin("id", "", ""), None)

    async def invoke(req: Incoming, body: bytes, checked: Checked) -> Reply:
        invoked.append(req)
        return Reply(200, [], b"{}")

    async def fallback(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError(f"{method} {path} reached the router")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    front = Front(check, invoke, fallback, max_payload_bytes=1024, body_timeout_s=1.0)
    concrete = path.replace("{name}", "echo").replace("{path}", "a/b")
    scope = {"type": "http", "method": method, "path": concrete, "query_string": b"", "headers": []}
    await front(scope, receive, send)
    assert [r.target for r in invoked] == ["echo"]
