"""Name and config validation, and how a qualifier resolves to a version."""

from __future__ import annotations

import math

import msgspec
import pytest

from edgerun.errors import ApiError
from edgerun.models import (
    FunctionConfig,
    FunctionRecord,
    UnknownQualifier,
    Version,
    resolve_qualifier,
    validate_config,
    validate_name,
    version_id,
)

# --- validate_name ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "7", "hello", "my-func-2", "a--b", "a" * 63])
def test_valid_names_are_returned_unchanged(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "Hello", "hELLO", "-hello", "hello-", "he_llo", "he.llo", "he llo", "é", "a" * 64],
)
def test_invalid_names_are_a_400(name):
    with pytest.raises(ApiError) as exc:
        validate_name(name)

    assert exc.value.status == 400


def test_invalid_name_message_names_what_was_checked():
    with pytest.raises(ApiError, match="invalid alias 'Prod'"):
        validate_name("Prod", "alias")


def test_name_with_a_trailing_newline_is_a_400():
    with pytest.raises(ApiError):
        validate_name("hello\n")


# --- validate_config ----------------------------------------------------------------


def config_error(**fields: object) -> ApiError:
    with pytest.raises(ApiError) as exc:
        validate_config(FunctionConfig(**fields))  # type: ignore[arg-type]
    assert exc.value.status == 400
    return exc.value


def test_default_config_is_valid():
    cfg = FunctionConfig()

    assert validate_config(cfg) is cfg


@pytest.mark.parametrize("handler", ["app.handler", "pkg.sub.handler", "_m.Handler_2"])
def test_dotted_handlers_are_valid(handler):
    assert validate_config(FunctionConfig(handler=handler)).handler == handler


@pytest.mark.parametrize("handler", ["handler", "", "1app.handler", "app.", "app-x.handler", ".h"])
def test_bad_handler_is_a_400(handler):
    assert "invalid handler" in config_error(handler=handler).message


@pytest.mark.parametrize("memory_mb", [16, 10_240])
def test_memory_at_the_bounds_is_valid(memory_mb):
    assert validate_config(FunctionConfig(memory_mb=memory_mb)).memory_mb == memory_mb


@pytest.mark.parametrize("memory_mb", [0, 15, 10_241])
def test_memory_out_of_range_is_a_400(memory_mb):
    assert "memory_mb" in config_error(memory_mb=memory_mb).message


def test_timeout_at_the_maximum_is_valid():
    assert validate_config(FunctionConfig(timeout_s=900.0)).timeout_s == 900.0


@pytest.mark.parametrize("timeout_s", [0.0, -1.0, 900.001, math.inf, math.nan])
def test_timeout_out_of_range_is_a_400(timeout_s):
    assert "timeout_s" in config_error(timeout_s=timeout_s).message


@pytest.mark.parametrize("key", ["EDGERUN_TOKEN", "AWS_LAMBDA_FUNCTION_NAME"])
def test_env_with_a_reserved_prefix_is_a_400(key):
    assert "reserved prefix" in config_error(env={key: "x"}).message


@pytest.mark.parametrize("key", ["", "1FOO", "FOO-BAR", "FOO BAR", "FOO=BAR"])
def test_bad_env_key_is_a_400(key):
    assert "invalid environment variable name" in config_error(env={key: "x"}).message


def test_ordinary_env_keys_are_valid():
    env = {"DEBUG": "1", "_private": "", "AWS_REGION": "eu-west-1"}

    assert validate_config(FunctionConfig(env=env)).env == env


def test_env_key_with_a_trailing_newline_is_a_400():
    config_error(env={"FOO\n": "x"})


def test_handler_with_a_trailing_newline_is_a_400():
    config_error(handler="app.handler\n")


# --- resolve_qualifier --------------------------------------------------------------

V1 = "deadbeef00" + "1" * 54
V2 = "deadbeef11" + "2" * 54
V3 = "0123456789" + "3" * 54


def record(aliases: dict[str, str] | None = None) -> FunctionRecord:
    versions = {
        sha: Version(
            sha256=sha, bundle_sha256=sha, handler="app.handler", size=1, created_at=float(i)
        )
        for i, sha in enumerate((V1, V2, V3))
    }
    return FunctionRecord(
        name="hello",
        config=FunctionConfig(),
        versions=versions,
        aliases={"latest": V3, "prod": V1} if aliases is None else aliases,
        created_at=0.0,
        updated_at=0.0,
        revision=1,
    )


@pytest.mark.parametrize("qualifier", [None, ""])
def test_no_qualifier_resolves_to_latest(qualifier):
    assert resolve_qualifier(record(), qualifier) == V3


def test_alias_resolves_to_its_version():
    assert resolve_qualifier(record(), "prod") == V1


def test_full_hash_resolves_to_itself():
    assert resolve_qualifier(record(), V2) == V2


def test_unique_prefix_of_eight_or_more_chars_resolves():
    assert resolve_qualifier(record(), "01234567") == V3
    assert resolve_qualifier(record(), "deadbeef1") == V2


def test_prefix_shorter_than_eight_chars_is_unknown_even_if_unique():
    with pytest.raises(UnknownQualifier):
        resolve_qualifier(record(), "0123456")


def test_ambiguous_prefix_is_unknown_and_says_so():
    with pytest.raises(UnknownQualifier, match="ambiguous"):
        resolve_qualifier(record(), "deadbeef")


def test_uppercase_prefix_is_unknown():
    with pytest.raises(UnknownQualifier):
        resolve_qualifier(record(), "DEADBEEF1")


def test_unknown_alias_is_unknown():
    with pytest.raises(UnknownQualifier, match="no alias or version 'staging'"):
        resolve_qualifier(record(), "staging")


def test_none_without_a_latest_alias_is_unknown():
    with pytest.raises(UnknownQualifier):
        resolve_qualifier(record(aliases={}), None)


def test_alias_takes_precedence_over_a_matching_hash_prefix():
    fn = record(aliases={"latest": V3, "deadbeef1": V1})

    assert resolve_qualifier(fn, "deadbeef1") == V1


def test_function_record_resolve_returns_the_version():
    assert record().resolve("prod") == record().versions[V1]


def test_a_version_recorded_before_version_ids_uses_its_id_as_its_bundle() -> None:
    old = b'{"sha256": "' + V1.encode() + b'", "handler": "a.b", "size": 1, "created_at": 0}'

    version = msgspec.json.decode(old, type=Version)

    assert version.bundle_sha256 == V1


def test_a_version_id_covers_bundle_and_handler() -> None:
    assert version_id(V1, "a.b") != version_id(V1, "a.c")
    assert version_id(V1, "a.b") != version_id(V2, "a.b")
    assert version_id(V1, "a.b") == version_id(V1, "a.b")
