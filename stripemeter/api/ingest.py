"""POST /v1/events/ingest: judge each event as intake will, write the accepted ones durably to usage.events.

An event is ``accepted`` only when intake is bound to read it as a valid event: the endpoint validates
it with ``parse_event``, encodes it as it will be written (compact JSON, with its derived
idempotencyKey), and runs intake's own ``decode_message`` on those bytes inside an array, as they
will be read. So what it accepts is counted (or found a duplicate, or late) and never dead-lettered.
Per-event faults, including those orjson refuses inside one event (see ``ingest_body``), are answered
per event with intake's code and the field at fault; no body gets a 500.

"accepted" means the broker acknowledged the message holding the event (acks=all). Accepted events
are written as JSON arrays of at most ``events.MAX_MESSAGE_BYTES`` (1 MiB, what intake reads) and
``events.MAX_BATCH`` events each, one customer's a message, keyed ``tenantId:customerRef`` as the
contract suggests producers do (ops/TOPICS.md): a customer's events keep their order in one
partition, and a tenant's customers spread over all of them, so no tenant pins one partition.

An event without idempotencyKey is written as the client sent it: intake derives the same key from the
same fields (schemas/events.py), so a client that retries the same body after a timeout or a 503 gets
every event counted once, and the ledger shows the key as derived (`idempotencyKeyDerived`) whether the
event came over HTTP or straight to Kafka.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from stripemeter.api.appkeys import PRODUCER, SETTINGS
from stripemeter.api.auth import may_see
from stripemeter.api.errors import bad_request, json_response
from stripemeter.api.ingest_body import Unreadable, decode_event, split_events
from stripemeter.domain.errors import Transient
from stripemeter.domain.metrics import INGEST_EVENTS
from stripemeter.schemas.events import (
    MAX_BATCH,
    MAX_MESSAGE_BYTES,
    InvalidEvent,
    UsageEvent,
    decode_message,
    parse_event,
)
from stripemeter.schemas.topics import TopicNames

log = logging.getLogger(__name__)

CHUNK_BYTES = MAX_MESSAGE_BYTES  # a usage.events message intake reads whole
# the most an event may take as written: inside "[...]", so one event alone still makes a message
MAX_EVENT_BYTES = MAX_MESSAGE_BYTES - 2
KNOWN_FIELDS = frozenset(
    ("tenantId", "metric", "customerRef", "quantity", "ts", "idempotencyKey", "resourceId", "meta")
)


def chunk_by_size(encoded: list[bytes], limit: int = CHUNK_BYTES, max_events: int = MAX_BATCH) -> list[bytes]:
    """Join JSON-encoded events into JSON arrays of at most ``limit`` bytes and ``max_events`` events."""
    chunks: list[bytes] = []
    current: list[bytes] = []
    size = 2
    for item in encoded:
        if len(item) + 2 > limit:
            raise ValueError(f"an event of {len(item)} bytes does not fit a message of {limit}")
        if current and (size + len(item) + 1 > limit or len(current) == max_events):
            chunks.append(b"[" + b",".join(current) + b"]")
            current, size = [], 2
        current.append(item)
        size += len(item) + (1 if len(current) > 1 else 0)
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


def read_events(raw: bytes) -> list[Any]:
    """The body's events, decoded; an event orjson refuses on its own is an InvalidEvent in its place."""
    try:
        return validate_body(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        whole = exc
    try:  # the fault may be inside one event: judge each on its own
        outline, elements = split_events(raw)
    except Unreadable:
        raise bad_request("body", f"is not valid JSON ({whole.msg})", code="invalid_json") from None
    validate_body(outline)  # the outline holds a 0 for each event
    return [decode_event(element) for element in elements]


def encode(obj: dict[str, Any]) -> bytes:
    """The event as written: the client's object. An unknown field orjson cannot write (nested beyond
    254 levels) is left out: unknown fields are ignored anyway."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return orjson.dumps({k: v for k, v in obj.items() if k in KNOWN_FIELDS or _writable(v)})


def _writable(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return False
    return True


def judge(obj: Any, now_ms: int) -> tuple[UsageEvent, bytes] | InvalidEvent:
    """Intake's verdict on ``obj`` as the endpoint would write it: the event and its bytes, or why not."""
    if isinstance(obj, InvalidEvent):
        return obj
    try:
        event = parse_event(obj, now_ms)
    except InvalidEvent as error:
        return error
    encoded = encode(obj)
    if len(encoded) > MAX_EVENT_BYTES:
        largest = max(obj, key=lambda k: len(orjson.dumps(obj[k])) if _writable(obj[k]) else 0)
        return InvalidEvent(
            "too_large",
            f"the event is {len(encoded)} bytes as JSON, its largest field {largest!r}; a usage.events"
            f" message is at most {MAX_MESSAGE_BYTES} bytes",
            largest,
        )
    (read,) = decode_message(b"[" + encoded + b"]", now_ms)  # what intake will make of these bytes
    if isinstance(read, InvalidEvent):  # not expected: parse_event said yes to the same content
        log.warning("ingest: intake would refuse an event parse_event accepted: %s", read.message)
        return InvalidEvent(read.code, read.message, read.field)
    if read != event:
        log.warning("ingest: an event reads back differently as written: %r != %r", read, event)
        return InvalidEvent("unwritable", "the event does not read back the same once written as JSON")
    return event, encoded


def _echo_key(obj: Any) -> str | None:
    """The client's idempotencyKey when it is one (a valid string), for a rejected event's result."""
    key = obj.get("idempotencyKey") if isinstance(obj, dict) else None
    return key if isinstance(key, str) and 1 <= len(key) <= 255 and "\x00" not in key else None


def _error(error: InvalidEvent) -> dict[str, Any]:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.field is not None:
        body["field"] = error.field
    return body


async def ingest(request: web.Request) -> web.Response:
    events = read_events(await request.read())
    now_ms = request.app[SETTINGS].clock.ms()
    results: list[dict[str, Any]] = []
    accepted: dict[bytes, list[bytes]] = {}  # by message key, in input order
    for index, obj in enumerate(events):
        verdict = judge(obj, now_ms)
        if isinstance(verdict, InvalidEvent):
            results.append(
                {
                    "index": index,
                    "idempotencyKey": _echo_key(obj),
                    "status": "rejected",
                    "error": _error(verdict),
                }
            )
            continue
        event, encoded = verdict
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
        accepted.setdefault(message_key(event), []).append(encoded)
        results.append({"index": index, "idempotencyKey": event.idempotency_key, "status": "accepted"})
    if accepted:
        settings = request.app[SETTINGS]
        topic = TopicNames(settings.topic_prefix, settings.app_id).events
        messages = [(key, chunk) for key, items in accepted.items() for chunk in chunk_by_size(items)]
        await _write(request.app[PRODUCER], topic, messages)
    count = sum(len(items) for items in accepted.values())
    INGEST_EVENTS.labels("accepted").inc(count)
    INGEST_EVENTS.labels("rejected").inc(len(events) - count)
    return json_response({"accepted": count, "rejected": len(events) - count, "results": results}, status=202)


def message_key(event: UsageEvent) -> bytes:
    """The usage.events key of an event: ``tenantId:customerRef`` (see the module's docstring)."""
    return f"{event.tenant_id}:{event.customer_ref}".encode()


async def _write(producer: AIOKafkaProducer, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    try:
        futures = [await producer.send(topic, chunk, key=key) for key, chunk in messages]
        for future in futures:
            await future
    except KafkaError as exc:
        raise Transient(
            f"could not write to {topic} ({type(exc).__name__}); nothing is confirmed, retry the same body",
            code="kafka_unavailable",
        ) from exc
