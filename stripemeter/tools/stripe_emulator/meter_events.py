"""Meter events and their adjustments: the rules of `POST /v1/billing/meter_events`.

Two stages, as at Stripe. The shape checks (`check_event_params`: known params, types, lengths) always
answer at once. The processing rules (`validate_event`) need the account: an active meter for the
event name, an existing customer under the meter's customer key, a whole number (negative allowed,
at most 15 significant digits; Stripe takes decimals only on request) under its value key, a
`timestamp` within the past 35 days and at most 5 minutes ahead. By default the emulator applies
them before answering (400); in async validation mode after answering 200 (see state.py).
`identifier` is unique for 24 h after receipt. A cancel adjustment can only reach an event received
in the last 24 h.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stripemeter.tools.stripe_emulator.stripe_errors import (
    StripeApiError,
    invalid,
    parse_int,
    reject_unknown,
    required,
)

MAX_PAST_SECONDS = 35 * 24 * 3600
MAX_FUTURE_SECONDS = 5 * 60
IDENTIFIER_WINDOW_SECONDS = 24 * 3600
CANCEL_WINDOW_SECONDS = 24 * 3600
MAX_SIGNIFICANT_DIGITS = 15
MAX_NAME_LENGTH = 100  # event_name and identifier, in the OpenAPI spec
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
        return event_wire(self.event_name, self.identifier, self.payload, self.timestamp, self.received)


def event_wire(
    event_name: str, identifier: str, payload: dict[str, str], timestamp: int, received: float
) -> dict[str, Any]:
    """The `billing.meter_event` object Stripe answers with."""
    return {
        "object": "billing.meter_event",
        "created": int(received),
        "event_name": event_name,
        "identifier": identifier,
        "livemode": False,
        "payload": payload,
        "timestamp": timestamp,
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
            "meter_event_value_too_many_digits",
        )
    return int(raw)


def check_timestamp(timestamp: int, now: float) -> int:
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


def parse_timestamp(raw: Any, now: float) -> int:
    if raw is None:
        return int(now)
    return check_timestamp(parse_int(raw, "timestamp"), now)


@dataclass(frozen=True)
class EventRequest:
    """A meter event request that passed the shape checks."""

    event_name: str
    payload: dict[str, str]
    identifier: str | None
    timestamp: int | None


def check_event_params(params: dict[str, Any]) -> EventRequest:
    """The synchronous shape checks of `POST /v1/billing/meter_events` (the OpenAPI spec's rules):
    known params, `event_name` a string of at most 100 characters, `payload` a non-empty map of
    strings, `identifier` at most 100 characters (empty means none), `timestamp` an integer."""
    reject_unknown(params, {"event_name", "payload", "identifier", "timestamp"})
    event_name = required(params, "event_name")
    if len(event_name) > MAX_NAME_LENGTH:
        raise invalid("Invalid event_name: must be at most 100 characters.", "event_name")
    payload = params.get("payload")
    if payload is None or payload == "" or payload == {}:
        raise invalid("Missing required param: payload.", "payload", "parameter_missing")
    if not isinstance(payload, dict):
        raise invalid("Invalid payload: must be an object of string values.", "payload")
    for key, value in payload.items():
        if not isinstance(value, str):
            raise invalid(f"Invalid payload[{key}]: must be a string.", f"payload[{key}]")
    identifier = params.get("identifier")
    if isinstance(identifier, dict | list):
        raise invalid("Invalid identifier: must be a string.", "identifier")
    if identifier is not None and len(identifier) > MAX_NAME_LENGTH:
        raise invalid("Invalid identifier: must be at most 100 characters.", "identifier")
    raw_timestamp = params.get("timestamp")
    timestamp = None if raw_timestamp is None else parse_int(raw_timestamp, "timestamp")
    return EventRequest(event_name, payload, identifier or None, timestamp)


def validate_event(
    meter: dict[str, Any] | None,
    request: EventRequest,
    customer_exists: Callable[[str], bool],
    now: float,
) -> tuple[str, int, int]:
    """What Stripe validates once it processes an event (synchronously by default here, after the
    answer in async mode): an active meter for the name, a known customer under the meter's customer
    key, a whole number under its value key, a timestamp in the window. Returns (customer, value,
    timestamp)."""
    event_name = request.event_name
    if meter is None:
        raise invalid(f"No active meter was found for event_name '{event_name}'.", "event_name", "no_meter")
    if meter["status"] != "active":
        raise invalid(f"The meter for event_name '{event_name}' is inactive.", "event_name", "archived_meter")
    customer, value = payload_customer_and_value(meter, request.payload)
    if not customer_exists(customer):
        key = meter["customer_mapping"]["event_payload_key"]
        raise invalid(f"No such customer: '{customer}'", f"payload[{key}]", "meter_event_customer_not_found")
    timestamp = int(now) if request.timestamp is None else check_timestamp(request.timestamp, now)
    return customer, value, timestamp


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
            "meter_event_invalid_value",
        )
    return customer, parse_value(payload[value_key], f"payload[{value_key}]")


def duplicate_identifier(identifier: str) -> StripeApiError:
    error = invalid(
        f"An event already exists with identifier {identifier}.", "identifier", "resource_already_exists"
    )
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
