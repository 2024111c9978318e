from __future__ import annotations

import math

import orjson
import pytest

from stripemeter.schemas.events import (
    InvalidEvent,
    UsageEvent,
    decode_message,
    derive_idempotency_key,
    parse_event,
)

NOW_MS = 1_795_000_000_000  # 2026-11-18T11:06:40Z
TS = "2026-11-18T08:00:00Z"


def event(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "tenantId": "demo",
        "metric": "requests",
        "customerRef": "acme-42",
        "quantity": 3,
        "ts": TS,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def rejected(obj: object) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as info:
        parse_event(obj, NOW_MS)
    return info.value


def test_valid_event_is_normalised() -> None:
    parsed = parse_event(event(quantity=1.5, ts="2026-11-18T09:30:00.250+01:00"), NOW_MS)
    assert isinstance(parsed, UsageEvent)
    assert parsed.quantity_micros == 1_500_000
    assert parsed.ts_ms == 1_794_990_600_250  # 08:30:00.250Z
    assert parsed.bucket_ms % 3_600_000 == 0
    assert parsed.key_derived


@pytest.mark.parametrize("field", ["tenantId", "metric", "customerRef", "quantity", "ts"])
def test_each_required_field_missing(field: str) -> None:
    error = rejected(event(**{field: ...}))
    assert error.code == "missing_field"
    assert error.field == field
    assert field in error.message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tenantId", 7),
        ("metric", ["x"]),
        ("customerRef", {"a": 1}),
        ("quantity", "3"),
        ("quantity", True),
        ("ts", 1700000000),
        ("idempotencyKey", 5),
        ("meta", "text"),
        ("resourceId", 1.5),
    ],
)
def test_wrong_types_name_the_field(field: str, value: object) -> None:
    error = rejected(event(**{field: value}))
    assert error.code == "wrong_type"
    assert error.field == field


@pytest.mark.parametrize(
    ("quantity", "reason"),
    [
        (-1, ">= 0"),
        (math.nan, "finite"),
        (math.inf, "finite"),
        (0.1234567, "6 decimals"),
        (1e-7, "6 decimals"),
    ],
)
def test_bad_quantities(quantity: float, reason: str) -> None:
    error = rejected(event(quantity=quantity))
    assert error.field == "quantity"
    assert reason in error.message


@pytest.mark.parametrize("quantity", [0, 0.000001, 123456.654321, 10**12])
def test_good_quantities(quantity: float) -> None:
    assert parse_event(event(quantity=quantity), NOW_MS).quantity_micros == round(quantity * 10**6)


@pytest.mark.parametrize("ts", ["2026-11-18T08:00:00", "2026-11-18", "yesterday", "2026-11-18T08:00:00+0100"])
def test_ts_needs_rfc3339_with_offset(ts: str) -> None:
    assert rejected(event(ts=ts)).field == "ts"


def test_ts_more_than_an_hour_ahead() -> None:
    future = NOW_MS + 3_600_000 + 60_000
    from datetime import UTC, datetime

    ts = datetime.fromtimestamp(future / 1000, tz=UTC).isoformat()
    assert rejected(event(ts=ts)).code == "ts_in_future"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tenantId", "has space"),
        ("tenantId", "x" * 65),
        ("metric", "a/b"),
        ("customerRef", ""),
        ("customerRef", "c" * 256),
        ("idempotencyKey", ""),
        ("idempotencyKey", "k" * 256),
    ],
)
def test_bad_values(field: str, value: str) -> None:
    error = rejected(event(**{field: value}))
    assert error.code == "invalid_value"
    assert error.field == field


def test_meta_over_4_kib() -> None:
    assert rejected(event(meta={"blob": "x" * 5000})).code == "too_large"
    assert parse_event(event(meta={"blob": "x" * 100}), NOW_MS).meta == {"blob": "x" * 100}


def test_unknown_fields_are_ignored() -> None:
    assert parse_event(event(color="blue"), NOW_MS).tenant_id == "demo"


