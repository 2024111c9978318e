"""`stripemeter demo`: the local stack, sample usage through real Kafka, and what was counted."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
from aiokafka import AIOKafkaProducer

from stripemeter.config import Settings
from stripemeter.topics import TopicNames

Say = Callable[[str], None]

CUSTOMERS = ("acme-42", "globex-7", "initech-3")


def sample_events(tenant: str, now: datetime) -> list[dict[str, object]]:
    """Three customers, three hours of API calls; deterministic so a rerun adds nothing new."""
    events = []
    for hours_ago in (2, 1, 0):
        hour = (now - timedelta(hours=hours_ago)).replace(minute=5, second=0, microsecond=0)
        for n, customer in enumerate(CUSTOMERS):
            for i in range(n + 2):
                events.append(
                    {
                        "tenantId": tenant,
                        "metric": "requests",
                        "customerRef": customer,
                        "quantity": 10 * (i + 1),
                        "ts": (hour + timedelta(minutes=i)).isoformat().replace("+00:00", "Z"),
                        "idempotencyKey": f"demo-{customer}-{hour:%Y%m%d%H}-{i}",
                    }
                )
    return events


async def produce(settings: Settings, events: list[dict[str, object]]) -> None:
    names = TopicNames(settings.topic_prefix, settings.app_id)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        # Half as single-event messages, half as one array message, plus one bad message.
        half = len(events) // 2
        for event in events[:half]:
            await producer.send(
                names.events, orjson.dumps(event), key=f"{event['tenantId']}:{event['customerRef']}".encode()
            )
        await producer.send(names.events, orjson.dumps(events[half:]))
        await producer.send(names.events, b'{"tenantId": "demo", "quantity": "lots"}')
        await producer.flush()
    finally:
        await producer.stop()


def history(settings: Settings, tenant: str, customer: str, since: datetime) -> dict[str, object]:
    query = urllib.parse.urlencode(
        {
            "tenantId": tenant,
            "metric": "requests",
            "customerRef": customer,
            "since": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )
    url = f"http://{settings.api_host}:{settings.api_port}/v1/usage/history?{query}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def run_demo(settings: Settings, say: Say, tenant: str = "demo") -> int:
    from stripemeter.local.stack import up

    say("== bringing up the local stack")
    up(settings, say)
    now = datetime.now(UTC)
    events = sample_events(tenant, now)
    expected: dict[str, float] = {}
    for e in events:
        expected[str(e["customerRef"])] = expected.get(str(e["customerRef"]), 0) + float(e["quantity"])  # type: ignore[arg-type]
    say(f"== sending {len(events)} usage events (and one malformed message) to usage.events")
    asyncio.run(produce(settings, events))
    # The three hours this run writes; an earlier run wrote the same keys there, so they count once.
    since = (now - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    deadline = time.monotonic() + 60
    results: dict[str, dict[str, object]] = {}
    while time.monotonic() < deadline:
        results = {c: history(settings, tenant, c, since) for c in CUSTOMERS}
        if all(float(results[c]["total"]) >= expected[c] for c in CUSTOMERS):  # type: ignore[arg-type]
            break
        time.sleep(0.5)
    say("== counted usage (GET /v1/usage/history), per customer and hour")
    ok = True
    for customer in CUSTOMERS:
        body = results.get(customer, {"series": [], "total": 0})
        series = " ".join(f"{s['start'][11:16]}={s['value']}" for s in body["series"])  # type: ignore[index,union-attr]
        mark = "ok" if float(body["total"]) == expected[customer] else f"expected {expected[customer]:g}"  # type: ignore[arg-type]
        ok = ok and mark == "ok"
        say(f"  {customer:10}  total={body['total']:<6}  {series}  [{mark}]")
    say("== the malformed message went to usage.events.dlq (see `stripemeter topics list`)")
    return 0 if ok else 1
