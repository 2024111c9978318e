"""The usage.deltas record: a counter's new absolute total and its sequence number.

Besides the contract's fields it carries ``totalMicros`` (the exact total) and where the counter's
keyed messages are applied up to (``keyedPartition``, ``keyedOffset``): a replay or an adjustment
knows the offset of the control message it sent, so it can tell when the counters show it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from stripemeter.domain.timefmt import iso_hour, parse_iso_ms
from stripemeter.domain.units import MICROS, micros_to_number
from stripemeter.schemas import versions
from stripemeter.schemas.held_json import dumps_held


class Delta(NamedTuple):
    tenant_id: str
    metric: str
    customer_ref: str
    bucket_ms: int
    total_micros: int
    seq: int  # grows with every change of this counter; consumers keep the highest
    keyed_partition: int = -1  # the keyed partition that feeds the counter
    keyed_offset: int = -1  # the last keyed message applied to it


def encode_delta(delta: Delta) -> bytes:
    """Contract fields plus ``totalMicros``, the exact total in micro-units (floats can round), and the
    keyed message applied last. The record format's version (``"v"``) comes first, so that the sink sees
    it without parsing (``record_version``)."""
    record: dict[str, Any] = {"v": versions.CURRENT} if versions.write_version() >= versions.CURRENT else {}
    record |= {
        "tenantId": delta.tenant_id,
        "metric": delta.metric,
        "customerRef": delta.customer_ref,
        "bucket": iso_hour(delta.bucket_ms),
        "total": micros_to_number(delta.total_micros),
        "seq": delta.seq,
        "totalMicros": delta.total_micros,
    }
    if delta.keyed_offset >= 0:
        record["keyedPartition"] = delta.keyed_partition
        record["keyedOffset"] = delta.keyed_offset
    return dumps_held(record)


def decode_delta(raw: bytes) -> Delta:
    value: dict[str, Any] = orjson.loads(raw)
    versions.object_version(value, "a usage.deltas record")
    micros = value.get("totalMicros")
    if micros is None:
        micros = round(float(value["total"]) * MICROS)
    return Delta(
        value["tenantId"],
        value["metric"],
        value["customerRef"],
        parse_iso_ms(value["bucket"]),
        int(micros),
        int(value["seq"]),
        int(value.get("keyedPartition", -1)),
        int(value.get("keyedOffset", -1)),
    )


def record_version(raw: bytes) -> int:
    """The format of an encoded delta record from its first bytes: ``{"v":N,`` or none (the previous
    release's)."""
    if not raw.startswith(b'{"v":'):
        return versions.PREVIOUS
    return int(raw[5 : raw.index(b",", 5)])
