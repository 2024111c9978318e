"""Billing meter objects: creation rules, the one updatable field, and status changes.

A meter maps an `event_name` (unique among meters) to an aggregation formula (`sum`, `count`, `last`),
the payload key naming the customer (`customer_mapping.event_payload_key`, default
`stripe_customer_id`) and the payload key holding the value (`value_settings.event_payload_key`,
default `value`). Only `display_name` can change after creation; deactivate/reactivate flip `status`.
"""

from __future__ import annotations

from typing import Any

from stripemeter.stripe_emulator.errors import invalid, reject_unknown, required

FORMULAS = ("sum", "count", "last")
WINDOWS = ("hour", "day")
CREATE_PARAMS = {
    "display_name",
    "event_name",
    "default_aggregation",
    "customer_mapping",
    "value_settings",
    "event_time_window",
}


def _nested(params: dict[str, Any], name: str, allowed: set[str]) -> dict[str, Any]:
    value = params.get(name, {})
    if not isinstance(value, dict):
        raise invalid(f"Invalid {name}: must be an object.", param=name)
    reject_unknown(value, allowed, prefix=name)
    return value


def new_meter(params: dict[str, Any], meter_id: str, now: int) -> dict[str, Any]:
    """Validate create params and build the `billing.meter` object."""
    reject_unknown(params, CREATE_PARAMS)
    display_name = required(params, "display_name")
    event_name = required(params, "event_name")
    if len(event_name) > 100:
        raise invalid("Invalid event_name: must be at most 100 characters.", param="event_name")
    aggregation = _nested(params, "default_aggregation", {"formula"})
    formula = required(aggregation, "formula", "default_aggregation[formula]")
    if formula not in FORMULAS:
        raise invalid(
            f"Invalid default_aggregation[formula]: must be one of {', '.join(FORMULAS)}",
            param="default_aggregation[formula]",
        )
    mapping = _nested(params, "customer_mapping", {"event_payload_key", "type"})
    if mapping.get("type", "by_id") != "by_id":
        raise invalid("Invalid customer_mapping[type]: must be by_id", param="customer_mapping[type]")
    value_settings = _nested(params, "value_settings", {"event_payload_key"})
    window = params.get("event_time_window") or None
    if window is not None and window not in WINDOWS:
        raise invalid("Invalid event_time_window: must be one of hour, day", param="event_time_window")
    return {
        "id": meter_id,
        "object": "billing.meter",
        "created": now,
        "customer_mapping": {
            "event_payload_key": mapping.get("event_payload_key") or "stripe_customer_id",
            "type": "by_id",
        },
        "default_aggregation": {"formula": formula},
        "display_name": display_name,
        "event_name": event_name,
        "event_time_window": window,
        "livemode": False,
        "status": "active",
        "status_transitions": {"deactivated_at": None},
        "updated": now,
        "value_settings": {"event_payload_key": value_settings.get("event_payload_key") or "value"},
    }


def updated_meter(meter: dict[str, Any], params: dict[str, Any], now: int) -> dict[str, Any]:
    reject_unknown(params, {"display_name"})
    if "display_name" not in params:
        return meter
    return {**meter, "display_name": required(params, "display_name"), "updated": now}


def with_status(meter: dict[str, Any], status: str, now: int) -> dict[str, Any]:
    if meter["status"] == status:
        raise invalid(f"The meter {meter['id']} is already {status}.")
    deactivated_at = now if status == "inactive" else None
    return {
        **meter,
        "status": status,
        "status_transitions": {"deactivated_at": deactivated_at},
        "updated": now,
    }
