"""Mappings: a metric's meter is checked against Stripe (422 naming the field when it cannot carry the
metric), and raising a metric's lateness sets the dedupe horizon that keeps it from counting twice."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from stripemeter.tools.stripe_emulator import EmulatorState
from tests.integration.harness import ApiClient


def meter(state: EmulatorState, formula: str, **extra: object) -> str:
    name = f"m_{uuid.uuid4().hex[:8]}"
    state.create_meter(
        {"display_name": name, "event_name": name, "default_aggregation": {"formula": formula},
         "customer_mapping": {"type": "by_id", "event_payload_key": "cust"},
         "value_settings": {"event_payload_key": "qty"}, **extra}
    )  # fmt: skip
    return name


async def test_a_meter_that_cannot_carry_the_metric_is_refused_naming_the_field(
    stripe_api: ApiClient, emulator: tuple[EmulatorState, str]
) -> None:
    state, _ = emulator
    tenant = f"mp-{uuid.uuid4().hex[:6]}"

    async def put(event_name: str, aggregation: str) -> tuple[int, dict[str, Any]]:
        r = await stripe_api.put(
            f"/v1/mappings/{tenant}/m", json={"stripeMeterEventName": event_name, "aggregation": aggregation}
        )
        return r.status, await r.json()

    status, body = await put(meter(state, "sum"), "count")  # a count travels as a value: sum is right
    assert status == 200 and body["meterCheck"] == {
        "status": "ok", "meterId": body["meterCheck"]["meterId"], "formula": "sum", "customerKey": "cust",
        "valueKey": "qty",
    }  # fmt: skip
    for event_name, aggregation, field in [
        ("no_such_meter", "sum", "stripeMeterEventName"),
        (meter(state, "count"), "count", "aggregation"),  # Stripe's count formula would count the changes
        (meter(state, "sum"), "last", "aggregation"),
        (meter(state, "sum", event_time_window="hour"), "sum", "stripeMeterEventName"),
    ]:
        status, body = await put(event_name, aggregation)
        assert status == 422 and body["error"]["field"] == field, (event_name, body)
    inactive = meter(state, "sum")
    state.set_meter_status(
        next(m["id"] for m in state.meters.values() if m["event_name"] == inactive), "inactive"
    )
    status, body = await put(inactive, "sum")
    assert status == 422 and "inactive" in body["error"]["message"]


async def test_raising_lateness_sets_the_dedupe_horizon_lowering_keeps_it(api: ApiClient) -> None:
    tenant = f"lh-{uuid.uuid4().hex[:6]}"

    async def put(lateness: int) -> dict[str, Any]:
        r = await api.put(
            f"/v1/mappings/{tenant}/m", json={"stripeMeterEventName": "x", "latenessSeconds": lateness}
        )
        assert r.status == 200
        body: dict[str, Any] = await r.json()
        return body

    assert (await put(2 * 3600))["dedupeHorizon"] is None  # below the 48 h default: nothing expired early
    raised = await put(10 * 3600)
    horizon = datetime.fromisoformat(raised["dedupeHorizon"])
    updated = datetime.fromisoformat(raised["updatedAt"])
    # entries under the old 2 h expire behind now + 2 h - 2 h - the 1 h margin
    assert abs(horizon - (updated - timedelta(hours=1))) < timedelta(minutes=1)
    assert (await put(3600))["dedupeHorizon"] == raised["dedupeHorizon"]  # lowered: kept
