"""Stripe's late error reports never make Stripe hold usage twice. Stripe validates meter events after
answering 200 (the emulator's ``async_validation``) and reports the dropped ones later, through the
webhook. When the report comes after the reconciler already made up for the dropped push, the
correction stands in for it and the writer does not push it again; a report naming one of the
reconciler's own corrections records it as dropped, so the accounting (and the writer's 24 h check)
stays right and a later run corrects again. The oracle: Stripe ends holding exactly what was counted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from stripemeter.adapters.postgres import push_drops
from stripemeter.adapters.postgres import reconciliation as db
from stripemeter.adapters.stripe.client import SendResult
from stripemeter.api.app import create_app as create_api
from stripemeter.core.push_plan import Request
from stripemeter.core.reconcile_compare import LAG_CAP_S
from stripemeter.domain.config import Secret, Settings
from stripemeter.tools.stripe_emulator import webhooks
from tests.integration.harness import ApiClient
from tests.integration.stripe_world import START, World, world

__all__ = ["world"]

SECRET = "whsec_late_reports"
HOUR_A, HOUR_B = START - timedelta(hours=3), START - timedelta(hours=1)


@pytest_asyncio.fixture
async def api(env: Settings, world: World) -> AsyncIterator[ApiClient]:
    """The API, whose webhook receives Stripe's error reports (it reads them from the emulator)."""
    settings = env.with_overrides(
        stripe_api_base=world.base,
        stripe_api_key=Secret("sk_test_world"),
        stripe_webhook_secret=Secret(SECRET),
    )
    client = TestClient(TestServer(create_api(settings)))
    await client.start_server()
    yield client
    await client.close()


async def deliver_reports(world: World, api: ApiClient) -> int:
    """Stripe delivers the error reports made so far to the webhook (late: whenever the test says)."""
    url = str(api.make_url("/v1/stripe/webhook"))
    destination = webhooks.Destination(url, SECRET)
    delivered = 0
    async with aiohttp.ClientSession() as session:
        for report in world.state.error_reports:
            event = world.state.v2_events[report["event"]]
            delivery = webhooks.Delivery(event["id"], url)
            await webhooks.deliver(session, destination, event, delivery)
            assert delivery.delivered, delivery.attempts
            delivered += 1
    world.state.error_reports.clear()
    return delivered


async def a_big_old_hour(world: World) -> None:
    """10,000 units in hour A, delivered and shown long ago: a few units missing in hour B are within
    epsilon, so the reconciler corrects them itself."""
    world.state.faults.update({"async_validation": True})
    await world.map_metric("requests", world.meter("requests"))
    await world.map_customer("c")
    world.clock.advance(-7200)
    await world.count("requests", "c", HOUR_A, 10_000)
    assert await world.push() == 1
    world.clock.advance(7200)


async def remap(world: World, stripe_id: str) -> None:
    await world.conn.execute(
        "UPDATE customer_mappings SET stripe_customer_id = %s WHERE tenant_id = %s AND customer_ref = 'c'",
        (stripe_id, world.tenant),
    )


async def reconcile_after_the_cap(world: World) -> dict[str, Any]:
    """Stripe's summary misses a delivered push: lag, for all anyone knows, until the cap (an hour);
    then it is missing, and made up for (test_reconcile_lag.py: nothing is sent before)."""
    world.clock.advance(LAG_CAP_S + 60)
    return await world.reconcile()


