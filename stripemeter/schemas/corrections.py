"""Corrections for the meter, sent through the keyed topic: replays and adjustments.

A control message is a JSON object (event messages are JSON arrays) in the keyed partition of the
counters it corrects, so it is applied in order with the events and under the same exactly-once rules:
the counter's applied offset stops a redelivered message, and the dedupe table stops the same
correction sent twice in two messages (its id is recorded like an idempotency key).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import orjson

from stripemeter.schemas import versions
from stripemeter.schemas.packing import payload_limit
from stripemeter.schemas.partitioning import keyed_routing_key, partition_for

# "add": signed micro-units added to a sum or count value (an adjustment); "events": events counted
# late (a replay), folded every way: ``micros`` their sum, ``events`` how many, ``ts_ms`` and
# ``last_micros`` the newest; "last": the value at ts_ms, if newer than the counter's (older replays)
Kind = Literal["add", "events", "last"]
# control messages are packed by bytes to what any topic takes unless lowered (the broker's default
# max.message.bytes); one correction is under a kilobyte (bounded names and numbers)
CONTROL_LIMIT = payload_limit(1024 * 1024) - len(b'{"corrections":,"v":2}')


@dataclass(frozen=True)
class Correction:
    id: str  # deterministic: the same correction sent again is recognised
    tenant_id: str
    metric: str
    customer_ref: str
    bucket_ms: int
    kind: Kind
    micros: int
    ts_ms: int
    events: int = 0  # "events" only
    last_micros: int = 0  # "events" only


def events_correction(
    ident: str, tenant: str, metric: str, customer: str, bucket_ms: int, events: list[tuple[int, int]]
) -> Correction:
    """A correction counting ``events`` ((quantity micros, ts ms) each) into one counter."""
    last_micros, last_ts = 0, -1
    for micros, ts_ms in events:
        if ts_ms >= last_ts:
            last_micros, last_ts = micros, ts_ms
    total = sum(micros for micros, _ in events)
    return Correction(
        ident, tenant, metric, customer, bucket_ms, "events", total, last_ts, len(events), last_micros
    )


def is_control(raw: bytes) -> bool:
    return raw[:1] == b"{"


def encode_correction(c: Correction) -> bytes:
    fields = [c.id, c.tenant_id, c.metric, c.customer_ref, c.bucket_ms, c.kind, c.micros, c.ts_ms]
    if c.kind == "events":
        fields += [c.events, c.last_micros]
    return orjson.dumps(fields)


def encode_control(corrections: list[Correction]) -> bytes:
    return control_message(b"[" + b",".join(map(encode_correction, corrections)) + b"]")


def control_message(array: bytes) -> bytes:
    """The control message of a JSON array of encoded corrections, in the written record format."""
    tail = b',"v":2}' if versions.write_version() >= versions.CURRENT else b"}"
    return b'{"corrections":' + array + tail


def decode_control(raw: bytes) -> list[Correction]:
    value = orjson.loads(raw)
    versions.object_version(value, "a control message")
    return [Correction(*item) for item in value["corrections"]]


def by_partition(corrections: list[Correction], partitions: int) -> dict[int, list[Correction]]:
    """The keyed partition of each correction: where intake sends its stream's events."""
    routed: dict[int, list[Correction]] = defaultdict(list)
    for c in corrections:
        routed[partition_for(keyed_routing_key(c.tenant_id, c.customer_ref), partitions)].append(c)
    return routed
