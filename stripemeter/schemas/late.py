"""The usage.late record: a valid event that came too late to be counted, and why.

A JSON object: the event as received (``event_json``), plus the watermark it failed against (RFC 3339)
and the metric's lateness in whole seconds; the current format adds ``"v": 2`` (``versions.stamp``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from stripemeter.domain.timefmt import iso_ms, parse_iso_ms
from stripemeter.schemas.event_json import event_from_json, event_json
from stripemeter.schemas.events import UsageEvent
from stripemeter.schemas.held_json import dumps_held
from stripemeter.schemas.versions import object_version, stamp


class LateRecord(NamedTuple):
    event: UsageEvent
    watermark_ms: int  # the stream's watermark (or the policy's horizon) it failed against
    lateness_ms: int  # the metric's lateness; the record holds it in seconds


def encode_late(record: LateRecord) -> bytes:
    fields: dict[str, Any] = {
        **event_json(record.event),
        "watermark": iso_ms(record.watermark_ms),
        "lateness": record.lateness_ms // 1000,
    }
    return dumps_held(stamp(fields))


def decode_late(raw: bytes) -> LateRecord:
    """A usage.late record of either format (a later one raises ``versions.UnknownRecordVersion``)."""
    fields = orjson.loads(raw)
    object_version(fields, "a usage.late record")
    return LateRecord(event_from_json(fields), parse_iso_ms(fields["watermark"]), fields["lateness"] * 1000)
