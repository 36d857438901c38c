"""Who may do what to which function: the pure decision every route relies on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerun.auth import DEFAULT_TENANT, Kind, Principal, parse_scope, short_name, tenant_of
from edgerun.errors import ApiError

names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
tenants = st.sampled_from(["default", "acme", "globex"])
kinds = st.sampled_from([Kind.ADMIN, Kind.DEPLOY, Kind.INVOKE, Kind.READ])


def full(tenant: str, name: str) -> str:
    return name if tenant == DEFAULT_TENANT else f"{tenant}.{name}"


def principal(tenant: str, *scopes: str) -> Principal:
    return Principal("EK1", tenant, tuple(parse_scope(s, node=True) for s in scopes))


def test_a_name_without_a_dot_belongs_to_the_default_tenant() -> None:
    assert tenant_of("hello") == "default" and short_name("hello") == "hello"
    assert tenant_of("acme.hello") == "acme" and short_name("acme.hello") == "hello"


@pytest.mark.parametrize(
    "text", ["root", "invoke:", "invoke:API", "admin:x*", "node", "invoke:a b", "read:" + "a" * 64]
)
def test_a_malformed_scope_is_a_400(text: str) -> None:
    with pytest.raises(ApiError) as exc:
        parse_scope(text)
    assert exc.value.status == 400


def test_only_nodes_get_the_node_scope() -> None:
    assert parse_scope("node", node=True).kind is Kind.NODE


def test_a_pattern_limits_a_scope_to_matching_names() -> None:
    p = principal("acme", "invoke:api-*")
    assert p.may(Kind.INVOKE, "acme.api-orders")
    assert not p.may(Kind.INVOKE, "acme.internal")
    assert not p.may(Kind.READ, "acme.api-orders")


def test_deploy_implies_read_but_invoke_does_not() -> None:
    assert principal("acme", "deploy").may(Kind.READ, "acme.x")
    assert not principal("acme", "invoke").may(Kind.READ, "acme.x")
    assert not principal("acme", "read").may(Kind.DEPLOY, "acme.x")


def test_the_default_tenants_admin_runs_the_cluster_and_no_other_admin_does() -> None:
    assert principal("default", "admin").may(Kind.DEPLOY, "acme.x")
    assert principal("default", "admin").is_cluster_admin
    assert not principal("acme", "admin").is_cluster_admin
    assert not principal("acme", "admin").may(Kind.READ, "globex.x")
    assert not principal("default", "deploy").may(Kind.DEPLOY, "acme.x")


def test_a_node_credential_acts_on_no_function() -> None:
    node = Principal("EKN", "system", (parse_scope("node", node=True),))
    assert node.is_node
    for kind in (Kind.ADMIN, Kind.DEPLOY, Kind.INVOKE, Kind.READ):
        assert not node.may(kind, "hello")


def test_refusals_hide_other_tenants_and_explain_ones_own() -> None:
    p = principal("acme", "invoke")
    with pytest.raises(ApiError) as outside:
        p.check(Kind.INVOKE, "globex.x")
    assert outside.value.status == 404
    with pytest.raises(ApiError) as inside:
        p.check(Kind.DEPLOY, "acme.x")
    assert inside.value.status == 403


@given(owner=tenants, caller=tenants, name=names, kind=kinds, granted=kinds)
def test_no_key_reaches_past_its_tenant(
    owner: str, caller: str, name: str, kind: Kind, granted: Kind
) -> None:
    p = principal(caller, granted.value)
    fn = full(owner, name)
    if p.may(kind, fn):
        assert owner == caller or p.is_cluster_admin
    if owner != caller and not p.is_cluster_admin:
        with pytest.raises(ApiError) as exc:
            p.check(kind, fn)
        assert exc.value.status == 404


def test_tenant_management_needs_an_admin_of_that_tenant() -> None:
    principal("acme", "admin").check_tenant("acme")
    principal("default", "admin").check_tenant("acme")
    with pytest.raises(ApiError) as other:
        principal("acme", "admin").check_tenant("globex")
    assert other.value.status == 404
    with pytest.raises(ApiError) as scope:
        principal("acme", "deploy").check_tenant("acme")
    assert scope.value.status == 403


def test_names_no_function_can_have_are_decided_but_not_remembered() -> None:
    p = principal("acme", "invoke")
    huge = "acme." + "a" * 60_000
    assert p.may(Kind.INVOKE, huge)  # the same answer a shorter name would get...
    assert p.may(Kind.INVOKE, "acme.short")
    assert (Kind.INVOKE, huge) not in p._decided  # ...but a caller cannot fill memory with it
