"""A reconciliation run's check, pure parts: the items built from the rows, their hours and steps, the
hours to chase and what the run learnt about Stripe's lag."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

from stripemeter.core.reconcile_compare import Hour, Item, Lag, SharedPair, Step, Verdict
from stripemeter.domain.units import MICROS
from stripemeter.services.reconciliation.check import (
    Mappings,
    build_hours,
    hours_to_chase,
    lag_records,
    plan_items,
    with_steps,
)
from stripemeter.services.reconciliation.request import RunRequest

H0 = datetime(2026, 11, 20, 14, tzinfo=UTC)
H1 = H0 + timedelta(hours=1)
NOW = datetime(2026, 11, 25, tzinfo=UTC).timestamp()
GRACE = 72 * 3600.0
MAPPINGS = Mappings({"requests": ("api_requests", "sum")}, {"acme": ("cus_1", None), "bolt": ("cus_2", None)})


def hour_row(
    metric: str, customer: str, bucket: datetime, micros: int | None, **extra: Any
) -> dict[str, Any]:
    row = {
        "metric": metric,
        "customer_ref": customer,
        "bucket": bucket,
        "local_micros": micros,
        "pushed_units": None,
        "status": None,
        "reason": None,
        "changed_at": bucket.timestamp() + 60,
    }
    return row | extra


def plan(
    request: RunRequest,
    hour_rows: list[dict[str, Any]] = [],  # noqa: B006 (never changed)
    late_rows: list[dict[str, Any]] = [],  # noqa: B006
    correction_rows: list[dict[str, Any]] = [],  # noqa: B006
    now: float = NOW,
    mappings: Mappings = MAPPINGS,
) -> dict[tuple[str, str], Item]:
    items, ranges = plan_items(
        request, "2026-11", now, GRACE, mappings, hour_rows, late_rows, correction_rows
    )
    assert set(ranges) == {(i.metric, i.customer_ref) for i in items}
    return {(i.metric, i.customer_ref): i for i in items}


def test_every_mapped_pair_and_every_counted_stream_is_an_item() -> None:
    rows = [hour_row("requests", "acme", H0, 3 * MICROS), hour_row("storage", "acme", H0, 5 * MICROS)]
    items = plan(RunRequest("demo"), rows)
    assert sorted(items) == [("requests", "acme"), ("requests", "bolt"), ("storage", "acme")]
    assert items[("requests", "acme")].hours[int(H0.timestamp())].local == 3
    assert items[("requests", "bolt")].hours == {} and items[("requests", "bolt")].missing == []
    assert items[("storage", "acme")].missing == ["metric mapping"]
    assert items[("storage", "acme")].aggregation == "sum"


def test_unmapped_customers_metric_and_customer_filters() -> None:
    rows = [hour_row("requests", "ghost", H0, MICROS), hour_row("storage", "acme", H0, MICROS)]
    assert plan(RunRequest("demo", "requests"), rows)[("requests", "ghost")].missing == ["customer mapping"]
    assert sorted(plan(RunRequest("demo", "requests"), rows)) == [
        ("requests", "acme"), ("requests", "bolt"), ("requests", "ghost"),
    ]  # fmt: skip
    assert sorted(plan(RunRequest("demo", customer_ref="acme"), rows)) == [
        ("requests", "acme"), ("storage", "acme"),
    ]  # fmt: skip


def test_hours_outside_the_customers_period_are_left_out() -> None:
    december = datetime(2026, 12, 1, tzinfo=UTC)
    items = plan(RunRequest("demo", "requests"), [hour_row("requests", "acme", december, MICROS)])
    assert items[("requests", "acme")].hours == {}


def test_a_cycle_not_begun_is_skipped_and_only_open_skips_final_invoices() -> None:
    assert plan(RunRequest("demo"), now=datetime(2026, 10, 31, tzinfo=UTC).timestamp()) == {}
    closed_long_ago = datetime(2026, 12, 1, tzinfo=UTC).timestamp() + GRACE + 1
    assert plan(RunRequest("demo", only_open=True), now=closed_long_ago) == {}
    assert len(plan(RunRequest("demo"), now=closed_long_ago)) == 2
    assert len(plan(RunRequest("demo", only_open=True), now=closed_long_ago - 2)) == 2


def test_late_events_and_corrections_are_given_to_their_items() -> None:
    late = [
        {"metric": "requests", "customer_ref": "acme", "bucket": H0, "n": 2, "micros": 7 * MICROS},
        {"metric": "requests", "customer_ref": "acme", "bucket": H1, "n": 1, "micros": None},
    ]
    corrections = [
        {
            "metric": "requests",
            "customer_ref": "acme",
            "bucket": H0,
            "at": H0.timestamp() + 600,
            "pending": False,
        },
        {"metric": "requests", "customer_ref": "acme", "bucket": H1, "at": H1.timestamp(), "pending": True},
    ]
    items = plan(RunRequest("demo"), [hour_row("requests", "acme", H0, MICROS)], late, corrections)
    acme = items[("requests", "acme")]
    assert (acme.late_count, acme.late_micros) == (3, 7 * MICROS)
    assert acme.hours[int(H0.timestamp())].changed_at == H0.timestamp() + 600  # corrected after it changed
    # an unanswered correction into an hour never counted: in flight until Stripe answers
    assert acme.hours[int(H1.timestamp())] == Hour(0, None, None, None, math.inf)


def test_build_hours_carries_fractions_and_keeps_the_writers_state() -> None:
    rows = [
        hour_row("requests", "acme", H1, MICROS // 2, pushed_units=1, status="synced", reason=None),
        hour_row(
            "requests", "acme", H0, MICROS // 2 + MICROS, pushed_units=None, status="parked", reason="no"
        ),
    ]
    hours = build_hours("sum", rows, {int(H1.timestamp()): H1.timestamp() + 3600})
    b0, b1 = int(H0.timestamp()), int(H1.timestamp())
    assert hours[b0] == Hour(1, None, "parked", "no", H0.timestamp() + 60, MICROS + MICROS // 2)
    assert hours[b1] == Hour(1, 1, "synced", None, H1.timestamp() + 3600, MICROS // 2)  # 1.5 + 0.5 = 2
    assert build_hours("last", rows, {})[b0].local == 2  # last: each hour's value, rounded


def test_with_steps_orders_pushes_and_corrections_and_finds_the_base() -> None:
    hour = Hour(10, 9, "synced", None, 0.0)
    rows: list[dict[str, Any]] = [
        {"kind": "cover", "at": None, "value": 2, "to_units": None, "seen": None},
        {"kind": "push", "at": 100.0, "value": 4, "to_units": 4, "seen": None},
        {"kind": "correction", "at": 200.0, "value": 1, "to_units": None, "seen": 7},
    ]
    summed = with_steps("sum", hour, rows)
    assert summed.steps == (Step(100.0, 4), Step(200.0, 1, 7))
    assert summed.base == 9 - 4 - 2  # pushed units no logged request carries, less what corrections cover
    assert with_steps("last", hour, rows).base == 0


def test_the_hours_to_chase_differ_from_stripe_or_were_seen_lagging() -> None:
    b0, b1 = int(H0.timestamp()), int(H1.timestamp())
    item = Item(
        "demo",
        "requests",
        "acme",
        "sum",
        {b0: Hour(5, 5, "synced", None, 0.0), b1: Hour(3, 3, "synced", None, 0.0)},
    )
    assert hours_to_chase([(item, {b0: 5, b1: 2})], set()) == [("requests", "acme", H1)]
    assert hours_to_chase([(item, {b0: 5, b1: 3})], {("requests", "acme", H0)}) == [("requests", "acme", H0)]
    shared = SharedPair(
        "api_requests", "cus_1", (("demo", "requests", "acme"), ("x", "m", "c")), frozenset({"sum"})
    )
    item.shared = shared
    assert hours_to_chase([(item, {b0: 0, b1: 0})], set()) == []


def test_lag_records_name_the_lags_seen_and_the_lags_a_read_shows_were_lag() -> None:
    b0, b1 = int(H0.timestamp()), int(H1.timestamp())
    item = Item("demo", "requests", "acme", "sum")
    verdict = Verdict(
        5, 4, 0, 0.0, "parity", 1, [], [], [],
        lags=[Lag(b0, 1000.0, 30.0)], shown=[(b1, (900.0, 950.0)), (b0, (800.0,))],
    )  # fmt: skip
    lags, shown = lag_records([(item, verdict)], {("requests", "acme", H1)})
    assert lags == [(("requests", "acme", H0, 1000.0), 30.0)]
    assert shown == [("requests", "acme", H1, 900.0), ("requests", "acme", H1, 950.0)]  # H0 was never lagging
