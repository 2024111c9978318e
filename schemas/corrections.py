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

from stripemeter.schemas.packing import payload_limit
from stripemeter.schemas.partitioning import keyed_routing_key, partition_for

Kind = Literal["add", "last"]
# control messages are packed by bytes to what any topic takes unless lowered (the broker's default
# max.message.bytes); one correction is under a kilobyte (bounded names and numbers)
CONTROL_LIMIT = payload_limit(1024 * 1024) - len(b'{"corrections":}')


@dataclass(frozen=True)
class Correction:
    id: str  # deterministic: the same correction sent again is recognised
    tenant_id: str
    metric: str
    customer_ref: str
    bucket_ms: int
    kind: Kind  # "add": micros join the total; "last": the value at ts_ms, if newer than the counter's
    micros: int
    ts_ms: int


def is_control(raw: bytes) -> bool:
    return raw[:1] == b"{"


def encode_correction(c: Correction) -> bytes:
    return orjson.dumps([c.id, c.tenant_id, c.metric, c.customer_ref, c.bucket_ms, c.kind, c.micros, c.ts_ms])


def encode_control(corrections: list[Correction]) -> bytes:
    return control_message(b"[" + b",".join(map(encode_correction, corrections)) + b"]")


def control_message(array: bytes) -> bytes:
    return b'{"corrections":' + array + b"}"


def decode_control(raw: bytes) -> list[Correction]:
    return [Correction(*item) for item in orjson.loads(raw)["corrections"]]


def by_partition(corrections: list[Correction], partitions: int) -> dict[int, list[Correction]]:
    """The keyed partition of each correction: where intake sends its stream's events."""
    routed: dict[int, list[Correction]] = defaultdict(list)
    for c in corrections:
        routed[partition_for(keyed_routing_key(c.tenant_id, c.customer_ref), partitions)].append(c)
    return routed
