"""Reconciliation never chases Stripe's eventually consistent summaries. Stripe shows a meter event in
its summaries some time after taking it, with no documented bound (the emulator's ``summary_delay``):
runs made meanwhile, however often, send no correction for usage Stripe has and will show, learn how
long the lag was, and Stripe ends holding exactly what was counted. A push that never shows is still
found, after the lag cap, and said so."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from stripemeter.adapters.postgres import reconciliation as db
from stripemeter.core.reconcile_compare import LAG_CAP_S
from tests.integration.stripe_world import START, World, world

__all__ = ["world"]

HOUR_A, HOUR_B = START - timedelta(hours=3), START - timedelta(hours=1)
SETTLE = 10.0  # the local stack's settle time


async def a_customer_with_a_big_old_hour(world: World) -> None:
    """10,000 units in hour A, delivered long ago and shown: a later difference of a few units in hour
    B is within epsilon, so a run that took it for drift would correct it."""
    world.settle(SETTLE)
    await world.map_metric("requests", world.meter("requests"))
    await world.map_customer("c")
    world.clock.advance(-7200)
    await world.count("requests", "c", HOUR_A, 10_000)
    assert await world.push() == 1
    world.clock.advance(7200)


async def runs_until(world: World, seconds: float, every: float) -> list[dict[str, Any]]:
    """Reconciliation runs every ``every`` seconds for ``seconds``; the items of each run."""
    items = []
    for _ in range(int(seconds // every)):
        world.clock.advance(every)
        report = await world.reconcile()
        assert report["adjusted"] == [], report
        items.append(report["items"][0])
    return items


async def test_runs_during_stripes_summary_lag_send_nothing_and_stripe_ends_at_the_counted_total(
    world: World,
) -> None:
    await a_customer_with_a_big_old_hour(world)
    world.state.faults.update({"summary_delay": 60})
    await world.count("requests", "c", HOUR_B, 7)
    assert await world.push() == 1
    # settled (10 s) but not shown (60 s): in flight, lag, not drift
    during = await runs_until(world, 55, every=15)
    assert all((i["status"], i["inFlight"], i["action"]) == ("parity", 7, "wait") for i in during)
    world.clock.advance(20)
    shown = await world.reconcile()
    assert (shown["items"][0]["status"], shown["items"][0]["inFlight"]) == ("parity", 0)
    assert world.held("c") == 10_007
    # the lag seen (45 s, the last run that missed it) is confirmed: the settle time follows it
    assert (
        await db.longest_lag(
            world.conn, world.app_id, world.clock.utc() - timedelta(hours=1), world.clock.utc()
        )
        == 45
    )

    # Stripe slows down to 10 minutes; more usage in hour B
    world.state.faults.update({"summary_delay": 600})
    await world.count("requests", "c", HOUR_B, 12)
    assert await world.push() == 1
    await runs_until(world, 599, every=60)
    world.clock.advance(60)
    assert (await world.reconcile())["items"][0]["inFlight"] == 0
    assert world.held("c") == 10_012 and world.corrections_sent("c") == []
    assert (
        await db.longest_lag(
            world.conn, world.app_id, world.clock.utc() - timedelta(hours=1), world.clock.utc()
        )
        == 540
    )

    # a foreign +2 shows in hour B while our next push there does not yet: Stripe's hour (14) is no
    # state of what it took, so it is drift once settled; the settle time learnt (2 x 540 s) keeps the
    # runs from correcting against a summary that still misses our push (a +1 now, a -3 later)
    world.meter_event("c", 2, HOUR_B)
    world.clock.advance(500)
    await world.count("requests", "c", HOUR_B, 15)
    assert await world.push() == 1
    await runs_until(world, 1079, every=120)
    world.clock.advance(120)
    aligned = await world.reconcile()
    assert [a["value"] for a in aligned["adjusted"]] == [-2]
    world.clock.advance(600)
    final = await world.reconcile()
    assert (final["items"][0]["status"], final["items"][0]["local"], final["items"][0]["stripe"]) == (
        "parity",
        10_015,
        10_015,
    )
    assert world.held("c") == 10_015 and world.corrections_sent("c") == [-2]


async def test_a_push_that_never_shows_is_corrected_after_the_cap_and_teaches_no_lag(world: World) -> None:
    await a_customer_with_a_big_old_hour(world)
    await world.count("requests", "c", HOUR_B, 7)
    assert await world.push() == 1
    lost = next(e for e in world.state.events if e.value == 7)
    lost.cancelled = True  # gone from Stripe, and no report says so
    await runs_until(world, 2700, every=900)  # a lagging push, as far as anyone can tell
    world.clock.advance(LAG_CAP_S + 60 - 2700)
    report = await world.reconcile()
    [item] = report["items"]
    assert item["status"] == "within_epsilon" and item["hours"][0]["unseenSeconds"] >= LAG_CAP_S
    assert "still not in Stripe's summaries" in item["causes"][0]["message"]
    assert [a["value"] for a in report["adjusted"]] == [7]
    world.clock.advance(60)
    assert (await world.reconcile())["items"][0]["status"] == "parity"
    assert world.held("c") == 10_007
    # never shown, so never taken for lag: the settle time stays the configured one
    assert (
        await db.longest_lag(
            world.conn, world.app_id, world.clock.utc() - timedelta(hours=2), world.clock.utc()
        )
        is None
    )
