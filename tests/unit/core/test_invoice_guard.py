"""The pre-invoice guard's pure decisions: lines to counters, periods, and hold or release."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from stripemeter.core.invoice_guard import (
    CustomerMapping,
    Line,
    LineCheck,
    Target,
    decide,
    metered_lines,
    period_name_for,
    targets,
    unbilled,
)


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp())


def line_json(line_id: str, price: str, start: int, end: int, quantity: int | None = 7) -> dict[str, Any]:
    return {
        "id": line_id,
        "object": "line_item",
        "pricing": {"type": "price_details", "price_details": {"price": price, "product": "prod_1"}},
        "period": {"start": start, "end": end},
        "quantity": quantity,
    }


def test_metered_lines_read_the_price_from_pricing_or_the_older_price_field() -> None:
    start, end = ts(2027, 1, 1), ts(2027, 2, 1)
    invoice = {
        "lines": {
            "data": [
                line_json("il_1", "price_a", start, end),
                {
                    "id": "il_2",
                    "price": {"id": "price_b"},
                    "period": {"start": start, "end": end},
                    "quantity_decimal": "2.5",
                },
                {"id": "il_3", "period": {"start": start, "end": end}},  # no price: an invoice item
            ]
        }
    }
    lines = metered_lines(invoice)
    assert [(x.line_id, x.price, x.quantity) for x in lines] == [
        ("il_1", "price_a", "7"),
        ("il_2", "price_b", "2.5"),
    ]


@pytest.mark.parametrize(
    ("start", "end", "anchor", "name"),
    [
        (datetime(2027, 1, 1, tzinfo=UTC), datetime(2027, 2, 1, tzinfo=UTC), None, "2027-01"),
        (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC), None, "2026-12"),  # year end
        # an anchor at 10:45 on the 31st: clamped to February's last day, then back to the 31st
        (
            datetime(2027, 1, 31, 10, 45, tzinfo=UTC),
            datetime(2027, 2, 28, 10, 45, tzinfo=UTC),
            datetime(2026, 10, 31, 10, 45, tzinfo=UTC),
            "2027-01",
        ),
        (
            datetime(2027, 2, 28, 10, 45, tzinfo=UTC),
            datetime(2027, 3, 31, 10, 45, tzinfo=UTC),
            datetime(2026, 10, 31, 10, 45, tzinfo=UTC),
            "2027-02",
        ),
        # a leap year
        (
            datetime(2028, 2, 29, 10, 45, tzinfo=UTC),
            datetime(2028, 3, 31, 10, 45, tzinfo=UTC),
            datetime(2026, 10, 31, 10, 45, tzinfo=UTC),
            "2028-02",
        ),
    ],
)
def test_a_period_is_named_as_reconciliation_names_it(
    start: datetime, end: datetime, anchor: datetime | None, name: str
) -> None:
    assert period_name_for(start, end, anchor) == name


def test_a_period_the_customer_mapping_does_not_give_has_no_name() -> None:
    anchored = (datetime(2027, 1, 15, 10, 45, tzinfo=UTC), datetime(2027, 2, 15, 10, 45, tzinfo=UTC))
    assert period_name_for(*anchored, None) is None  # the mapping says calendar months
    assert period_name_for(*anchored, datetime(2026, 1, 15, 10, 0, tzinfo=UTC)) is None  # 10:00, not 10:45
    assert period_name_for(*anchored, datetime(2026, 1, 15, 10, 45, tzinfo=UTC)) == "2027-01"


JAN = (ts(2027, 1, 1), ts(2027, 2, 1))
ACME = CustomerMapping("acme", "cust-1", None)


def test_each_line_maps_to_the_one_stream_feeding_its_meter_and_customer() -> None:
    lines = [Line("il_1", "price_a", *JAN, "7"), Line("il_2", "price_flat", *JAN, "1")]
    found, problems = targets(
        lines,
        {"price_a": "mtr_a", "price_flat": None},
        {"mtr_a": "api_calls"},
        [ACME],
        {("acme", "api_calls"): ["requests"]},
    )
    assert problems == []
    assert [(t.line.line_id, t.tenant, t.metric, t.customer_ref, t.period_name) for t in found] == [
        ("il_1", "acme", "requests", "cust-1", "2027-01")
    ]


def test_a_meter_no_stream_of_the_customer_feeds_is_not_ours() -> None:
    lines = [Line("il_1", "price_a", *JAN, "7")]
    found, problems = targets(lines, {"price_a": "mtr_a"}, {"mtr_a": "api_calls"}, [ACME], {})
    assert (found, problems) == ([], [])


def test_two_streams_on_one_line_and_a_foreign_period_are_problems() -> None:
    lines = [Line("il_1", "price_a", *JAN, "7")]
    two = targets(
        lines,
        {"price_a": "mtr_a"},
        {"mtr_a": "api_calls"},
        [ACME, CustomerMapping("acme", "cust-2", None)],
        {("acme", "api_calls"): ["requests"]},
    )
    assert two[0] == [] and [p.code for p in two[1]] == ["shared_pair"]
    anchored = [Line("il_1", "price_a", ts(2027, 1, 15, 10, 45), ts(2027, 2, 15, 10, 45), "7")]
    foreign = targets(
        anchored, {"price_a": "mtr_a"}, {"mtr_a": "api_calls"}, [ACME], {("acme", "api_calls"): ["requests"]}
    )
    assert foreign[0] == [] and [p.code for p in foreign[1]] == ["period_mismatch"]
    assert "billingAnchor" in foreign[1][0].message


TARGET = Target(Line("il_1", "price_a", *JAN, "7"), "api_calls", "acme", "requests", "cust-1", "2027-01")


def check(local: int, stripe: int, status: str = "parity", in_flight: int = 0) -> LineCheck:
    return LineCheck(TARGET, local, stripe, status, in_flight)


NOW = float(ts(2027, 2, 1, 1))
DEADLINE = float(ts(2027, 2, 1, 1, 50))


@pytest.mark.parametrize(
    ("checks", "kind", "code"),
    [
        ([check(7, 7)], "release", "proven"),
        ([check(7, 5, "parity", 2)], "hold", "in_flight"),  # the last pushes are not in Stripe yet
        ([check(1000, 999, "within_epsilon")], "hold", "proving"),  # reconciliation aligns it
        ([check(7, 7), check(100, 50, "drift")], "hold", "beyond_epsilon"),
        ([], "ignore", "unguarded"),
    ],
)
def test_only_a_draft_proven_on_every_line_is_released(checks: list[LineCheck], kind: str, code: str) -> None:
    decision = decide(checks, [], stripe_now=NOW, deadline=DEADLINE, unproven="hold")
    assert (decision.kind, decision.code) == (kind, code)


def test_at_the_deadline_an_unproven_draft_stays_held_or_is_released_as_the_operator_chose() -> None:
    drift = [check(100, 50, "drift")]
    held = decide(drift, [], stripe_now=DEADLINE, deadline=DEADLINE, unproven="hold")
    released = decide(drift, [], stripe_now=DEADLINE, deadline=DEADLINE, unproven="release")
    assert (held.kind, held.code) == ("hold", "deadline")
    assert (released.kind, released.code) == ("release", "deadline")
    # a proven draft is released whatever the time; before the deadline nothing unproven is released
    assert (
        decide([check(7, 7)], [], stripe_now=DEADLINE + 1, deadline=DEADLINE, unproven="hold").kind
        == "release"
    )
    assert decide(drift, [], stripe_now=DEADLINE - 1, deadline=DEADLINE, unproven="release").kind == "hold"


def test_unbilled_is_what_was_counted_beyond_the_final_quantity_less_nothing_carried_twice() -> None:
    proof = [
        {"lineId": "il_1", "invoiceQuantity": "7"},
        {"lineId": "il_2", "invoiceQuantity": "3"},
        {"lineId": "il_3", "problem": "period_mismatch", "invoiceQuantity": "1"},
    ]
    found = unbilled(proof, {"il_1": 9, "il_2": 3}, [])
    assert [(u.line_id, u.units, u.carried, u.to_carry) for u in found] == [("il_1", 2, 0, 2)]
    later = unbilled(proof, {"il_1": 12, "il_2": 3}, [{"lineId": "il_1", "units": 2, "carried": 2}])
    assert [(u.line_id, u.units, u.to_carry) for u in later] == [("il_1", 5, 3)]  # only the new 3
