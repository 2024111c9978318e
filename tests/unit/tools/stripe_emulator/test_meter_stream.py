"""The emulator's v2 meter event stream rules: sessions, the request's shape, the per-second limit, and
processing after the answer (dedupe shared with v1, failures as error reports)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from stripemeter.tools.stripe_emulator import EmulatorState
from stripemeter.tools.stripe_emulator.meter_stream import (
    MAX_EVENTS,
    SESSION_SECONDS,
    Sessions,
    StreamLimit,
    check_body,
)
from stripemeter.tools.stripe_emulator.stripe_errors import StripeApiError

NOW = 1_796_000_000.0


def event(i: int = 0, **changes: Any) -> dict[str, Any]:
    return {
        "identifier": f"id-{i}",
        "event_name": "api_requests",
        "payload": {"stripe_customer_id": "cus_1", "value": "2"},
        "timestamp": "2026-11-30T10:00:00.000Z",
        **changes,
    }


def test_a_token_is_good_for_15_minutes_and_nothing_else_is() -> None:
    sessions = Sessions()
    session = sessions.create(NOW)
    assert session["object"] == "v2.billing.meter_event_session"
    assert session["expires_at"].endswith("Z")
    token = session["authentication_token"]
    sessions.check(f"Bearer {token}", NOW + SESSION_SECONDS - 1)
    with pytest.raises(StripeApiError) as expired:
        sessions.check(f"Bearer {token}", NOW + SESSION_SECONDS)
    assert (expired.value.status, expired.value.type, expired.value.code) == (
        401, "temporary_session_expired", "billing_meter_event_session_expired",
    )  # fmt: skip
    for header in ("Bearer sk_test_123", "", f"Basic {token}"):
        with pytest.raises(StripeApiError) as refused:
            sessions.check(header, NOW)
        assert (refused.value.status, refused.value.type) == (401, "authentication_error")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"events": [event(i) for i in range(MAX_EVENTS + 1)]}, "at most 100"),
        ({"events": []}, "Missing required param: events"),
        ({}, "Missing required param: events"),
        ({"events": [event()], "extra": 1}, "unknown parameter: extra"),
        ({"events": [event(timestamp=1_796_000_000)]}, "RFC 3339"),
        ({"events": [event(timestamp="2026-11-30T10:00:00")]}, "no time zone"),
        ({"events": [event(payload={"value": 2})]}, "must be a string"),
        ({"events": [event(), event(bogus=1)]}, r"events\[1\]\.bogus"),
        ({"events": [event(event_name="")]}, "event_name"),
        (None, "JSON object"),
    ],
)
def test_a_request_of_the_wrong_shape_is_refused_whole(body: Any, message: str) -> None:
    with pytest.raises(StripeApiError, match=message) as refused:
        check_body(body)
    assert refused.value.status == 400


def test_the_limit_counts_requests_and_events_per_second() -> None:
    limit = StreamLimit()
    assert limit.take(10, 100, 3, 250)
    assert limit.take(10, 100, 3, 250)
    assert not limit.take(10, 51, 3, 250)  # 251 events
    assert limit.take(10, 50, 3, 250)
    assert not limit.take(10, 1, 3, 250)  # a fourth request
    assert limit.take(11, 100, 3, 250)  # a new second
    assert limit.take(11, 10_000, 0, 0)  # 0: no limit


def test_events_are_processed_after_the_answer_with_dedupe_shared_with_v1() -> None:
    state = EmulatorState(lambda: NOW, ops_per_second=0)
    meter = state.create_meter(
        {"display_name": "r", "event_name": "api_requests", "default_aggregation": {"formula": "sum"}}
    )
    customer = state.create_customer({})["id"]
    payload = {"stripe_customer_id": customer, "value": "2"}
    state.record_meter_event({"event_name": "api_requests", "payload": payload, "identifier": "v1-sent",
                              "timestamp": str(int(NOW) - 60)})  # fmt: skip
    stamp = datetime.fromtimestamp(NOW - 60, tz=UTC).isoformat()
    requests = check_body({"events": [
        {"identifier": "v1-sent", "event_name": "api_requests", "payload": payload, "timestamp": stamp},
        {"identifier": "new", "event_name": "api_requests", "payload": payload, "timestamp": stamp},
        {"identifier": "new", "event_name": "api_requests", "payload": payload, "timestamp": stamp},
        {"identifier": "nobody", "event_name": "api_requests",
         "payload": {"stripe_customer_id": "cus_unknown", "value": "1"}, "timestamp": stamp},
    ]})  # fmt: skip
    state.record_stream_events(requests, "req_1")
    assert [e.identifier for e in state.meter_events(meter["id"])] == ["v1-sent", "new"]
    assert state.stream_duplicates == 2
    assert [(r["code"], r["identifier"]) for r in state.error_reports] == [
        ("meter_event_customer_not_found", "nobody")
    ]
