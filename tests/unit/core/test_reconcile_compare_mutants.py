"""Judging reconciliation items where a changed operator, constant or argument would change a verdict,
a correction (money sent to Stripe) or what the operator is told: each test kills mutants the other
tests let live. Boundaries are hit exactly: the settle time and the lag cap to the second, an empty
item, a zero scale."""

from __future__ import annotations

from stripemeter.core.reconcile_compare import (
    LAG_CAP_S,
    Hour,
    Item,
    Look,
    Step,
    Verdict,
    combine,
    differing,
    judge,
    judge_totals,
    look,
    relative,
    settle_time,
    states,
    total,
)
from tests.unit.core.test_reconcile_compare import H0, H1, H2, NOW, delivered, item, seats, synced


def test_an_empty_period_totals_zero_and_an_empty_difference_is_none() -> None:
    assert total("sum", {}) == 0 and total("last", {}) == 0
    assert total("last", {H1: 4, H0: 9}) == 4 and total("sum", {H1: 4, H0: 9}) == 13
    assert relative(0, 0, 0) == 0.0
    assert relative(0, 5, 5) == 0.0


def test_a_difference_against_nothing_is_all_of_it_and_a_scale_is_the_larger_magnitude() -> None:
    assert relative(3, 0, 0) == 1.0
    assert relative(2, 1, -1) == 2.0  # scale 1: the larger magnitude, not 0 from the signs
    assert relative(5, -10, 2) == 0.5


def test_the_hours_that_differ_are_found_per_aggregation() -> None:
    it = item(**{f"h{H0}": synced(5), f"h{H1}": synced(0), f"h{H2}": synced(7)})
    assert differing(it, {H0: 5, H2: 6}) == {H2}  # an hour Stripe lacks reads 0 for sum
    assert differing(it, {H0: 5, H1: 0, H2: 7, H2 + 3600: 1}) == {H2 + 3600}
    last = seats(**{f"h{H0}": synced(5), f"h{H1}": synced(0)})
    assert differing(last, {H0: 5}) == {H1}  # last: no event is not 0
    assert differing(last, {H0: 5, H1: 0, H2: 0}) == {H2}


def test_a_shared_pairs_hour_adds_its_counters_up_and_is_synced_only_when_all_are() -> None:
    a = Hour(3, 3, "synced", None, NOW - 100, 3_200_000)
    b = Hour(4, 2, "pending", "slow", NOW - 50, 4_100_000)
    c = Hour(1, None, "parked", "No such customer", NOW - 70, 900_000)
    assert combine([a, b, c]) == Hour(8, 5, "pending", "No such customer; slow", NOW - 50, 8_200_000)
    assert combine([a, a]) == Hour(6, 6, "synced", None, NOW - 100, 6_400_000)
    assert combine([c]).pushed is None


def test_with_no_lag_seen_the_settle_time_is_the_configured_one_even_below_a_second() -> None:
    assert settle_time(0.0, None) == 0.0
    assert settle_time(0.5, None) == 0.5
    assert settle_time(0.5, 0.0) == 0.5


def test_the_states_a_summary_can_show_step_by_step() -> None:
    pushes = Hour(12, 12, "synced", None, NOW, steps=(Step(NOW - 30, 5), Step(NOW - 20, 7)), base=2)
    assert states("sum", pushes) == [{2}, {7}, {14}]
    assert states("last", pushes) == [{None}, {5}, {7}]
    corrected = Hour(
        9, 12, "synced", None, NOW, steps=(Step(NOW - 30, 5), Step(NOW - 20, 7), Step(NOW - 10, -3, seen=12))
    )
    assert states("sum", corrected) == [{0}, {5}, {12}, {9}]
    seen_elsewhere = Hour(
        9, 12, "synced", None, NOW, steps=(Step(NOW - 30, 5), Step(NOW - 20, -3, seen=6), Step(NOW - 10, 7))
    )
    assert states("sum", seen_elsewhere) == [{0}, {5, 6}, {3}, {10}]


def at(it: Item, bucket: int, stripe: int | None, settle: float = 60, cap: float = LAG_CAP_S) -> Look:
    return look(it, bucket, stripe, NOW, settle, cap)


def test_an_hour_is_in_flight_until_exactly_its_settle_time() -> None:
    it = item(**{f"h{H0}": Hour(10, 10, "synced", None, NOW - 60)})
    assert at(it, H0, 8).state == "drift"  # changed 60 s ago, settle time 60 s: settled
    assert at(it, H0, 8, settle=60.001).state == "in_flight"
    verdict = judge(it, {H0: 8}, NOW, 60, 0.5)
    assert (verdict.status, verdict.in_flight, verdict.diff_abs) == ("within_epsilon", 0, 2)


