"""The heavy-request caps (stripemeter/domain/concurrency.py): per tenant, then in all."""

from __future__ import annotations

from stripemeter.domain.concurrency import ConcurrencyLimit


def test_a_tenant_gets_at_most_its_cap_and_others_keep_theirs() -> None:
    limit = ConcurrencyLimit(per_tenant=2, total=4)
    assert [limit.try_enter("a") for _ in range(3)] == [None, None, "tenant"]
    assert limit.running("a") == 2  # the refusal counted nothing
    assert limit.try_enter("b") is None
    assert limit.running() == 3


def test_all_tenants_together_get_at_most_the_total() -> None:
    limit = ConcurrencyLimit(per_tenant=2, total=3)
    assert [limit.try_enter(t) for t in ("a", "a", "b", "c")] == [None, None, None, "total"]
    assert limit.try_enter("a") == "tenant"  # its own cap is checked first
    limit.leave("b")
    assert limit.try_enter("c") is None


def test_leaving_frees_the_place_and_forgets_idle_tenants() -> None:
    limit = ConcurrencyLimit(per_tenant=1, total=2)
    assert limit.try_enter("a") is None
    assert limit.try_enter("a") == "tenant"
    limit.leave("a")
    assert limit.running("a") == 0 and limit.running() == 0
    assert limit.try_enter("a") is None
    limit.leave("a")
    assert "a" not in limit._running  # bounded by the requests running, not by every tenant ever seen
