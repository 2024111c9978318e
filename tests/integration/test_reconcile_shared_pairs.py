"""A Stripe pair (meter event name, Stripe customer) that more than one counter maps to is never
corrected as if it were one counter. Two customerRefs on one Stripe customer, or two metrics on one
meter event name, send to the same pair: Stripe adds their events up. The API refuses such mappings
now, but existing data may hold them; reconciliation compares the pair with the sum of its counters,
names the pair, and leaves Stripe as it is: the oracle is the sum of what was counted."""

from __future__ import annotations

from datetime import timedelta

from tests.integration.stripe_world import START, World, world

__all__ = ["world"]

HOUR = START - timedelta(hours=3)


async def test_two_customer_refs_on_one_stripe_customer_are_reconciled_as_their_sum(world: World) -> None:
    await world.map_metric("requests", world.meter("requests"))
    shared = await world.map_customer("acme")
    await world.map_customer("acme-eu", shared)
    await world.count("requests", "acme", HOUR, 1000)
    await world.count("requests", "acme-eu", HOUR, 4)
    assert await world.push() == 2
    assert world.held("acme") == 1004
    for _ in range(2):
        world.clock.advance(3600)
        report = await world.reconcile()
        assert report["adjusted"] == []
        for item in report["items"]:
            assert (item["status"], item["local"], item["stripe"]) == ("parity", 1004, 1004)
            [cause] = item["causes"]
            assert cause["code"] == "shared_stripe_pair" and cause["stripeCustomer"] == shared
            assert [m["customerRef"] for m in cause["members"]] == ["acme", "acme-eu"]
    assert world.held("acme") == 1004  # what was counted, 1,000 + 4


async def test_two_metrics_on_one_meter_event_name_are_reconciled_as_their_sum_and_never_corrected(
    world: World,
) -> None:
    event_name = world.meter("usage")
    await world.map_metric("reads", event_name)
    await world.map_metric("writes", event_name)
    await world.map_customer("acme")
    await world.count("reads", "acme", HOUR, 1000)
    await world.count("writes", "acme", HOUR, 3)
    assert await world.push() == 2
    world.meter_event("acme", 2, HOUR)  # a stray event in the pair: within epsilon of 1,003
    world.clock.advance(3600)
    report = await world.reconcile()
    assert report["adjusted"] == []  # a correction would belong to neither metric
    statuses = {i["metric"]: (i["status"], i["local"], i["stripe"], i["diffAbs"]) for i in report["items"]}
    assert statuses == {
        "reads": ("within_epsilon", 1003, 1005, 2),
        "writes": ("within_epsilon", 1003, 1005, 2),
    }
    assert all(
        [c["code"] for c in i["causes"]] == ["stripe_higher", "shared_stripe_pair"] for i in report["items"]
    )
    assert world.held("acme") == 1005
