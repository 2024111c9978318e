"""The replay plan (pure): corrections an earlier apply recorded are sent again unchanged, and new
corrections cover only the events given (those no correction claims)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stripemeter.core.replay_plan import PendingFold, Recorded, make_plan, plan_from
from stripemeter.schemas.corrections import Correction

HOUR = datetime(2026, 11, 20, 14, tzinfo=UTC)


def late(key: str, customer: str, minutes: int, quantity: int, offset: int) -> dict[str, Any]:
    ts = HOUR + timedelta(minutes=minutes)
    ts_ms = int(ts.timestamp() * 1000)
    return {
        "metric": "requests",
        "customer_ref": customer,
        "ts": ts,
        "ts_ms": ts_ms,
        "bucket_ms": ts_ms // 3_600_000 * 3_600_000,
        "quantity_micros": quantity * 1_000_000,
        "idempotency_key": key,
        "source_topic": "usage.events",
        "source_partition": 0,
        "source_offset": offset,
        "source_index": 0,
    }


def recorded(ident: str, customer: str, micros: int, events: int) -> tuple[Any, Recorded]:
    ms = int(HOUR.timestamp() * 1000)
    correction = Correction(ident, "t", "requests", customer, ms, "add", micros, ms)
    return ("requests", customer, HOUR), Recorded(correction, events)


def test_recorded_corrections_are_sent_again_unchanged_and_new_ones_cover_only_new_events() -> None:
    rows = [late("k9", "acme", 5, 7, 90)]
    before = {("requests", "acme", HOUR): 10_000_000}
    again = [recorded("rp_old_acme", "acme", 5_000_000, 2), recorded("rp_old_beta", "beta", 3_000_000, 1)]
    plan = make_plan("t", rows, {}, before, again)
    assert [c.id for c in plan.corrections[:2]] == ["rp_old_acme", "rp_old_beta"]
    assert [c for c, _keys in plan.new] == plan.corrections[2:] and plan.keys == ["k9"]
    (fresh,) = plan.corrections[2:]
    assert (fresh.customer_ref, fresh.micros) == ("acme", 7_000_000)
    acme, beta = plan.changes  # one change per counter, both corrections of acme in it
    assert (acme.before_micros, acme.after_micros, acme.events, acme.resent) == (10_000_000, 22_000_000, 3, 2)
    assert (beta.before_micros, beta.after_micros, beta.events, beta.resent) == (0, 3_000_000, 1, 1)


def test_a_new_correction_id_depends_on_its_events_only() -> None:
    one = make_plan("t", [late("k1", "acme", 1, 1, 1)], {}, {})
    both = make_plan("t", [late("k1", "acme", 1, 1, 1), late("k2", "acme", 2, 1, 2)], {}, {})
    assert one.corrections[0].id != both.corrections[0].id
    assert make_plan("t", [late("k1", "acme", 1, 1, 1)], {}, {}).corrections == one.corrections
    nothing = make_plan("t", [], {}, {}, [])
    assert (nothing.changes, nothing.corrections, nothing.keys) == ([], [], [])


def test_the_fold_one_counter_at_a_time_plans_what_make_plan_plans() -> None:
    """Rows as the pending-late stream hands them (each counter's together, in key order): the same
    plan as make_plan over the whole list; a dry-run's fold keeps no keys."""
    rows = [
        late("a1", "acme", 5, 2, 1), late("a2", "acme", 5, 3, 2),  # a tie of ts: the later row wins `last`
        late("a3", "acme", 70, 4, 3),  # the next hour
        late("b1", "beta", 1, 1, 4),
    ]  # fmt: skip
    before = {("requests", "acme", HOUR): 10_000_000}
    again = [recorded("rp_old_beta", "beta", 3_000_000, 1)]
    for aggregation in ("sum", "count", "last"):
        whole = make_plan("t", rows, {"requests": aggregation}, before, again)
        fold = PendingFold("t")
        most = 0
        for row in rows:
            fold.add(row)
            most = max(most, len(fold.events))
        assert plan_from(fold.finish(), {"requests": aggregation}, before, again) == whole
        assert most == 2  # one counter's events at a time, never the window's four
    dry = PendingFold("t", keep_keys=False)
    for row in rows:
        dry.add(row)
    assert all(p.keys == [] for p in dry.finish().values())


def test_the_fold_refuses_a_counter_whose_events_come_apart() -> None:
    fold = PendingFold("t")
    fold.add(late("a1", "acme", 5, 2, 1))
    fold.add(late("b1", "beta", 5, 2, 2))
    with pytest.raises(ValueError, match="did not arrive together"):
        fold.add(late("a2", "acme", 6, 2, 3))
