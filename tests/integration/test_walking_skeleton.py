"""One event end to end through the real pieces: Kafka -> Faust worker -> PostgreSQL -> HTTP API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from stripemeter.domain.config import Settings
from tests.integration.client import eventually, produce
from tests.integration.harness import ApiClient, StartWorker


async def test_event_reaches_usage_history(env: Settings, start_worker: StartWorker, api: ApiClient) -> None:
    worker = start_worker()
    worker.wait_ready()
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    await produce(
        env,
        [
            {
                "tenantId": tenant,
                "metric": "requests",
                "customerRef": "acme-42",
                "quantity": 3,
                "ts": hour.isoformat().replace("+00:00", "Z"),
            }
        ],
    )
    params = {"tenantId": tenant, "metric": "requests", "customerRef": "acme-42"}

    async def counted() -> bool:
        response = await api.get("/v1/usage/history", params=params)
        assert response.status == 200
        total: float = (await response.json())["total"]
        return total == 3

    await eventually(counted, what="the event in /v1/usage/history")
    body = await (await api.get("/v1/usage/history", params=params)).json()
    assert body["series"] == [{"start": hour.strftime("%Y-%m-%dT%H:%M:%SZ"), "value": 3}]


async def test_health_live_answers(api: ApiClient) -> None:
    response = await api.get("/health/live")
    assert (response.status, await response.json()) == (200, {"status": "alive"})


async def test_history_names_the_missing_parameter(api: ApiClient) -> None:
    response = await api.get("/v1/usage/history", params={"tenantId": "x", "metric": "m"})
    assert response.status == 400
    assert (await response.json())["error"]["field"] == "customerRef"
