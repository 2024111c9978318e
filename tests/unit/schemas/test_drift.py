from dataclasses import replace
from datetime import UTC, datetime

import pytest

from stripemeter.schemas import versions
from stripemeter.schemas.drift import SUMMARY_NAMES, Drift, decode_drift, encode_drift

# a reconciliation.drift record exactly as the reconciler publishes it (consumers read these bytes)
PUBLISHED = (
    b'{"tenantId":"demo","metric":"requests","customerRef":"acme 42","period":"2026-11","local":1000,'
    b'"stripe":990,"diffAbs":10,"diffPct":0.01,"status":"drift","action":"replay",'
    b'"at":"2026-11-20T15:03:11.250001Z","causes":[{"code":"stripe_missing","message":"pushes recorded'
    b' as delivered are missing in Stripe (dropped or cancelled)","hours":1,"amount":10}],'
    b'"hours":[{"bucket":"2026-11-20T14:00:00Z","local":100,"stripe":90,"diff":10}],"v":2}'
)
DRIFT = Drift(
    tenant_id="demo",
    metric="requests",
    customer_ref="acme 42",
    period="2026-11",
    local=1000,
    stripe=990,
    diff_abs=10,
    diff_pct=0.01,
    status="drift",
    action="replay",
    at=datetime(2026, 11, 20, 15, 3, 11, 250001, tzinfo=UTC),
    causes=[
        {
            "code": "stripe_missing",
            "message": "pushes recorded as delivered are missing in Stripe (dropped or cancelled)",
            "hours": 1,
            "amount": 10,
        }
    ],
    hours=[{"bucket": "2026-11-20T14:00:00Z", "local": 100, "stripe": 90, "diff": 10}],
)


def test_the_published_record_is_the_fixed_vector() -> None:
    assert encode_drift(DRIFT) == PUBLISHED
    assert decode_drift(PUBLISHED) == DRIFT


def test_the_previous_format_has_no_version_and_whole_seconds_drop_the_fraction() -> None:
    drift = replace(DRIFT, at=datetime(2026, 11, 20, 15, 3, 11, tzinfo=UTC))
    versions.use_write_version(versions.PREVIOUS)
    try:
        encoded = encode_drift(drift)
    finally:
        versions.use_write_version(versions.CURRENT)
    expected = PUBLISHED.replace(b'"at":"2026-11-20T15:03:11.250001Z"', b'"at":"2026-11-20T15:03:11Z"')
    assert encoded == expected.replace(b',"v":2}', b"}")
    assert decode_drift(encoded) == drift


def test_a_later_format_is_not_read() -> None:
    with pytest.raises(versions.UnknownRecordVersion):
        decode_drift(PUBLISHED.replace(b'"v":2', b'"v":3'))


def test_a_line_shows_every_field_but_the_causes_and_hours() -> None:
    assert SUMMARY_NAMES == (
        "tenantId", "metric", "customerRef", "period", "local", "stripe", "diffAbs", "diffPct", "status",
        "action", "at",
    )  # fmt: skip
