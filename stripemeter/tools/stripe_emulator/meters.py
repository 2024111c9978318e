"""Billing meter objects: creation rules, the one updatable field, and status changes.

A meter maps an `event_name` (unique among meters) to an aggregation formula (`sum`, `count`, `last`),
the payload key naming the customer (`customer_mapping.event_payload_key`, default
`stripe_customer_id`) and the payload key holding the value (`value_settings.event_payload_key`,
default `value`; both keys are required when their hash is given), and an optional `event_time_window`
(`hour` or `day`: events are pre-aggregated, only the newest per customer and window counts). Only
`display_name` can change after creation; deactivate/reactivate flip `status`.
"""

from __future__ import annotations

from typing import Any

from stripemeter.tools.stripe_emulator.stripe_errors import invalid, reject_unknown, required

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
MAX_LENGTHS = {"display_name": 250, "event_name": 100, "event_payload_key": 100}


def _nested(params: dict[str, Any], name: str, allowed: set[str], needed: tuple[str, ...]) -> dict[str, Any]:
    """An optional hash param: when given, an object of known keys holding every `needed` one."""
    value = params.get(name, {})
    if not isinstance(value, dict):
        raise invalid(f"Invalid {name}: must be an object.", param=name)
    if name in params:  # a missing key is named before an unknown one, as stripe-mock (the spec) does
        for key in needed:
            if value.get(key) is None:
                label = f"{name}[{key}]"
                raise invalid(f"Missing required param: {label}.", param=label, code="parameter_missing")
    reject_unknown(value, allowed, prefix=name)
    for key, item in value.items():
        if not isinstance(item, str):
            raise invalid(f"Invalid {name}[{key}]: must be a string.", param=f"{name}[{key}]")
        if len(item) > MAX_LENGTHS.get(key, 5000):
            raise invalid(f"Invalid {name}[{key}]: too long.", param=f"{name}[{key}]")
    return value


def _short(params: dict[str, Any], name: str) -> str:
    value = required(params, name)
    if len(value) > MAX_LENGTHS[name]:
        raise invalid(f"Invalid {name}: must be at most {MAX_LENGTHS[name]} characters.", param=name)
    return value


def check_create(params: dict[str, Any]) -> dict[str, Any]:
    """The shape checks of `POST /v1/billing/meters` (the OpenAPI spec's rules); returns the settings."""
    reject_unknown(params, CREATE_PARAMS)
    if "default_aggregation" not in params:
        raise invalid(
            "Missing required param: default_aggregation.",
            param="default_aggregation",
            code="parameter_missing",
        )
    aggregation = _nested(params, "default_aggregation", {"formula"}, ("formula",))
    formula = aggregation["formula"]
    if formula not in FORMULAS:
        raise invalid(
            f"Invalid default_aggregation[formula]: must be one of {', '.join(FORMULAS)}",
            param="default_aggregation[formula]",
        )
    display_name = _short(params, "display_name")
    event_name = _short(params, "event_name")
    mapping = _nested(
        params, "customer_mapping", {"event_payload_key", "type"}, ("event_payload_key", "type")
    )
    if mapping.get("type", "by_id") != "by_id":
        raise invalid("Invalid customer_mapping[type]: must be by_id", param="customer_mapping[type]")
    value_settings = _nested(params, "value_settings", {"event_payload_key"}, ("event_payload_key",))
    window = params.get("event_time_window")
    if window is not None and window not in WINDOWS:
        raise invalid("Invalid event_time_window: must be one of day, hour", param="event_time_window")
    return {
        "display_name": display_name,
        "event_name": event_name,
        "formula": formula,
        "customer_key": mapping.get("event_payload_key") or "stripe_customer_id",
        "value_key": value_settings.get("event_payload_key") or "value",
        "event_time_window": window,
    }


def new_meter(params: dict[str, Any], meter_id: str, now: int) -> dict[str, Any]:
    """Validate create params and build the `billing.meter` object."""
    settings = check_create(params)
    return {
        "id": meter_id,
        "object": "billing.meter",
        "created": now,
        "customer_mapping": {"event_payload_key": settings["customer_key"], "type": "by_id"},
        "default_aggregation": {"formula": settings["formula"]},
        "display_name": settings["display_name"],
        "event_name": settings["event_name"],
        "event_time_window": settings["event_time_window"],
        "livemode": False,
        "status": "active",
        "status_transitions": {"deactivated_at": None},
        "updated": now,
        "value_settings": {"event_payload_key": settings["value_key"]},
    }


def check_update(params: dict[str, Any]) -> None:
    reject_unknown(params, {"display_name"})
    if "display_name" in params:
        _short(params, "display_name")


def updated_meter(meter: dict[str, Any], params: dict[str, Any], now: int) -> dict[str, Any]:
    check_update(params)
    if "display_name" not in params:
        return meter
    return {**meter, "display_name": params["display_name"], "updated": now}


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