async def test_a_report_arriving_after_the_reconciler_made_up_for_the_drop_does_not_double(
    world: World, api: ApiClient
) -> None:
    await a_big_old_hour(world)
    # a wrong customer mapping for a while: the push of hour B is answered 200, then dropped
    await remap(world, "cus_ghost")
    await world.count("requests", "c", HOUR_B, 7)
    assert await world.push() == 1
    [report] = world.state.error_reports
    assert report["code"] == "meter_event_customer_not_found"
    await remap(world, world.ids["c"])  # fixed before Stripe's report arrives
    aligned = await reconcile_after_the_cap(world)
    assert [a["value"] for a in aligned["adjusted"]] == [7]  # stripe_missing, made up for
    assert world.held("c") == 10_007

    # Stripe's report arrives now: the correction stands in for the dropped push
    assert await deliver_reports(world, api) == 1
    await world.push()  # its mapping changed since the push: the counter is due, and has nothing to send
    assert world.held("c") == 10_007  # once, not twice
    world.clock.advance(60)
    final = await world.reconcile()
    assert (final["items"][0]["status"], final["adjusted"]) == ("parity", [])
    [row] = await world.rows(
        "SELECT pushed_units, status FROM stripe_pushes WHERE tenant_id = %s AND bucket = %s",
        world.tenant,
        HOUR_B,
    )
    assert (row["pushed_units"], row["status"]) == (7, "synced")
    # the writer's 24 h check counts the correction once: as the push it stands in for
    hour = (world.tenant, "requests", "c", HOUR_B)
    assert await db.delivered_corrections(world.conn, hour) == 0


async def test_a_report_naming_a_correction_records_it_dropped_and_a_later_run_corrects_again(
    world: World, api: ApiClient
) -> None:
    await a_big_old_hour(world)
    await world.count("requests", "c", HOUR_B, 7)
    assert await world.push() == 1
    next(e for e in world.state.events if e.value == 7).cancelled = True  # lost, without a report
    meter_id = next(iter(world.state.meters))
    send = world.reconciler.reader.send

    async def send_while_the_meter_is_inactive(request: Request, attempt: int = 0) -> SendResult:
        world.state.set_meter_status(meter_id, "inactive")  # between the run's meter read and the send
        try:
            return await send(request, attempt)
        finally:
            world.state.set_meter_status(meter_id, "active")

    world.reconciler.reader.send = send_while_the_meter_is_inactive  # type: ignore[method-assign]
    first = await reconcile_after_the_cap(world)
    world.reconciler.reader.send = send  # type: ignore[method-assign]
    [correction] = first["adjusted"]
    assert correction["value"] == 7 and world.held("c") == 10_000  # answered 200, then dropped
    hour = (world.tenant, "requests", "c", HOUR_B)
    assert await db.delivered_corrections(world.conn, hour) == 7

    assert await deliver_reports(world, api) == 1
    [row] = await world.rows(
        "SELECT status, error FROM adjustments WHERE adjustment_id = %s", correction["adjustmentId"]
    )
    assert row["status"] == "dropped" and "archived_meter" in row["error"]
    assert await db.delivered_corrections(world.conn, hour) == 0
    assert await db.uncertain_corrections(world.conn, hour) == []

    world.clock.advance(60)
    again = await world.reconcile()  # the hour still misses the push: corrected again
    assert [a["value"] for a in again["adjusted"]] == [7]
    world.clock.advance(60)
    assert (await world.reconcile())["items"][0]["status"] == "parity"
    assert world.held("c") == 10_007
    assert await db.delivered_corrections(world.conn, hour) == 7


async def test_a_dropped_correction_gives_back_the_push_it_stood_in_for(world: World) -> None:
    """A correction made up for a dropped push, and then turned out dropped itself: the hour holds the
    push's units less again, so the writer pushes them (nothing is lost either)."""
    await a_big_old_hour(world)
    await remap(world, "cus_ghost")
    await world.count("requests", "c", HOUR_B, 7)
    assert await world.push() == 1
    [push_report] = world.state.error_reports
    await remap(world, world.ids["c"])
    [correction] = (await reconcile_after_the_cap(world))["adjusted"]
    now = world.clock.utc()
    dropped = await push_drops.drop_request(world.conn, push_report["identifier"], "dropped", now)
    assert dropped is not None and dropped.covered == 7
    # Stripe says the correction was dropped too (here: by hand, taking it out of Stripe)
    next(e for e in world.state.events if e.identifier == correction["adjustmentId"]).cancelled = True
    back = await db.drop_correction(world.conn, correction["adjustmentId"], "dropped", now)
    assert back is not None and back.given_back == 7
    assert await world.push() == 1  # the writer owes the 7 again
    world.clock.advance(60)
    assert (await world.reconcile())["items"][0]["status"] == "parity"
    assert world.held("c") == 10_007
