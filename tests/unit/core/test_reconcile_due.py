"""Which items a scheduled pass reads (core/reconcile_due.py): what counts as a change, the sweep's
turns and their spread, the closing window, and the order of the reasons."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest

from stripemeter.core.reconcile_compare import Hour, Item, SharedPair, judge
from stripemeter.core.reconcile_due import (
    Proof,
    Sweep,
    closing_turn,
    digest,
    phase,
    proven,
    reason,
    sweep_turn,
)

NOW = 1_800_000_000.0
B0, B1 = 1_799_982_000, 1_799_985_600
MAPPING = ("requests_v1", "cus_1")
PERIOD = (1_797_000_000.0, 1_800_500_000.0)
DAY = Sweep(sweep_seconds=86400, interval_seconds=900, closing_seconds=21600)


def item(**changes: object) -> Item:
    it = Item("t", "requests", "c1", "sum")
    it.hours = {
        B0: Hour(10, 10, "synced", None, NOW - 7200, 10_000_000, revision=4),
        B1: Hour(3, 3, "synced", None, NOW - 3600, 3_000_000, revision=2),
    }
    for name, value in changes.items():
        setattr(it, name, value)
    return it


def changed_hour(**fields: object) -> Item:
    it = item()
    it.hours[B1] = replace(it.hours[B1], **fields)  # type: ignore[arg-type]
    return it


BEFORE = digest(item(), MAPPING, PERIOD)

# every local change the verdict depends on moves the digest
CHANGES = {
    "a counter change": changed_hour(local=4, exact_micros=4_000_000, revision=3),
    "a correction counted into the hour (same total, new seq)": changed_hour(revision=3),
    "a push delivered": changed_hour(pushed=4, revision=3),
    "the writer's state": changed_hour(writer_status="waiting", revision=3),
    "a drop report parks the hour": changed_hour(writer_status="parked", writer_reason="dropped"),
    "a correction sent to Stripe, unanswered": changed_hour(changed_at=math.inf),
    "a correction sent to Stripe, applied": changed_hour(changed_at=NOW - 60),
    "a new hour": item(hours={**item().hours, B1 + 3600: Hour(1, None, None, None, NOW)}),
    "too-late events waiting": item(late_count=1, late_micros=1_000_000),
    "a correction sent to Stripe": item(corrections=((B1, NOW - 60, False, 1),)),
    "a missing mapping": item(missing=["customer mapping"]),
    "the aggregation": item(aggregation="last"),
    "a shared Stripe pair": item(
        shared=SharedPair(
            "requests_v1", "cus_1", (("t", "a", "c1"), ("t", "requests", "c1")), frozenset({"sum"})
        )
    ),
}


@pytest.mark.parametrize("changed", CHANGES.values(), ids=CHANGES.keys())
def test_every_local_change_moves_the_digest(changed: Item) -> None:
    assert digest(changed, MAPPING, PERIOD) != BEFORE


def test_a_correction_refused_or_reported_dropped_moves_the_digest() -> None:
    """Two corrections of an hour may be in Stripe; Stripe reports the older one dropped: its time
    stays the newest one's, the count does not."""
    two = item(corrections=((B1, NOW - 60, False, 2),))
    one = item(corrections=((B1, NOW - 60, False, 1),))
    answered = item(corrections=((B1, NOW - 60, True, 2),))
    assert len({digest(it, MAPPING, PERIOD) for it in (two, one, answered)}) == 3


def test_a_mapping_or_a_billing_cycle_change_moves_the_digest_and_nothing_else_does() -> None:
    assert digest(item(), ("requests_v2", "cus_1"), PERIOD) != BEFORE
    assert digest(item(), ("requests_v1", "cus_2"), PERIOD) != BEFORE
    assert digest(item(), None, PERIOD) != BEFORE
    assert digest(item(), MAPPING, (PERIOD[0] + 3600, PERIOD[1] + 3600)) != BEFORE
    assert digest(item(), MAPPING, PERIOD) == BEFORE  # the same state: the same digest, every time


