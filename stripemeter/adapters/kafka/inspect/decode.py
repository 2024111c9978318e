"""Kafka record bytes -> named fields, per topic kind (pure; never raises on bad input).

Contract topics keep their records as they are. Internal topics carry compact arrays, read here by
their definitions (``stripemeter/schemas/records.py``, ``stripemeter/schemas/ledger_items.py``,
``stripemeter/schemas/dedupe.py``, ``stripemeter/core/counting.py``) and shown with the contract's
field names. Anything that does not fit - not UTF-8, not JSON, or JSON of another shape - becomes a
``binary`` or ``raw`` record with a short preview, so one bad message never stops a tail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from stripemeter.adapters.kafka.inspect.kinds import Kind
from stripemeter.core.counting import SEP, split_counter_key
from stripemeter.domain.policy import AGGREGATIONS
from stripemeter.domain.timefmt import iso_hour, iso_ms
from stripemeter.domain.units import micros_to_number
from stripemeter.schemas.dedupe import as_entry
from stripemeter.schemas.ledger_items import decode_ledger_item
from stripemeter.schemas.records import KeyedItem, as_keyed

PREVIEW_CHARS = 120
PREVIEW_BYTES = 32


@dataclass(frozen=True)
class Decoded:
    """One record to show: an event of an array message gives one each."""

    label: str  # event, dead-letter, late, delta, drift, keyed, ledger, dedupe, counter, watermark,
    # json, tombstone, empty, raw, binary
    fields: dict[str, Any] = field(default_factory=dict)
    index: int | None = None  # position in an array message
    original: dict[str, Any] | None = None  # a dead letter's input, when it was a JSON object

    def get(self, name: str) -> str | None:
        for source in (self.fields, self.original or {}):
            value = source.get(name)
            if isinstance(value, str):
                return value
        return None

    @property
    def tenant(self) -> str | None:
        return self.get("tenantId")

    @property
    def metric(self) -> str | None:
        return self.get("metric")

    @property
    def customer(self) -> str | None:
        return self.get("customerRef")


def preview_text(text: str, limit: int = PREVIEW_CHARS) -> str:
    """Unprintable characters escaped, cut to ``limit`` with the full length noted."""
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return escaped if len(text) <= limit else f"{escaped}... ({len(text)} chars)"


def preview_bytes(data: bytes, limit: int = PREVIEW_BYTES) -> str:
    hexed = data[:limit].hex(" ")
    return hexed if len(data) <= limit else f"{hexed} ... ({len(data)} bytes)"


def decode_key(key: bytes | None) -> str | None:
    """The key as text, or ``hex:...`` when it is not UTF-8."""
    if key is None:
        return None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return "hex:" + key.hex()


def decode_record(kind: Kind, key: bytes | None, value: bytes | None) -> list[Decoded]:
    if value is None:
        if kind in ("dedupe", "counters", "watermarks"):
            return [_tombstone(kind, key)]
        return [Decoded("empty", {"null": True})]
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [
            Decoded(
                "binary",
                {"size": len(value), "error": f"not UTF-8 at byte {exc.start}", "hex": preview_bytes(value)},
            )
        ]
    if not text.strip():
        return [Decoded("empty", {"size": len(value)})]
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return [Decoded("raw", {"size": len(value), "error": "not JSON", "text": preview_text(text)})]
    try:
        return _DECODERS[kind](key, parsed)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return [
            Decoded(
                "raw",
                {"size": len(value), "error": f"JSON is not {kind} shaped", "text": preview_text(text)},
            )
        ]


def _unexpected(kind: str, value: Any, index: int | None = None) -> Decoded:
    text = orjson.dumps(value).decode()
    return Decoded("raw", {"error": f"JSON is not {kind} shaped", "text": preview_text(text)}, index)


def _objects(label: str, value: Any) -> list[Decoded]:
    """One object, or an array of them (usage.events allows both)."""
    if isinstance(value, dict):
        return [Decoded(label, value)]
    if isinstance(value, list):
        return [
            Decoded(label, item, i) if isinstance(item, dict) else _unexpected(label, item, i)
            for i, item in enumerate(value)
        ]
    return [_unexpected(label, value)]


def _object(label: str, required: str, value: Any) -> list[Decoded]:
    if not isinstance(value, dict) or required not in value:
        return [_unexpected(label, value)]
    return [Decoded(label, value)]


def _dead_letter(key: bytes | None, value: Any) -> list[Decoded]:
    """The input is kept as a string in ``raw``; parsed, it gives tenant, metric and customer, so
    filters find the rejects of one tenant."""
    if not isinstance(value, dict) or "error" not in value:
        return [_unexpected("dead-letter", value)]
    raw = value.get("raw")
    original = None
    if isinstance(raw, str) and value.get("rawEncoding") != "base64":
        try:
            original = orjson.loads(raw)
        except orjson.JSONDecodeError:
            original = None
    return [Decoded("dead-letter", value, original=original if isinstance(original, dict) else None)]


def _keyed_fields(item: KeyedItem) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "tenantId": item.tenant_id,
        "metric": item.metric,
        "customerRef": item.customer_ref,
        "quantity": micros_to_number(item.quantity_micros),
        "ts": iso_ms(item.ts_ms),
        "idempotencyKey": item.idempotency_key,
        "keyDerived": bool(item.key_derived),
        "source": {
            "partition": item.source_partition,
            "offset": item.source_offset,
            "index": item.source_index,
        },
    }
    if item.resource_id is not None:
        fields["resourceId"] = item.resource_id
    if item.meta is not None:
        fields["meta"] = item.meta
    return fields


def _items(value: Any) -> Any:
    """An array message's items: after the record format's version in the current format
    (``[2, item, ...]``, schemas/versions.py), the whole array in the previous one."""
    if isinstance(value, list) and value and type(value[0]) is int:
        return value[1:]
    return value


def _state(value: Any) -> Any:
    """A changelog value without its format's version (``["v2", ...]``); the previous format as is."""
    if isinstance(value, list) and value and isinstance(value[0], str) and value[0].startswith("v"):
        return value[1] if len(value) == 2 and isinstance(value[1], int) else value[1:]
    return value