def test_a_step_unseen_for_exactly_the_cap_is_missing_and_no_lag() -> None:
    hour = delivered(507, Step(NOW - 7200, 500), Step(NOW - 3600, 7))
    it = item(**{f"h{H0}": hour})
    assert at(it, H0, 500).state == "drift"  # unseen 3600 s, the cap: no longer lag
    verdict = judge(it, {H0: 500}, NOW, 60, 0.5)
    assert verdict.lags == [] and verdict.corrections == [(H0, 7)]
    just_under = judge(it, {H0: 500}, NOW, 60, 0.5, lag_cap=3600.001)
    assert just_under.lags != [] and just_under.corrections == []


def test_each_look_says_what_it_saw() -> None:
    hour = delivered(507, Step(NOW - 7200, 500), Step(NOW - 90, 7))
    it = item(**{f"h{H0}": hour})
    assert at(it, H0, 507) == Look(H0, 507, 507, "equal", shown=(NOW - 7200, NOW - 90))
    assert at(it, H0, 500) == Look(H0, 507, 500, "in_flight", at(it, H0, 500).lag, (NOW - 7200,))
    assert at(it, H0, 509) == Look(H0, 507, 509, "drift", None, ())  # no step sequence explains it
    assert at(it, H0, 500, cap=60) == Look(H0, 507, 500, "drift", at(it, H0, 500, cap=60).lag, (NOW - 7200,))
    # an hour only Stripe has: 0 locally for sum, no value for last
    assert at(it, H1, 2) == Look(H1, 0, 2, "drift")
    assert at(it, H1, None) == Look(H1, 0, 0, "equal")
    last = seats(**{f"h{H0}": synced(3)})
    assert at(last, H1, 2) == Look(H1, None, 2, "drift")
    assert at(last, H1, None) == Look(H1, None, None, "equal")


def test_a_last_hour_is_explained_by_last_values_not_sums() -> None:
    hour = Hour(12, 12, "synced", None, NOW - 30, steps=(Step(NOW - 3000, 10), Step(NOW - 30, 12)))
    it = seats(**{f"h{H0}": hour})
    seen = at(it, H0, 10)
    assert (seen.state, seen.shown) == ("in_flight", (NOW - 3000,))
    assert seen.lag is not None and seen.lag.unseen_since == NOW - 30
    assert at(it, H0, 22).lag is None  # a sum of the steps explains nothing for last
    assert at(it, H0, 12).shown == (NOW - 3000, NOW - 30)  # 12 is what both steps leave, not their sum


def test_a_parity_verdict_names_only_what_is_worth_knowing() -> None:
    it = item(**{f"h{H0}": synced(10)})
    it.missing = ["customer mapping"]
    assert judge(it, {H0: 10}, NOW, 60, 0.5).causes == []


def test_totals_alone_give_the_whole_parity_verdict() -> None:
    it = item(**{f"h{H0}": synced(10), f"h{H1}": synced(5)})
    it.late_count, it.late_micros = 2, 1_500_000
    late = {
        "code": "late_events",
        "message": "2 too-late events are in usage.late and not counted; replay their window to count them",
        "count": 2,
        "total": 1.5,
    }
    assert judge_totals(it, 15) == Verdict(15, 15, 0, 0.0, "parity", 0, [late], [], [])


def test_a_last_item_has_nothing_in_flight_at_parity_or_in_settled_drift() -> None:
    parity = seats(**{f"h{H0}": synced(4), f"h{H1}": synced(9)})
    assert judge(parity, {H0: 3, H1: 9}, NOW, 60, 0.5).in_flight == 0
    drift = seats(**{f"h{H0}": synced(9)})
    verdict = judge(drift, {H0: 7}, NOW, 60, 0.5)
    assert (verdict.in_flight, verdict.diff_abs) == (0, 2)


def test_each_cause_in_full() -> None:
    it = item(
        **{
            f"h{H0}": Hour(10, 10, "synced", None, NOW - 3600),  # Stripe lost 4 of it
            f"h{H1}": Hour(10, 10, "synced", None, NOW - 3600),  # Stripe holds 3 more
            f"h{H2}": Hour(6, 2, "waiting", None, NOW - 3600),  # the writer owes 4
            f"h{H2 + 3600}": Hour(5, 0, "parked", None, NOW - 3600),
        }
    )
    verdict = judge(it, {H0: 6, H1: 13, H2: 2}, NOW, 60, 0.5)
    assert verdict.causes == [
        {"code": "push_parked", "message": "unknown", "hours": 1},
        {
            "code": "not_yet_pushed",
            "message": "the writer has not delivered these hours yet (is it running, or behind?)",
            "hours": 1,
            "amount": 4,
        },
        {
            "code": "stripe_higher",
            "message": "Stripe holds more than was counted: a foreign or duplicated push",
            "hours": 1,
            "amount": 3,
        },
        {
            "code": "stripe_missing",
            "message": "pushes recorded as delivered are missing in Stripe (dropped or cancelled)",
            "hours": 1,
            "amount": 4,
        },
    ]
    assert verdict.corrections == [(H0, 4), (H1, -3)]
    unmapped = item(**{f"h{H0}": Hour(10, None, None, None, NOW - 3600)})
    unmapped.missing = ["customer mapping", "meter"]
    assert judge(unmapped, {}, NOW, 60, 0.5).causes == [
        {"code": "missing_mapping", "message": "no customer mapping and no meter; counted usage waits for it"}
    ]
    two_parked = item(
        **{
            f"h{H0}": Hour(5, 0, "parked", "b: meter inactive", NOW - 3600),
            f"h{H1}": Hour(5, 0, "parked", "a: no customer", NOW - 3600),
        }
    )
    assert judge(two_parked, {}, NOW, 60, 0.5).causes[0]["message"] == "a: no customer; b: meter inactive"