def test_the_reasons_come_in_order_and_a_standing_proof_is_left_alone() -> None:
    end = PERIOD[1]
    fresh = Proof(NOW - 60, BEFORE)
    assert reason(None, BEFORE, NOW, end, 0.5, DAY, False) == "new"
    assert reason(Proof(NOW - 60, None), BEFORE, NOW, end, 0.5, DAY, True) == "unproven"
    assert reason(fresh, BEFORE, NOW, end, 0.5, DAY, True) == "lagging"
    assert reason(fresh, "other", NOW, end, 0.5, DAY, False) == "changed"
    assert reason(fresh, BEFORE, NOW, end + 10 * 86400, 0.5, DAY, False) == "unchanged"


def test_the_sweep_gives_each_item_a_turn_per_cadence_at_its_own_phase() -> None:
    cadence = DAY.cadence
    assert cadence == 86400 - 900
    turn = sweep_turn(NOW, 0.25, cadence)
    assert NOW - cadence < turn <= NOW and (turn - 0.25 * cadence) % cadence == pytest.approx(0)
    far = PERIOD[1] + 10 * 86400
    assert reason(Proof(turn - 1, BEFORE), BEFORE, NOW, far, 0.25, DAY, False) == "sweep"
    assert reason(Proof(turn, BEFORE), BEFORE, NOW, far, 0.25, DAY, False) == "unchanged"
    # whatever the phase, an item read at each pass after its turn is never unread for a sweep period
    for p in (0.0, 0.1, 0.5, 0.999):
        passes = [NOW + k * 900 for k in range(400)]
        reads = [t for t, prev in zip(passes[1:], passes, strict=False) if sweep_turn(t, p, cadence) > prev]
        assert len(reads) >= 4 and all(b - a <= 86400 for a, b in itertools.pairwise(reads))


def test_a_pass_reads_its_even_share_of_the_sweep() -> None:
    """10,000 items, 96 passes a day: about 105 read a pass, every item exactly once a cadence."""
    phases = [phase("t", "requests", f"c{n}") for n in range(10_000)]
    per_pass = [
        sum(1 for p in phases if NOW + k * 900 - 900 < sweep_turn(NOW + k * 900, p, DAY.cadence))
        for k in range(1, 96)
    ]
    assert sum(per_pass) == pytest.approx(10_000, rel=0.01)
    assert max(per_pass) < 160 and min(per_pass) > 60, per_pass


def test_the_closing_window_gives_each_item_one_turn_before_its_period_ends() -> None:
    end = PERIOD[1]
    assert closing_turn(end - 21601, end, 0.0, DAY) is None  # not in the window yet
    for p in (0.0, 0.5, 0.999):
        turn = closing_turn(end, end, p, DAY)
        assert turn is not None and end - 21600 <= turn <= end - 900
    no_window = replace(DAY, closing_seconds=0)
    assert closing_turn(end, end, 0.5, no_window) is None
    turn = closing_turn(end, end, 0.5, DAY)
    assert turn is not None
    read_before_turn = Proof(turn - 1, BEFORE)
    # the sweep's turn was long ago; the closing turn came: read once, then left alone until the end
    far_sweep = replace(DAY, sweep_seconds=40 * 86400)
    assert reason(read_before_turn, BEFORE, turn + 1, end, 0.5, far_sweep, False) in ("closing", "sweep")
    assert reason(Proof(turn + 1, BEFORE), BEFORE, end + 3600, end, 0.5, far_sweep, False) == "unchanged"


def test_only_settled_parity_proves_an_item() -> None:
    it = item()
    settled = judge(it, {B0: 10, B1: 3}, NOW, 300, 0.005)
    assert proven(settled.status, settled.in_flight, settled.settled)
    recent = item()
    recent.hours[B1] = replace(recent.hours[B1], changed_at=NOW - 10)
    in_flight = judge(recent, {B0: 10, B1: 2}, NOW, 300, 0.005)
    assert in_flight.status == "parity" and not in_flight.settled
    assert not proven(in_flight.status, in_flight.in_flight, in_flight.settled)
    assert not proven("within_epsilon", 0, True)
    assert not proven("parity", 1, True)
