"""The control plane's OpenAPI document lists exactly the routes the app serves."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis

from edgerun.auth.guard import Need
from edgerun.control.accounts import Accounts
from edgerun.control.app import ControlApp, key_view
from edgerun.control.bundles import BundleStore
from edgerun.control.openapi import KeyView, openapi_document
from edgerun.control.registry import SqliteRegistry
from edgerun.control.secrets import SecretBox, SecretStore
from edgerun.openapi import operations


@pytest.fixture
def app(tmp_path: Path) -> ControlApp:
    registry = SqliteRegistry(tmp_path / "registry.db")
    return ControlApp(
        registry,
        BundleStore(tmp_path / "bundles"),
        Accounts(registry, b"k" * 32),
        SecretStore(tmp_path / "secrets.db", SecretBox(b"m" * 32)),
    )


def test_every_route_is_documented_and_nothing_else(app: ControlApp) -> None:
    """A new route fails here until the document describes it."""
    served = {(r.method, r.path) for r in app.api_routes()}
    assert operations(openapi_document()) == served


def test_security_follows_what_each_route_needs(app: ControlApp) -> None:
    paths = openapi_document()["paths"]
    for r in app.api_routes():
        security = paths[r.path][r.method.lower()]["security"]
        assert ({} in security) == (r.need is Need.PUBLIC), f"{r.method} {r.path}"


def test_every_failure_is_the_error_shape() -> None:
    for path, ops in openapi_document()["paths"].items():
        for method, op in ops.items():
            assert "401" in op["responses"], f"{method} {path}: a bad key is always a 401"
            for status, answer in op["responses"].items():
                if int(status) >= 400:
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, f"{method} {path}"


def test_the_document_is_valid_openapi() -> None:
    schema = schemathesis.openapi.from_dict(openapi_document())
    loaded = [result.ok() for result in schema.get_all_operations()]
    assert len(loaded) == len(operations(openapi_document()))


def test_a_key_as_shown_matches_its_closed_schema(app: ControlApp) -> None:
    """key_view and the document's KeyView name the same fields: the document's
    schema refuses any other, so a digest or secret could not slip into an answer."""
    entry, _ = app.accounts.create_key("default", ["read"], name="k")
    assert set(key_view(entry)) == set(KeyView.__struct_fields__)
