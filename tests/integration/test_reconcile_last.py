"""``last`` metrics are judged by what Stripe's ``last`` formula bills: the value of the period's newest
event. Seats go from 10 to 0 in the next hour; until Stripe has an event of 0, it bills 10, and the
reconciler says so (an hour without an event is not an hour of 0). The oracle is the emulator's own
period summary, whatever the writer has sent by then."""

from __future__ import annotations

from datetime import timedelta

from tests.integration.stripe_world import START, World, world

__all__ = ["world"]

H0, H1 = START - timedelta(hours=3), START - timedelta(hours=2)


def stripe_bills(world: World, customer: str) -> int:
    """What Stripe's last formula bills for December: its period summary, as an invoice reads it."""
    meter_id = next(iter(world.state.meters))
    query = {"customer": world.ids[customer], "start_time": str(int(START.replace(day=1).timestamp())),
             "end_time": str(int(START.replace(month=12, day=31).timestamp()))}  # fmt: skip
    summaries = world.state.event_summaries(meter_id, query, "/")["data"]
    return round(summaries[0]["aggregated_value"]) if summaries else 0


async def test_a_drop_to_zero_stripe_has_no_event_for_is_drift_until_stripe_bills_it(world: World) -> None:
    await world.map_metric("seats", world.meter("seats", formula="last"), aggregation="last")
    await world.map_customer("c")
    await world.count("seats", "c", H0, 10)
    assert await world.push() == 1
    await world.count("seats", "c", H1, 0)  # the writer has not sent it yet
    world.clock.advance(60)
    report = await world.reconcile()
    [item] = report["items"]
    assert stripe_bills(world, "c") == 10
    assert (item["status"], item["local"], item["stripe"], item["diffAbs"]) == ("drift", 0, 10, 10)
    assert item["hours"] == [{"bucket": H1.isoformat().replace("+00:00", "Z"), "local": 0, "stripe": None,
                              "diff": None}]  # fmt: skip
    assert [c["code"] for c in item["causes"]] == ["not_yet_pushed"]
    assert report["adjusted"] == []  # last meters are never corrected by an extra event

    # whatever the writer sends now, the verdict is what Stripe bills against what was counted
    await world.push()
    world.clock.advance(60)
    [item] = (await world.reconcile())["items"]
    bills = stripe_bills(world, "c")
    assert item["stripe"] == bills
    assert item["status"] == ("parity" if bills == 0 else "drift")
