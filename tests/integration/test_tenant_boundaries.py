"""Tenants share one Stripe account; none of them reaches another's billing (issue 27). Through the real
stack (worker, API with keys, the Stripe emulator): tenant B's usage reaches B's Stripe customer, and
tenant A's own admin key can neither bind, bill, read nor correct that customer, nor map a metric to a
meter the operator did not grant A. What only an operator may do needs an operator key."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from stripemeter.api.app import create_app as create_api
from stripemeter.domain.config import Settings
from stripemeter.services import api_keys as keys
from stripemeter.tools.stripe_emulator import EmulatorState
from tests.integration.client import eventually, produce
from tests.integration.harness import ApiClient, StartWorker
from tests.integration.stripe_helpers import emulator_settings
from tests.integration.test_topic_inspect import cli


@pytest_asyncio.fixture
async def keyed_api(env: Settings, emulator: tuple[EmulatorState, str]) -> AsyncIterator[ApiClient]:
    settings = env.with_overrides(
        auth_enabled=True, rate_limit_per_second=1000, **emulator_settings(emulator[1])
    )
    client = TestClient(TestServer(create_api(settings)))
    await client.start_server()
    yield client
    await client.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sum_meter(state: EmulatorState) -> str:
    name = f"m_{uuid.uuid4().hex[:8]}"
    state.create_meter({"display_name": name, "event_name": name, "default_aggregation": {"formula": "sum"}})
    return name


class Caller:
    """One API key's view of the API: each call answers (status, body)."""

    def __init__(self, api: ApiClient, token: str) -> None:
        self.api, self.headers = api, bearer(token)

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        response = await self.api.request(method, path, json=body, headers=self.headers)
        return response.status, await response.json()


def stripe_total(state: EmulatorState, customer: str) -> float:
    return sum(
        e.value for meter in list(state.meters) for e in state.meter_events(meter) if e.customer == customer
    )


async def test_tenant_a_cannot_bind_bill_read_or_correct_tenant_b_stripe_customer(
    env: Settings, start_worker: StartWorker, keyed_api: ApiClient, emulator: tuple[EmulatorState, str]
) -> None:
    state, base = emulator
    a, b = f"ta-{uuid.uuid4().hex[:6]}", f"tb-{uuid.uuid4().hex[:6]}"
    operator = Caller(keyed_api, await keys.create(env, "*", "admin,operator", "operator"))
    admin_a = Caller(keyed_api, await keys.create(env, a, "admin", "A's own admin"))
    admin_b = Caller(keyed_api, await keys.create(env, b, "admin", "B's own admin"))
    worker = start_worker(**emulator_settings(base))
    worker.wait_ready()

    # the operator grants B a meter; B binds its customer and maps its metric to it
    meter_b, meter_a = sum_meter(state), sum_meter(state)
    cus_b = state.create_customer({"email": "b@example.com"})["id"]
    status, body = await admin_b.call("PUT", f"/v1/mappings/{b}/calls", {"stripeMeterEventName": meter_b})
    assert status == 403 and body["error"]["code"] == "meter_not_granted", body  # not granted yet
    assert body["error"]["field"] == "stripeMeterEventName"
    assert (await operator.call("PUT", f"/v1/tenants/{b}/meters/{meter_b}"))[0] == 200
    assert (await operator.call("PUT", f"/v1/tenants/{a}/meters/{meter_a}"))[0] == 200
    assert (await admin_b.call("PUT", f"/v1/customers/{b}/bc", {"stripeCustomerId": cus_b}))[0] == 200
    status, body = await admin_b.call("PUT", f"/v1/mappings/{b}/calls", {"stripeMeterEventName": meter_b})
    assert status == 200, body
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    await produce(
        env,
        [
            {"tenantId": b, "metric": "calls", "customerRef": "bc", "quantity": 10, "ts": now,
             "idempotencyKey": f"b{i}"}
            for i in range(5)
        ],
    )  # fmt: skip

    async def billed() -> bool:
        return stripe_total(state, cus_b) == 50

    await eventually(billed, timeout=60, what="B's 50 units at B's Stripe customer")

    # A's own admin: no grant of its own, no meter of B's, no binding of B's customer
    status, body = await admin_a.call("PUT", f"/v1/tenants/{a}/meters/{meter_b}")
    assert status == 403 and "operator" in body["error"]["message"], body
    status, body = await admin_a.call("PUT", f"/v1/mappings/{a}/calls", {"stripeMeterEventName": meter_b})
    assert status == 403 and body["error"]["field"] == "stripeMeterEventName", body
    status, body = await admin_a.call("PUT", f"/v1/mappings/{a}/calls", {"stripeMeterEventName": "m_none"})
    assert status == 403 and body["error"]["code"] == "meter_not_granted", body  # Stripe is not asked
    status, body = await admin_a.call("PUT", f"/v1/customers/{a}/x", {"stripeCustomerId": cus_b})
    assert status == 409 and body["error"]["field"] == "stripeCustomerId", body
    # with a meter of its own granted, A maps its metric; B's customer is still out of reach
    status, body = await admin_a.call("PUT", f"/v1/mappings/{a}/calls", {"stripeMeterEventName": meter_a})
    assert status == 200, body
    status, body = await admin_a.call("PUT", f"/v1/customers/{a}/x", {"stripeCustomerId": cus_b})
    assert status == 409 and body["error"]["field"] == "stripeCustomerId", body
    # correcting Stripe whatever the drift is the operator's, and A's own runs show nothing of B
    status, body = await admin_a.call("POST", "/v1/reconciliation/run", {"tenantId": a, "align": "all"})
    assert status == 403 and body["error"]["field"] == "align", body
    status, body = await admin_a.call("POST", "/v1/reconciliation/run", {"tenantId": a})
    assert status == 200, body
    summary = await admin_a.call("GET", f"/v1/reconciliation/summary?tenantId={a}&metric=calls")
    assert cus_b not in str(body) and cus_b not in str(summary[1])
    # a grant is not taken back under a mapping; B's usage stayed where it was billed
    status, body = await operator.call("DELETE", f"/v1/tenants/{a}/meters/{meter_a}")
    assert status == 409 and body["error"]["code"] == "meter_in_use", body
    status, body = await admin_a.call("GET", f"/v1/tenants/{a}/meters")
    assert status == 200 and [m["eventName"] for m in body["meters"]] == [meter_a], body
    assert stripe_total(state, cus_b) == 50
    # the operator's own run may align everything
    status, body = await operator.call("POST", "/v1/reconciliation/run", {"tenantId": b, "align": "all"})
    assert status == 200, body


