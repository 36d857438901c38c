"""The OpenAPI 3.1 document of the control API, derived from the msgspec models."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import msgspec

from edgerun import __version__
from edgerun.models import AliasRequest, DeployRequest, FunctionRecord

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    body: Any = None,
    params: Sequence[str] = (),
    query: dict[str, str] | None = None,
    public: bool = False,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            **ok,
            "400": _json(_ERROR, "Malformed request"),
            "404": _json(_ERROR, "Not found"),
        },
        "parameters": [
            {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in params
        ]
        + [
            {
                "name": k,
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": d,
            }
            for k, d in (query or {}).items()
        ],
    }
    if not public:
        op["security"] = [{"bearer": []}]
        op["responses"]["401"] = _json(_ERROR, "Missing token")
        op["responses"]["403"] = _json(_ERROR, "Wrong token")
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    return op


@cache
def openapi_document() -> dict[str, Any]:
    (record, deploy, alias), components = msgspec.json.schema_components(
        [FunctionRecord, DeployRequest, AliasRequest], ref_template="#/components/schemas/{name}"
    )
    components["Error"] = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                "required": ["type", "message"],
            }
        },
        "required": ["error"],
    }
    obj = {"type": "object"}
    fn = ["name"]
    paths = {
        "/v1/health": {
            "get": _op("Liveness and registry revision", {"200": _json(obj, "OK")}, public=True)
        },
        "/v1/openapi.json": {"get": _op("This document", {"200": _json(obj, "OK")}, public=True)},
        "/v1/bundles": {
            "post": _op(
                "Upload a bundle (zip); answers its sha256",
                {"201": _json(obj, "Stored"), "413": _json(_ERROR, "Too large")},
                body={"application/zip": {"schema": {"type": "string", "format": "binary"}}},
            )
        },
        "/v1/bundles/{sha}": {
            "get": _op(
                "Download a bundle by hash",
                {"200": {"description": "The zip", "content": {"application/zip": {}}}},
                params=["sha"],
            )
        },
        "/v1/functions": {
            "get": _op(
                "List functions, paginated by name",
                {"200": _json(obj, "A page of functions and the cursor of the next")},
                query={"limit": "page size, 1-1000", "after": "cursor: the last name seen"},
            )
        },
        "/v1/functions/{name}": {
            "get": _op("Get a function", {"200": _json(record, "The function")}, params=fn),
            "put": _op(
                "Create or update a function from an uploaded bundle and a config",
                {"200": _json(record, "Updated"), "201": _json(record, "Created")},
                body={"application/json": {"schema": deploy}},
                params=fn,
            ),
            "delete": _op("Delete a function", {"200": _json(obj, "Deleted")}, params=fn),
        },
        "/v1/functions/{name}/versions": {
            "get": _op(
                "List a function's versions, their aliases and why each is retained",
                {"200": _json(obj, "Versions")},
                params=fn,
            )
        },
        "/v1/functions/{name}/aliases/{alias}": {
            "put": _op(
                "Point an alias at a version (rollback = move an alias)",
                {"200": _json(record, "The function")},
                body={"application/json": {"schema": alias}},
                params=[*fn, "alias"],
            ),
            "delete": _op(
                "Delete an alias", {"200": _json(record, "The function")}, params=[*fn, "alias"]
            ),
        },
        "/v1/admin/gc": {
            "post": _op(
                "Collect now: versions neither aliased nor among the newest N, and their"
                " bundles once nothing refers to them",
                {"200": _json(obj, "The removed versions and bundles")},
            )
        },
        "/v1/changes": {
            "get": _op(
                "Change feed: functions changed after a revision (long-poll)",
                {"200": _json(obj, "The new revision and the changed functions")},
                query={
                    "since": "last revision seen",
                    "wait": "seconds to wait for a change (<=60)",
                },
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "edgerun control plane", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