def test_derived_key_is_stable_across_spellings() -> None:
    a = parse_event(event(ts="2026-11-18T08:00:00Z", quantity=2), NOW_MS)
    b = parse_event(event(ts="2026-11-18T09:00:00.000+01:00", quantity=2.0), NOW_MS)
    assert a.idempotency_key == b.idempotency_key
    assert a.idempotency_key == derive_idempotency_key(
        "demo", "requests", "acme-42", None, a.ts_ms, 2_000_000
    )
    c = parse_event(event(quantity=3), NOW_MS)
    assert c.idempotency_key != a.idempotency_key


def test_derived_keys_match_fixed_vectors() -> None:
    """The derivation is part of the contract: a producer retrying across an upgrade (or deriving keys
    itself) must get the same key, or its retry is counted twice. These values never change."""
    at = 1_796_083_200_000  # 2026-12-01T00:00:00Z
    assert derive_idempotency_key("acme", "api_calls", "cus-42", None, at, 1_500_000) == (
        "drv_5cb79a5419b1d8eeef4e2f0e993714c5"
    )
    assert derive_idempotency_key("acme", "api_calls", "cus-42", "res-1", at, 1_500_000) == (
        "drv_ee03d3086f5b70337e2bcbdcc992e399"
    )
    parsed = parse_event(
        event(
            tenantId="acme",
            metric="api_calls",
            customerRef="cus-42",
            ts="2026-12-01T01:00:00+01:00",
            quantity=1.5,
        ),
        at,
    )
    assert parsed.idempotency_key == "drv_5cb79a5419b1d8eeef4e2f0e993714c5"


def test_given_key_is_kept() -> None:
    parsed = parse_event(event(idempotencyKey="req-1"), NOW_MS)
    assert (parsed.idempotency_key, parsed.key_derived) == ("req-1", False)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"not json", "not_json"),
        (b"\xff\xfe\x00garbage", "not_json"),
        (b'"a string"', "not_object"),
        (b"42", "not_object"),
        (b"[]", "empty"),
        (None, "empty"),
        (b"{" * 10_000, "not_json"),
        (b'{"x": "' + b"a" * (2 * 1024 * 1024) + b'"}', "too_large"),
    ],
)
def test_unreadable_messages(raw: bytes | None, code: str) -> None:
    results = decode_message(raw, NOW_MS)
    assert len(results) == 1
    assert isinstance(results[0], InvalidEvent)
    assert results[0].code == code


def test_array_message_validates_each_event() -> None:
    raw = orjson.dumps([event(), event(quantity=-1), "nope", event(customerRef="other")])
    results = decode_message(raw, NOW_MS)
    assert [type(r).__name__ for r in results] == ["UsageEvent", "InvalidEvent", "InvalidEvent", "UsageEvent"]
    bad = results[1]
    assert isinstance(bad, InvalidEvent)
    assert (bad.index, bad.raw_item["quantity"]) == (1, -1)


def test_array_over_1000_is_rejected_whole() -> None:
    results = decode_message(orjson.dumps([event()] * 1001), NOW_MS)
    assert len(results) == 1 and isinstance(results[0], InvalidEvent)


@pytest.mark.parametrize(
    ("now", "latest_accepted"),
    [
        ("2026-12-31T23:30:00Z", "2027-01-01T00:30:00Z"),  # into the next year
        ("2028-02-28T23:59:00Z", "2028-02-29T00:59:00Z"),  # into a leap day
        ("2026-11-30T23:00:00Z", "2026-12-01T00:00:00Z"),  # into the next month
    ],
)
def test_an_hour_ahead_across_calendar_boundaries(now: str, latest_accepted: str) -> None:
    from datetime import datetime

    now_ms = int(datetime.fromisoformat(now.replace("Z", "+00:00")).timestamp() * 1000)
    assert parse_event(event(ts=latest_accepted), now_ms).ts_ms == now_ms + 3_600_000
    one_more = latest_accepted.replace(":00Z", ":01Z")
    with pytest.raises(InvalidEvent) as info:
        parse_event(event(ts=one_more), now_ms)
    assert info.value.code == "ts_in_future"