async def test_an_operator_grants_and_revokes_meters_from_the_command_line(
    env: Settings, keyed_api: ApiClient
) -> None:
    tenant = f"tc-{uuid.uuid4().hex[:6]}"
    admin = Caller(keyed_api, await keys.create(env, tenant, "admin", None))
    granted = cli(env, "meters", "grant", "--tenant", tenant, "api_calls")
    assert granted.returncode == 0 and "api_calls" in granted.stdout, granted.stderr
    status, body = await admin.call("GET", f"/v1/tenants/{tenant}/meters")
    assert status == 200 and [m["eventName"] for m in body["meters"]] == ["api_calls"], body
    listed = cli(env, "meters", "list", "--tenant", tenant)
    assert "api_calls" in listed.stdout, listed.stderr
    assert cli(env, "meters", "revoke", "--tenant", tenant, "api_calls").returncode == 0
    missing = cli(env, "meters", "revoke", "--tenant", tenant, "api_calls")
    assert missing.returncode == 1 and "not granted" in missing.stderr
    refused = cli(env, "keys", "create", "--tenant", tenant, "--scopes", "admin,operator")
    assert refused.returncode == 1 and "operator" in refused.stderr


async def test_a_stripe_customer_whose_metadata_names_a_tenant_is_that_tenants_alone(
    env: Settings, emulator: tuple[EmulatorState, str]
) -> None:
    """By default a tenant's key binds any Stripe customer no other tenant binds, but not one whose
    metadata names another tenant; with STRIPEMETER_CUSTOMER_OWNERSHIP=stripe-metadata, only one whose
    metadata names its own tenant. Operators bind any; bindings made before the switch stay."""
    state, base = emulator
    a, b = f"oa-{uuid.uuid4().hex[:6]}", f"ob-{uuid.uuid4().hex[:6]}"
    owned_by_b = state.create_customer({"email": "b@example.com", "metadata": {"stripemeter_tenant": b}})[
        "id"
    ]
    owned_by_a = state.create_customer({"email": "a@example.com", "metadata": {"stripemeter_tenant": a}})[
        "id"
    ]
    unnamed = state.create_customer({"email": "x@example.com"})["id"]
    unnamed_2 = state.create_customer({"email": "y@example.com"})["id"]
    tokens = {
        "a": await keys.create(env, a, "admin", None),
        "b": await keys.create(env, b, "admin", None),
        "operator": await keys.create(env, "*", "admin,operator", None),
    }
    for ownership in ("first-binding", "stripe-metadata"):
        settings = env.with_overrides(
            auth_enabled=True,
            rate_limit_per_second=1000,
            customer_ownership=ownership,
            **emulator_settings(base),
        )
        client = TestClient(TestServer(create_api(settings)))
        await client.start_server()
        try:
            admin_a, admin_b = Caller(client, tokens["a"]), Caller(client, tokens["b"])
            operator = Caller(client, tokens["operator"])
            status, body = await admin_a.call("PUT", f"/v1/customers/{a}/x", {"stripeCustomerId": owned_by_b})
            assert status == 403 and body["error"]["code"] == "stripe_customer_forbidden", (ownership, body)
            assert body["error"]["field"] == "stripeCustomerId"
            assert (await admin_b.call("PUT", f"/v1/customers/{b}/x", {"stripeCustomerId": owned_by_b}))[
                0
            ] == 200
            assert (await admin_a.call("PUT", f"/v1/customers/{a}/y", {"stripeCustomerId": owned_by_a}))[
                0
            ] == 200
            status, body = await admin_a.call("PUT", f"/v1/customers/{a}/z", {"stripeCustomerId": unnamed})
            if ownership == "first-binding":
                assert status == 200, body
            else:
                assert status == 403 and body["error"]["code"] == "stripe_customer_not_owned", body
                status, body = await admin_a.call(
                    "PUT", f"/v1/customers/{a}/n", {"stripeCustomerId": "cus_none"}
                )
                assert status == 403 and "no such customer" in body["error"]["message"], body
                # an operator binds any; what was bound before the switch is still bound
                assert (await operator.call("PUT", f"/v1/customers/{a}/w", {"stripeCustomerId": unnamed_2}))[
                    0
                ] == 200
                status, body = await admin_a.call("GET", f"/v1/customers/{a}")
                bound = {c["customerRef"]: c["stripeCustomerId"] for c in body["customers"]}
                assert bound == {"y": owned_by_a, "z": unnamed, "w": unnamed_2}, bound
        finally:
            await client.close()
