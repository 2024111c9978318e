"""POST /v1/events/ingest: validate each event, write the accepted ones durably to usage.events.

"accepted" means the broker acknowledged the message holding the event (acks=all). Accepted events
are written as JSON arrays of up to ``CHUNK_BYTES`` each, so the worker pays its per-message cost
once per chunk. An event without idempotencyKey is written with its derived key, so a client that
retries the same body after a timeout or a 503 gets every event counted once.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from stripemeter.api.appkeys import PRODUCER, SETTINGS
from stripemeter.api.auth import may_see
from stripemeter.api.errors import ApiError, bad_request, json_response

from stripemeter.events import MAX_BATCH, InvalidEvent, parse_event
from stripemeter.metrics import INGEST_EVENTS
from stripemeter.topics import TopicNames

CHUNK_BYTES = 512 * 1024


def chunk_by_size(encoded: list[bytes], limit: int = CHUNK_BYTES) -> list[bytes]:
    """Join JSON-encoded events into JSON arrays of at most ``limit`` bytes (one event may exceed it)."""
    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 2
    for item in encoded:
        if current and size + len(item) + 1 > limit:
            chunks.append(b"[" + b",".join(current) + b"]")
            current, size = [], 2
        current.append(item)
        size += len(item) + 1
    if current:
        chunks.append(b"[" + b",".join(current) + b"]")
    return chunks


def validate_body(body: Any) -> list[Any]:
    if not isinstance(body, dict):
        raise bad_request("body", "must be a JSON object with an events array", code="invalid_body")
    events = body.get("events")
    if not isinstance(events, list):
        raise bad_request("events", "is required and must be an array", code="invalid_body")
    if not 1 <= len(events) <= MAX_BATCH:
        raise bad_request(
            "events", f"must hold 1 to {MAX_BATCH} events, got {len(events)}", code="invalid_body"
        )
    return events


async def ingest(request: web.Request) -> web.Response:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise bad_request("body", "is not valid JSON", code="invalid_json") from None
    events = validate_body(body)
    now_ms = request.app[SETTINGS].clock.ms()
    results: list[dict[str, Any]] = []
    accepted: list[bytes] = []
    tenant = None
    for index, obj in enumerate(events):
        try:
            event = parse_event(obj, now_ms)
        except InvalidEvent as error:
            key = obj.get("idempotencyKey") if isinstance(obj, dict) else None
            results.append(
                {
                    "index": index,
                    "idempotencyKey": key if isinstance(key, str) else None,
                    "status": "rejected",
                    "error": error.as_error(),
                }
            )
            continue
        if not may_see(request, event.tenant_id):
            message = "tenantId: this API key belongs to another tenant"
            error = {"code": "tenant_forbidden", "message": message, "field": "tenantId"}
            results.append(
                {
                    "index": index,
                    "idempotencyKey": event.idempotency_key,
                    "status": "rejected",
                    "error": error,
                }
            )
            continue
        if event.key_derived:
            obj = {**obj, "idempotencyKey": event.idempotency_key}
        accepted.append(orjson.dumps(obj))
        tenant = tenant or event.tenant_id
        results.append({"index": index, "idempotencyKey": event.idempotency_key, "status": "accepted"})
    if accepted:
        settings = request.app[SETTINGS]
        topic = TopicNames(settings.topic_prefix, settings.app_id).events
        await _write(request.app[PRODUCER], topic, (tenant or "").encode(), chunk_by_size(accepted))
    INGEST_EVENTS.labels("accepted").inc(len(accepted))
    INGEST_EVENTS.labels("rejected").inc(len(events) - len(accepted))
    return json_response(
        {"accepted": len(accepted), "rejected": len(events) - len(accepted), "results": results}, status=202
    )


async def _write(producer: AIOKafkaProducer, topic: str, key: bytes, chunks: list[bytes]) -> None:
    try:
        futures = [await producer.send(topic, chunk, key=key) for chunk in chunks]
        for future in futures:
            await future
    except KafkaError as exc:
        raise ApiError(
            "kafka_unavailable",
            f"could not write to {topic} ({type(exc).__name__}); nothing is confirmed, retry the same body",
            status=503,
        ) from exc
