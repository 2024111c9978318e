"""A valid event written back as the contract's JSON object (normalised: quantity as a number of
units, ``ts`` in UTC with milliseconds), for records that carry the event as received: usage.late
records and the meter's dead letters."""

from __future__ import annotations

from typing import Any

from stripemeter.domain.timefmt import iso_ms, parse_iso_ms
from stripemeter.domain.units import micros_to_number
from stripemeter.schemas.events import UsageEvent, parse_quantity


def event_json(event: UsageEvent) -> dict[str, Any]:
    """The event as received, normalised (the contract's fields)."""
    record: dict[str, Any] = {
        "tenantId": event.tenant_id,
        "metric": event.metric,
        "customerRef": event.customer_ref,
        "quantity": micros_to_number(event.quantity_micros),
        "ts": iso_ms(event.ts_ms),
        "idempotencyKey": event.idempotency_key,
    }
    if event.resource_id is not None:
        record["resourceId"] = event.resource_id
    if event.meta is not None:
        record["meta"] = event.meta
    return record


def event_from_json(record: dict[str, Any], key_derived: bool = False) -> UsageEvent:
    """``event_json``'s inverse (the object does not say whether the key was derived)."""
    return UsageEvent(
        record["tenantId"],
        record["metric"],
        record["customerRef"],
        parse_quantity(record["quantity"]),
        parse_iso_ms(record["ts"]),
        record["idempotencyKey"],
        key_derived,
        record.get("resourceId"),
        record.get("meta"),
    )