def _keyed(key: bytes | None, value: Any) -> list[Decoded]:
    return [Decoded("keyed", _keyed_fields(as_keyed(item)), i) for i, item in enumerate(_items(value))]


def _ledger(key: bytes | None, value: Any) -> list[Decoded]:
    decoded = []
    for i, item in enumerate(_items(value)):
        record = decode_ledger_item(item)
        decoded.append(Decoded("ledger", {"outcome": record.outcome, **_keyed_fields(record.keyed)}, i))
    return decoded


def _dedupe(key: bytes | None, value: Any) -> list[Decoded]:
    tenant, idempotency_key = _text_key(key).split(SEP, 1)
    entry = as_entry(_state(value))
    return [
        Decoded(
            "dedupe",
            {
                "tenantId": tenant,
                "idempotencyKey": idempotency_key,
                "metric": entry.metric,
                "customerRef": entry.customer_ref,
                "ts": iso_ms(entry.ts_ms),
                "source": {
                    "partition": entry.source_partition,
                    "offset": entry.source_offset,
                    "index": entry.source_index,
                },
                "keyedOffset": entry.keyed_offset,
            },
        )
    ]


def _counter(key: bytes | None, value: Any) -> list[Decoded]:
    tenant, metric, customer, bucket_ms = split_counter_key(_text_key(key))
    value = _state(value)
    micros, seq, applied, last_ts = value[:4]
    fields: dict[str, Any] = {
        "tenantId": tenant,
        "metric": metric,
        "customerRef": customer,
        "bucket": iso_hour(bucket_ms),
        "value": micros_to_number(micros),
        "valueMicros": micros,
        "seq": seq,
        "appliedOffset": applied,
    }
    if last_ts >= 0:
        fields["lastTs"] = iso_ms(last_ts)
    if len(value) >= 9:  # every aggregation's total (core/counting.py)
        sum_micros, events, last_micros, adjusted, code = value[4:9]
        fields["aggregation"] = AGGREGATIONS[code]
        fields["sumMicros"], fields["events"], fields["lastMicros"] = sum_micros, events, last_micros
        fields["adjustedMicros"] = adjusted
    return [Decoded("counter", fields)]


def _watermark(key: bytes | None, value: Any) -> list[Decoded]:
    tenant, metric, customer = _text_key(key).split(SEP, 2)
    value = _state(value)
    if not isinstance(value, int):
        raise ValueError("a watermark is epoch milliseconds")
    fields = {"tenantId": tenant, "metric": metric, "customerRef": customer, "watermark": iso_ms(value)}
    return [Decoded("watermark", fields)]


def _other(key: bytes | None, value: Any) -> list[Decoded]:
    return [Decoded("json", value if isinstance(value, dict) else {"value": value})]


def _text_key(key: bytes | None) -> str:
    if key is None:
        raise ValueError("this topic's records need a key")
    return key.decode("utf-8")  # UnicodeDecodeError is a ValueError


def _tombstone(kind: Kind, key: bytes | None) -> Decoded:
    """A null value: on a compacted changelog it deletes the key (dedupe expiry)."""
    fields: dict[str, Any] = {}
    text = decode_key(key)
    if text is not None and SEP in text:
        parts = text.split(SEP)
        names = {"dedupe": ("tenantId", "idempotencyKey")}.get(kind, ("tenantId", "metric", "customerRef"))
        fields.update(zip(names, parts, strict=False))
    return Decoded("tombstone", fields)


_DECODERS = {
    "events": lambda key, value: _objects("event", value),
    "dlq": _dead_letter,
    "late": lambda key, value: _object("late", "watermark", value),
    "deltas": lambda key, value: _object("delta", "bucket", value),
    "drift": lambda key, value: _object("drift", "period", value),
    "keyed": _keyed,
    "ledger": _ledger,
    "dedupe": _dedupe,
    "counters": _counter,
    "watermarks": _watermark,
    "other": _other,
}
