"""Scopes: a tenant's own admin has every power over its tenant and none over the shared Stripe account."""

from __future__ import annotations

import pytest

from stripemeter.domain.auth import OPERATOR, Principal, parse_scopes, required_scope


def test_admin_covers_the_tenant_scopes_but_not_the_operator_scope() -> None:
    admin = Principal("k", "acme", frozenset({"admin"}))
    assert all(admin.allows(s) for s in ("ingest", "read", "replay", "reconcile", "admin"))
    assert not admin.allows(OPERATOR) and not admin.operates
    every_tenant_admin = Principal("k", "*", frozenset({"admin"}))
    assert not every_tenant_admin.allows(OPERATOR) and not every_tenant_admin.operates
    operator = Principal("k", "*", frozenset({OPERATOR}))
    assert operator.allows(OPERATOR) and operator.operates and not operator.allows("read")


def test_only_a_key_of_every_tenant_may_hold_the_operator_scope() -> None:
    assert parse_scopes("admin,operator", "*") == ["admin", "operator"]
    with pytest.raises(ValueError, match="operator"):
        parse_scopes("admin,operator", "acme")
    # a key row made by hand for one tenant with the scope still does not operate
    by_hand = Principal("k", "acme", frozenset({OPERATOR}))
    assert not by_hand.operates and not by_hand.allows(OPERATOR)


def test_granting_meters_needs_the_operator_scope_and_reading_them_does_not() -> None:
    assert required_scope("PUT", "/v1/tenants/{tenantId}/meters/{eventName}") == OPERATOR
    assert required_scope("DELETE", "/v1/tenants/{tenantId}/meters/{eventName}") == OPERATOR
    assert required_scope("GET", "/v1/tenants/{tenantId}/meters") == "read"
    assert required_scope("PUT", "/v1/mappings/{tenantId}/{metric}") == "admin"