def test_a_missing_push_unseen_past_the_cap_says_for_how_long() -> None:
    hour = delivered(507, Step(NOW - 7200, 500), Step(NOW - 5000, 7))
    [missing] = judge(item(**{f"h{H0}": hour}), {H0: 500}, NOW, 60, 0.5).causes
    assert missing["message"] == (
        "pushes recorded as delivered are missing in Stripe (dropped or cancelled); in 1 of them a delivered"
        " push or correction is still not in Stripe's summaries 5000 s after delivery: lost, or Stripe is"
        " slower than that"
    )


def test_only_an_hour_the_writer_is_done_with_or_never_had_is_corrected() -> None:
    """Money sent to Stripe: a correction for an hour the writer still owes would count twice."""
    cases = [
        (Hour(5, 3, "synced", None, NOW - 3600), []),  # synced status, target not reached: the writer's
        (Hour(0, 2, None, None, NOW - 3600), []),  # pushed once, the counter went to 0 since
        (Hour(0, None, "waiting", None, NOW - 3600), []),  # the writer has seen it
        (Hour(1, None, None, None, NOW - 3600), []),  # counted, never pushed
        (Hour(0, None, None, None, NOW - 3600), [(H0, -2)]),  # nobody counted what Stripe holds
        (Hour(0, 0, "synced", None, NOW - 3600), [(H0, -2)]),
    ]
    for hour, corrections in cases:
        assert judge(item(**{f"h{H0}": hour}), {H0: 2}, NOW, 60, 0.5).corrections == corrections, hour


def test_what_the_writer_has_not_delivered() -> None:
    """``not_yet_pushed`` for local value the writer owes; a parked hour is named as parked instead."""
    owes = [
        Hour(0, 3, "waiting", None, NOW - 3600),
        Hour(0, 1, "waiting", None, NOW - 3600),
        Hour(4, 0, "synced", None, NOW - 3600),
    ]
    for hour in owes:
        codes = [c["code"] for c in judge(item(**{f"h{H0}": hour}), {H0: 1}, NOW, 60, 0.5).causes]
        assert "not_yet_pushed" in codes, hour
    done = [Hour(0, 0, "waiting", None, NOW - 3600), Hour(0, None, None, None, NOW - 3600)]
    for hour in done:
        codes = [c["code"] for c in judge(item(**{f"h{H0}": hour}), {H0: 1}, NOW, 60, 0.5).causes]
        assert codes == ["stripe_higher"], hour
    parked = judge(item(**{f"h{H0}": Hour(4, 0, "parked", "x", NOW - 3600)}), {}, NOW, 60, 0.5)
    assert [c["code"] for c in parked.causes] == ["push_parked"]


def test_a_last_hour_is_unpushed_until_its_newest_request_sent_its_value() -> None:
    three = (Step(NOW - 7200, 9), Step(NOW - 5400, 7), Step(NOW - 3600, 5))
    sent = Hour(5, 5, "synced", None, NOW - 3600, steps=three)
    verdict = judge(seats(**{f"h{H0}": sent}), {H0: 9}, NOW, 60, 0.5)
    assert [c["code"] for c in verdict.causes] == ["stripe_higher"]
    unsent = Hour(5, 9, "synced", None, NOW - 3600, steps=three[::-1])
    verdict = judge(seats(**{f"h{H0}": unsent}), {H0: 9}, NOW, 60, 0.5)
    assert [c["code"] for c in verdict.causes] == ["not_yet_pushed"]
    nothing_sent = Hour(5, None, "waiting", None, NOW - 3600)
    verdict = judge(seats(**{f"h{H0}": nothing_sent}), {H0: 9}, NOW, 60, 0.5)
    assert [c["code"] for c in verdict.causes] == ["not_yet_pushed"]


def test_a_last_hour_whose_value_was_sent_is_missing_in_stripe_whatever_the_writer_recorded() -> None:
    hour = Hour(5, 3, "synced", None, NOW - 3600, steps=(Step(NOW - 7200, 2), Step(NOW - 3600, 5)))
    verdict = judge(seats(**{f"h{H0}": hour}), {H0: 2}, NOW, 60, 0.5)
    assert [c["code"] for c in verdict.causes] == ["stripe_missing"]
