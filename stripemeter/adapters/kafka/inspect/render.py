"""Decoded records -> one readable line, or one JSON Lines object (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from stripemeter.adapters.kafka.inspect.decode import Decoded, preview_text
from stripemeter.domain.timefmt import iso_ms
from stripemeter.schemas import drift

SHORT_NAMES = {"tenantId": "tenant", "customerRef": "customer", "idempotencyKey": "key"}
_EVENT = ("tenantId", "metric", "customerRef", "quantity", "ts", "idempotencyKey", "resourceId")
_KEYED = ("tenantId", "metric", "customerRef", "quantity", "ts", "idempotencyKey", "source")
TEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "event": _EVENT,
    "late": (*_EVENT, "watermark", "lateness"),
    "delta": ("tenantId", "metric", "customerRef", "bucket", "total", "seq"),
    "drift": drift.SUMMARY_NAMES,
    "keyed": _KEYED,
    "ledger": ("outcome", *_KEYED),
    "dedupe": ("tenantId", "idempotencyKey", "metric", "customerRef", "ts", "source", "keyedOffset"),
    "counter": ("tenantId", "metric", "customerRef", "bucket", "value", "seq", "appliedOffset"),
    "watermark": ("tenantId", "metric", "customerRef", "watermark"),
    "tombstone": ("tenantId", "idempotencyKey", "metric", "customerRef"),
}
LABELS_IN_BRACKETS = {"raw", "binary", "empty", "tombstone"}


@dataclass(frozen=True)
class Position:
    """Where a record was read."""

    topic: str  # as shown: the logical name for contract topics
    partition: int
    offset: int
    timestamp_ms: int
    key: str | None


def text_line(position: Position, record: Decoded) -> str:
    where = f"{position.topic} {position.partition}@{position.offset}"
    if record.index is not None:
        where += f"[{record.index}]"
    label = f"[{record.label}]" if record.label in LABELS_IN_BRACKETS else record.label
    fields = record.fields
    if record.label == "raw":
        size = f" ({fields['size']} bytes)" if "size" in fields else ""
        body = f"{fields.get('error')}{size}: {fields.get('text')}"
    elif record.label == "binary":
        body = f"{fields.get('size')} bytes, {fields.get('error')}: {fields.get('hex')}"
    elif record.label == "empty":
        body = "null value" if fields.get("null") else f"{fields.get('size')} bytes"
    elif record.label == "dead-letter":
        body = _dead_letter_text(record)
    elif record.label == "json":
        body = preview_text(orjson.dumps(record.fields).decode())
    else:
        body = _pairs(record.fields, TEXT_FIELDS.get(record.label, tuple(record.fields)))
    return f"{iso_ms(position.timestamp_ms)} {where} {label} {body}".rstrip()


def json_line(position: Position, record: Decoded) -> str:
    out: dict[str, Any] = {
        "topic": position.topic,
        "partition": position.partition,
        "offset": position.offset,
        "timestamp": iso_ms(position.timestamp_ms),
        "key": position.key,
        "kind": record.label,
    }
    if record.index is not None:
        out["index"] = record.index
    out["record"] = record.fields
    return orjson.dumps(out).decode()


def _dead_letter_text(record: Decoded) -> str:
    error = record.fields.get("error")
    error = error if isinstance(error, dict) else {"message": error}
    parts = [_pairs(error, ("code", "field", "message"))]
    if record.original is not None:
        parts.append(_pairs(record.original, ("tenantId", "metric", "customerRef", "idempotencyKey")))
    source = f"{record.fields.get('topic')}:{record.fields.get('partition')}@{record.fields.get('offset')}"
    if record.fields.get("index") is not None:
        source += f"[{record.fields['index']}]"
    parts.append(f"input={source}")
    raw = record.fields.get("raw")
    if isinstance(raw, str):
        encoding = record.fields.get("rawEncoding")
        parts.append(f"raw{'(' + encoding + ')' if encoding else ''}={_quote(preview_text(raw, 80))}")
    return " ".join(p for p in parts if p)


def _pairs(fields: dict[str, Any], names: tuple[str, ...]) -> str:
    return " ".join(
        f"{SHORT_NAMES.get(name, name)}={_value(fields[name])}"
        for name in names
        if fields.get(name) is not None
    )


def _value(value: Any) -> str:
    if isinstance(value, dict) and {"partition", "offset"} <= value.keys():
        index = value.get("index")
        return f"{value['partition']}@{value['offset']}" + (f"[{index}]" if index else "")
    if isinstance(value, str):
        return _quote(value)
    return orjson.dumps(value).decode()


def _quote(text: str) -> str:
    """Bare when it is one plain token, else JSON-quoted (escapes control characters)."""
    if text and text.isprintable() and not any(c in text for c in ' "='):
        return text
    return orjson.dumps(text).decode()
