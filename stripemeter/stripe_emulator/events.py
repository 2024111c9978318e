"""Meter events and their adjustments: the synchronous checks of `POST /v1/billing/meter_events`.

Rules mirrored: the payload names an existing customer under the meter's customer key and a whole
number (negative allowed, at most 15 significant digits) under its value key; `timestamp` lies within
the past 35 days and at most 5 minutes ahead; `identifier` is unique for 24 h after receipt. A cancel
adjustment can only reach an event received in the last 24 h.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from stripemeter.stripe_emulator.errors import StripeApiError, invalid, parse_int, reject_unknown, required

MAX_PAST_SECONDS = 35 * 24 * 3600
MAX_FUTURE_SECONDS = 5 * 60
IDENTIFIER_WINDOW_SECONDS = 24 * 3600
CANCEL_WINDOW_SECONDS = 24 * 3600
MAX_SIGNIFICANT_DIGITS = 15
_WHOLE = re.compile(r"-?[0-9]+")


@dataclass
class MeterEvent:
    meter_id: str
    event_name: str
    identifier: str
    customer: str
    value: int
    payload: dict[str, str]
    timestamp: int
    received: float
    cancelled: bool = False

    def wire(self) -> dict[str, Any]:
        return {
            "object": "billing.meter_event",
            "created": int(self.received),
            "event_name": self.event_name,
            "identifier": self.identifier,
            "livemode": False,
            "payload": self.payload,
            "timestamp": self.timestamp,
        }


def parse_value(raw: Any, param: str) -> int:
    if not isinstance(raw, str) or not _WHOLE.fullmatch(raw.strip()):
        raise invalid(
            f"Invalid value {raw!r} for {param}: must be a whole number.", param, "meter_event_invalid_value"
        )
    digits = raw.strip().lstrip("-").lstrip("0")
    if len(digits) > MAX_SIGNIFICANT_DIGITS:
        raise invalid(
            f"Invalid value {raw!r} for {param}: at most {MAX_SIGNIFICANT_DIGITS} significant digits.",
            param,
            "meter_event_invalid_value",
        )
    return int(raw)


def parse_timestamp(raw: Any, now: float) -> int:
    if raw is None or raw == "":
        return int(now)
    timestamp = parse_int(raw, "timestamp")
    if timestamp < now - MAX_PAST_SECONDS:
        raise invalid(
            f"Timestamp {timestamp} is too far in the past: events must be within the past 35 days.",
            "timestamp",
            "timestamp_too_far_in_past",
        )
    if timestamp > now + MAX_FUTURE_SECONDS:
        raise invalid(
            f"Timestamp {timestamp} is too far in the future: at most 5 minutes ahead is accepted.",
            "timestamp",
            "timestamp_in_future",
        )
    return timestamp


def check_event_params(params: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """Shape checks that need no state; returns (event_name, payload)."""
    reject_unknown(params, {"event_name", "payload", "identifier", "timestamp"})
    event_name = required(params, "event_name")
    payload = params.get("payload")
    if not isinstance(payload, dict) or not payload:
        raise invalid("Missing required param: payload.", "payload", "parameter_missing")
    if any(not isinstance(v, str) for v in payload.values()):
        raise invalid("Invalid payload: values must be strings.", "payload")
    identifier = params.get("identifier")
    if identifier is not None and not 1 <= len(identifier) <= 100:
        raise invalid("Invalid identifier: must be 1 to 100 characters.", "identifier")
    return event_name, payload


def payload_customer_and_value(meter: dict[str, Any], payload: dict[str, str]) -> tuple[str, int]:
    """Read the customer id and the value out of the payload using the meter's keys."""
    customer_key = meter["customer_mapping"]["event_payload_key"]
    value_key = meter["value_settings"]["event_payload_key"]
    customer = payload.get(customer_key)
    if not customer:
        raise invalid(
            f"Missing customer: the payload must contain '{customer_key}' for meter {meter['id']}.",
            f"payload[{customer_key}]",
            "meter_event_no_customer_defined",
        )
    if value_key not in payload:
        if meter["default_aggregation"]["formula"] == "count":
            return customer, 1
        raise invalid(
            f"Missing value: the payload must contain '{value_key}' for meter {meter['id']}.",
            f"payload[{value_key}]",
            "meter_event_value_not_found",
        )
    return customer, parse_value(payload[value_key], f"payload[{value_key}]")


def duplicate_identifier(identifier: str) -> StripeApiError:
    error = invalid(f"An event already exists with identifier {identifier}.", "identifier")
    error.should_retry = False
    return error


def check_cancel_params(params: dict[str, Any]) -> tuple[str, str]:
    """Returns (event_name, identifier) of a `type=cancel` adjustment."""
    reject_unknown(params, {"event_name", "type", "cancel"})
    event_name = required(params, "event_name")
    kind = required(params, "type")
    if kind != "cancel":
        raise invalid(f"Invalid type {kind!r}: only cancel is supported.", "type")
    cancel = params.get("cancel")
    if not isinstance(cancel, dict):
        raise invalid(
            "Missing required param: cancel[identifier].", "cancel[identifier]", "parameter_missing"
        )
    reject_unknown(cancel, {"identifier"}, prefix="cancel")
    return event_name, required(cancel, "identifier", "cancel[identifier]")


def check_cancellable(event: MeterEvent | None, identifier: str, now: float) -> MeterEvent:
    param = "cancel[identifier]"
    if event is None:
        raise invalid(f"No meter event found with identifier {identifier}.", param, "resource_missing")
    if now - event.received > CANCEL_WINDOW_SECONDS:
        raise invalid(
            f"The meter event {identifier} was received over 24 hours ago and can no longer be cancelled.",
            param,
        )
    if event.cancelled:
        raise invalid(f"The meter event {identifier} has already been cancelled.", param)
    return event
