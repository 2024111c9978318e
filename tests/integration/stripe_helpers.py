"""Helpers for tests that involve the Stripe emulator: tenants tied to meters and customers."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import TypedDict

from stripemeter.domain.config import Secret
from stripemeter.tools.stripe_emulator import EmulatorState
from tests.integration.harness import ApiClient


async def setup_tenant(
    api: ApiClient, state: EmulatorState, tenant: str, customers: list[str]
) -> tuple[dict[str, str], str]:
    """A meter and customers in the emulator, and the mappings that tie them to the tenant."""
    event_name = f"req_{uuid.uuid4().hex[:8]}"
    meter = state.create_meter(
        {"display_name": "requests", "event_name": event_name, "default_aggregation": {"formula": "sum"}}
    )
    put = await api.put(
        f"/v1/mappings/{tenant}/requests", json={"stripeMeterEventName": event_name, "aggregation": "sum"}
    )
    assert put.status == 200
    ids = {}
    for customer in customers:
        ids[customer] = state.create_customer({"email": f"{customer}@example.com"})["id"]
        response = await api.put(
            f"/v1/customers/{tenant}/{customer}", json={"stripeCustomerId": ids[customer]}
        )
        assert response.status == 200
    return ids, meter["id"]


class EmulatorSettings(TypedDict):
    """Settings overrides (a TypedDict, so ``**`` of it checks against ``start_worker``'s parameters)."""

    stripe_api_base: str
    stripe_api_key: Secret


def emulator_settings(base: str) -> EmulatorSettings:
    """Worker settings that point the Stripe writer at the emulator."""
    return {"stripe_api_base": base, "stripe_api_key": Secret("sk_test_emulator")}


def stripe_totals(state: EmulatorState, ids: dict[str, str]) -> Counter[tuple[str, int]]:
    by_id = {v: k for k, v in ids.items()}
    totals: Counter[tuple[str, int]] = Counter()
    for meter_id in list(state.meters):
        for e in state.meter_events(meter_id):
            if e.customer in by_id:
                totals[(by_id[e.customer], e.timestamp - e.timestamp % 3600)] += e.value
    return totals
