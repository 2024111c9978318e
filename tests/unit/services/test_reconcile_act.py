"""A reconciliation run's act, pure parts: what the policy allows, the corrections' identifiers and
requests, and whether the hours moved since Stripe was read."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from stripemeter.core.push_plan import Request, StripeMeterSpec
from stripemeter.core.reconcile_compare import Hour, Item, Status, Verdict
from stripemeter.domain.units import MICROS
from stripemeter.services.reconciliation.act import (
    CORRECTABLE_SECONDS,
    correction_identifier,
    correction_request,
    plan,
    unchanged,
)

B0 = int(datetime(2025, 11, 20, 14, tzinfo=UTC).timestamp())
NOW = B0 + 7200.0
METER = StripeMeterSpec("mtr_1", "api_requests", "sum", "stripe_customer_id", "value", True, None)
ITEM = Item("demo", "requests", "acme 42", "sum")


def verdict(status: Status, corrections: list[tuple[int, int]], in_flight: int = 0) -> Verdict:
    hours = [{"bucket": b, "local": 10, "stripe": 10 - v, "diff": v} for b, v in corrections]
    return Verdict(100, 99, 1, 0.01, status, in_flight, [], hours, corrections)


def test_parity_does_nothing_or_waits_for_hours_in_flight() -> None:
    assert plan(verdict("parity", []), "within_epsilon", NOW, METER) == "none"
    assert plan(verdict("parity", [], in_flight=3), "all", NOW, METER) == "wait"


def test_within_epsilon_is_corrected_and_drift_only_when_the_operator_aligns_all() -> None:
    assert plan(verdict("within_epsilon", [(B0, 1)]), "within_epsilon", NOW, METER) == [(B0, 1)]
    assert plan(verdict("drift", [(B0, 1)]), "within_epsilon", NOW, METER) == "replay"
    assert plan(verdict("drift", [(B0, 1)]), "all", NOW, METER) == [(B0, 1)]


@pytest.mark.parametrize(
    ("case", "found", "meter"),
    [
        ("nothing to correct", verdict("within_epsilon", []), METER),
        ("no active meter", verdict("within_epsilon", [(B0, 1)]), None),
    ],
)
def test_what_cannot_be_corrected_is_left_to_a_replay(
    case: str, found: Verdict, meter: StripeMeterSpec | None
) -> None:
    assert plan(found, "all", NOW, meter) == "replay", case


def test_a_correction_is_whole_or_not_at_all() -> None:
    """One hour of two cannot be corrected (too old for Stripe): neither is, the operator replays."""
    too_old = int(NOW - CORRECTABLE_SECONDS)  # Stripe takes events younger than this
    assert plan(verdict("within_epsilon", [(too_old, 1), (B0, 1)]), "all", NOW, METER) == "replay"
    assert plan(verdict("within_epsilon", [(too_old, 1)]), "all", NOW, METER) == "replay"
    assert plan(verdict("within_epsilon", [(too_old + 1, 1)]), "all", NOW, METER) == [(too_old + 1, 1)]


def test_the_correction_identifier_matches_its_fixed_vector() -> None:
    """Stripe dedupes by this identifier: the same counter hour and run must give these exact bytes."""
    run_id = "rec_0123456789abcdef0123"
    assert correction_identifier(ITEM, 1763647200, run_id) == (
        "smrec_f2097727cef821a258cd5a9d_rec_0123456789abcdef0123"
    )


def test_the_correction_request_adds_the_difference_at_the_hours_start() -> None:
    request = correction_request(ITEM, B0, -3, "rec_1", METER, "cus_1")
    assert request == Request(
        correction_identifier(ITEM, B0, "rec_1"),
        "api_requests",
        {"stripe_customer_id": "cus_1", "value": "-3"},
        B0,
        -3,
        -3,
    )


def row(micros: int | None, pushed: int | None, status: str | None, bucket: int = B0) -> dict[str, Any]:
    return {
        "bucket": datetime.fromtimestamp(bucket, tz=UTC),
        "local_micros": micros,
        "pushed_units": pushed,
        "status": status,
    }


def test_unchanged_compares_the_exact_total_and_the_writers_state() -> None:
    before = {B0: Hour(5, 5, "synced", None, 0.0, 5 * MICROS)}
    assert unchanged(before, [row(5 * MICROS, 5, "synced")], [B0])
    assert not unchanged(before, [row(5 * MICROS + 1, 5, "synced")], [B0])  # new usage
    assert not unchanged(before, [row(5 * MICROS, 6, "synced")], [B0])  # the writer pushed
    assert not unchanged(before, [row(5 * MICROS, 5, "pending")], [B0])  # the writer is at it
    assert not unchanged(before, [], [B0])
    assert not unchanged({}, [row(MICROS, None, None)], [B0])  # an hour counted since
    assert unchanged({}, [], [B0])  # a correction into an hour never counted, still not counted
    assert unchanged({B0: Hour(0, None, None, None, 0.0)}, [row(None, None, None)], [B0])
