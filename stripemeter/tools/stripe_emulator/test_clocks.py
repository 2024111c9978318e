"""Test clocks (`/v1/test_helpers/test_clocks`): the shapes and the objects.

A test clock holds a `frozen_time`; customers created with `test_clock` live at that time, as do
their subscriptions, invoices and invoice items. `advance` moves it forward only, at most two
intervals of the shortest subscription interval among its customers' subscriptions at a time; the
answer says `status: "advancing"` (with `status_details.advancing.target_frozen_time`) while the
clock still shows its old time, and the clock is `ready` at the new time once everything due up to
it has happened (billing.py). A clock is deleted 30 days after it was made (`deletes_after`; the
emulator does not delete it).
"""

from __future__ import annotations

from typing import Any

from stripemeter.tools.stripe_emulator.stripe_errors import (
    invalid,
    optional_string,
    parse_int,
    reject_unknown,
)

LIFETIME_SECONDS = 30 * 86_400


def _frozen_time(params: dict[str, Any]) -> int:
    if params.get("frozen_time") in (None, ""):
        raise invalid("Missing required param: frozen_time.", "frozen_time", "parameter_missing")
    return parse_int(params["frozen_time"], "frozen_time")


def check_create(params: dict[str, Any]) -> tuple[int, str | None]:
    """`POST /v1/test_helpers/test_clocks`: (frozen_time, name)."""
    reject_unknown(params, {"frozen_time", "name"})
    return _frozen_time(params), optional_string(params, "name", 300)


def check_advance(params: dict[str, Any]) -> int:
    """`POST /v1/test_helpers/test_clocks/{id}/advance`: the new frozen_time."""
    reject_unknown(params, {"frozen_time"})
    return _frozen_time(params)


def new_clock(clock_id: str, frozen_time: int, name: str | None, now: int) -> dict[str, Any]:
    return {
        "id": clock_id,
        "object": "test_helpers.test_clock",
        "created": now,
        "deletes_after": now + LIFETIME_SECONDS,
        "frozen_time": frozen_time,
        "livemode": False,
        "name": name,
        "status": "ready",
        "status_details": {},
    }


def advancing(clock: dict[str, Any], target: int) -> dict[str, Any]:
    return {**clock, "status": "advancing", "status_details": {"advancing": {"target_frozen_time": target}}}


def ready(clock: dict[str, Any], frozen_time: int) -> dict[str, Any]:
    return {**clock, "frozen_time": frozen_time, "status": "ready", "status_details": {}}
