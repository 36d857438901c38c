"""What the control plane's and the nodes' OpenAPI documents share.

Both documents are fuzzed against the running servers (``tests/fuzz``), so
each answer documented here must be what the handler really sends: the
error shape every failure has, one security scheme, and a builder that keeps
every operation's failures, parameters and body in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from edgerun import __version__

Schema = dict[str, Any]

ERROR: Schema = {
    "type": "object",
    "description": "Every failure the platform answers: a JSON body with the error's type and a "
    "message (some errors add fields, e.g. a function's traceback).",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
            "required": ["type", "message"],
        }
    },
    "required": ["error"],
}
ERROR_REF: Schema = {"$ref": "#/components/schemas/Error"}

ERRORS: dict[int, str] = {
    400: "Malformed request: a parameter or the body is invalid",
    401: "No key where one is needed, or a key that is not valid (unknown or revoked)",
    403: "The key is valid but may not do this",
    404: "No such thing (or it belongs to another tenant: refusals do not tell)",
    405: "The method is not allowed on this path",
    408: "The request's body took too long to arrive",
    409: "Conflicts with the current state (exists already, still in use, a limit reached)",
    413: "The request's body is larger than this route accepts",
    429: "Over a key's or a function's rate or concurrency limit",
    500: "Internal failure",
    502: "The region the request was forwarded to failed",
    503: "Unavailable for now",
    504: "The function ran past its timeout",
}
BODY_ERRORS = (400, 408, 413)
"""What reading any request body can fail with."""

PUBLIC_SECURITY: list[dict[str, list[str]]] = [{}, {"bearer": []}]
"""No key needed; one that is sent must be valid (401 otherwise)."""
KEY_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]


def json_content(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def struct_schemas(*types: Any) -> tuple[list[Schema], dict[str, Schema]]:
    """JSON Schemas of msgspec types, their components referenced under ``components``."""
    refs, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    return list(refs), components


def string_param(name: str, where: str, *, pattern: str | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "string", **extra}
    if pattern is not None:
        schema["pattern"] = pattern
    return {"name": name, "in": where, "required": where == "path", "schema": schema}


def int_param(name: str, lo: int, hi: int, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "integer", "minimum": lo, "maximum": hi},
    }


def flag_param(name: str, description: str) -> Schema:
    """A true/false query parameter (:func:`edgerun.http.query_flag`)."""
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", "enum": ["true", "false", "1", "0"]},
    }


def ecma(pattern: str) -> str:
    r"""A Python regex anchored with ``\Z`` as JSON Schema (ECMA-262) writes it."""
    return pattern.removesuffix(r"\Z") + "$"


class Paths:
    """The ``paths`` of a document, added one operation at a time."""

    def __init__(self) -> None:
        self.paths: dict[str, dict[str, Schema]] = {}

    def add_self(self) -> None:
        """``GET /v1/openapi.json``: every app serves its own document."""
        self.add("GET", "/v1/openapi.json", "This document", {"200": _self_entry()}, public=True)

    def add(
        self,
        method: str,
        path: str,
        summary: str,
        ok: Mapping[str, Schema],
        *,
        errors: Iterable[int] = (),
        public: bool = False,
        params: Iterable[Schema] = (),
        body: Schema | None = None,
        body_required: bool = True,
    ) -> None:
        """One operation: its answers on success (``ok``, by status), the failures it
        can answer with (401 always: even a public route refuses a bad key), its
        parameters and its request body (by media type)."""
        codes = {401, *errors} | (set(BODY_ERRORS) if body is not None else set())
        responses: dict[str, Schema] = dict(ok)
        for code in sorted(codes):
            responses.setdefault(str(code), json_content(ERROR_REF, ERRORS[code]))
        op: Schema = {
            "summary": summary,
            "security": PUBLIC_SECURITY if public else KEY_SECURITY,
            "parameters": list(params),
            "responses": responses,
        }
        if body is not None:
            op["requestBody"] = {"required": body_required, "content": body}
        self.paths.setdefault(path, {})[method.lower()] = op


def _self_entry() -> Schema:
    return json_content(
        {"type": "object", "required": ["openapi", "info", "paths"]}, "The document"
    )


def document(title: str, paths: Paths, components: dict[str, Schema]) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": __version__},
        "paths": paths.paths,
        "components": {
            "schemas": {**components, "Error": ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def operations(doc: Mapping[str, Any]) -> set[tuple[str, str]]:
    """``(METHOD, path)`` of every operation a document lists."""
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops if m in methods}
