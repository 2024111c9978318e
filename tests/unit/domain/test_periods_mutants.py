"""Billing periods where a changed comparison or argument would move money between invoices: a
period's state at its end and at the end of its grace to the instant, the oldest open period with
anchors, a correction's notes, and no dependence on the machine's time zone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from stripemeter.domain import periods
from stripemeter.domain.periods import PeriodError, PeriodNote

GRACE = timedelta(hours=72)
NOV = periods.period("2026-11")  # 2026-11-01 .. 2026-12-01


def test_a_period_is_open_until_its_end_closing_for_its_grace_then_closed() -> None:
    end = NOV.end
    assert periods.state_at(NOV, end - timedelta(microseconds=1), GRACE) == "open"
    assert periods.state_at(NOV, end, GRACE) == "closing"
    assert periods.state_at(NOV, end + GRACE - timedelta(microseconds=1), GRACE) == "closing"
    assert periods.state_at(NOV, end + GRACE, GRACE) == "closed"


def test_an_anchor_late_in_the_month_keeps_two_earlier_cycles_open() -> None:
    anchor = datetime(2026, 1, 30, 10, tzinfo=UTC)  # cycles from the 30th (clamped), 10:00
    now = datetime(2026, 12, 1, 5, tzinfo=UTC)
    # calendar: 2026-12, and 2026-11 in its grace; anchored: 2026-11 (30 Nov - 30 Dec) is current and
    # 2026-10 (30 Oct - 30 Nov 10:00) is in its grace
    assert periods.open_names(now, [anchor], GRACE) == ["2026-12", "2026-11", "2026-10"]
    assert periods.open_since(now, [anchor], GRACE) == datetime(2026, 10, 30, 10, tzinfo=UTC)


def test_the_oldest_open_period_starts_at_the_earliest_open_cycle() -> None:
    now = datetime(2026, 12, 2, tzinfo=UTC)
    assert periods.open_since(now, [], GRACE) == datetime(2026, 11, 1, tzinfo=UTC)
    assert periods.open_since(datetime(2026, 12, 20, tzinfo=UTC), [], GRACE) == datetime(
        2026, 12, 1, tzinfo=UTC
    )
    anchor = datetime(2026, 1, 15, 10, tzinfo=UTC)
    assert periods.open_since(now, [anchor], GRACE) == datetime(2026, 11, 1, tzinfo=UTC)
    assert periods.open_since(datetime(2026, 12, 20, tzinfo=UTC), [anchor], GRACE) == datetime(
        2026, 12, 1, tzinfo=UTC
    )
    assert periods.open_since(datetime(2026, 12, 10, tzinfo=UTC), [anchor], GRACE) == datetime(
        2026, 11, 15, 10, tzinfo=UTC
    )


def test_a_refused_name_is_named_with_what_is_wrong() -> None:
    with pytest.raises(PeriodError) as caught:
        periods.parse_name("1969-12")
    assert (caught.value.name, caught.value.message) == (
        "1969-12",
        "period '1969-12' is outside 1970-01 .. 9998-12",
    )


@pytest.fixture(params=["Pacific/Auckland", "America/New_York"])
def machine_zone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The machine's local zone is ahead of UTC, or behind it (so local dates differ from UTC's)."""
    monkeypatch.setenv("TZ", request.param)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("machine_zone")
def test_periods_are_utc_whatever_the_machines_zone() -> None:
    anchor = datetime(2026, 1, 15, 20, tzinfo=UTC)  # 16 Jan 09:00 in Auckland
    assert periods.period("2026-11", anchor).start == datetime(2026, 11, 15, 20, tzinfo=UTC)
    assert periods.current_name(datetime(2026, 11, 30, 23, tzinfo=UTC)) == "2026-11"
    assert periods.current_name(datetime(2026, 12, 1, 2, tzinfo=UTC)) == "2026-12"  # 30 Nov in New York
    # an instant in another zone is placed by its UTC time
    plus_two = timezone(timedelta(hours=2))
    assert periods.current_name(datetime(2026, 12, 1, 1, tzinfo=plus_two)) == "2026-11"
    assert periods.period("2026-11", datetime(2026, 1, 15, 22, tzinfo=plus_two)).start == datetime(
        2026, 11, 15, 20, tzinfo=UTC
    )


def test_a_corrections_notes_group_its_changes_by_period_oldest_first() -> None:
    anchor = datetime(2026, 1, 15, 10, tzinfo=UTC)
    now = datetime(2026, 12, 2, tzinfo=UTC)
    changes = [
        (None, datetime(2026, 11, 20, 3, tzinfo=UTC), 2_000_000),
        (anchor, datetime(2026, 11, 20, 3, tzinfo=UTC), 5_000_000),  # the anchored 2026-11 (15 Nov - 15 Dec)
        (None, datetime(2026, 10, 28, tzinfo=UTC), -1_000_000),  # 35 days before now: still in Stripe
        (None, datetime(2026, 10, 27, 23, tzinfo=UTC), 4_000_000),  # older than Stripe takes
        (None, datetime(2026, 10, 5, tzinfo=UTC), 1_000_000),  # and another
        (None, datetime(2026, 11, 1, tzinfo=UTC), 500_000),
    ]
    names, notes = periods.notes_for(changes, now, GRACE)
    assert names == ["2026-11", "2026-11", "2026-10", "2026-10", "2026-10", "2026-11"]
    october, calendar_november, anchored_november = notes
    assert (
        october.period,
        october.state,
        october.counters,
        october.delta_micros,
        october.too_old_for_stripe,
    ) == (
        periods.period("2026-10"),
        "closed",
        3,
        4_000_000,
        2,
    )
    assert (calendar_november.period, calendar_november.state) == (NOV, "closing")
    assert (
        calendar_november.counters,
        calendar_november.delta_micros,
        calendar_november.too_old_for_stripe,
    ) == (
        2,
        2_500_000,
        0,
    )
    assert (anchored_november.period, anchored_november.state) == (periods.period("2026-11", anchor), "open")
    assert (anchored_november.counters, anchored_november.delta_micros) == (1, 5_000_000)


def test_a_note_warns_of_what_stripe_will_not_bill() -> None:
    assert PeriodNote(NOV, "open").warning(GRACE) is None
    assert PeriodNote(NOV, "closing").warning(GRACE) == (
        "period 2026-11 ended at 2026-12-01T00:00:00Z: its invoice is being finalised (at the latest by"
        " 2026-12-04T00:00:00Z); the change counts only if it reaches Stripe before then"
    )
    assert PeriodNote(NOV, "closed").warning(GRACE) == (
        "period 2026-11 closed at 2026-12-01T00:00:00Z: its invoice is likely final, so Stripe will not bill"
        " this change (settle it with a credit note or an invoice item)"
    )
    assert PeriodNote(NOV, "closed", too_old_for_stripe=2).warning(GRACE) == (
        "period 2026-11: 2 changed hour(s) are older than Stripe's 35 days; the writer cannot push them"
        " (settle them outside Stripe)"
    )
