"""Judging reconciliation items: per-hour comparison, in-flight hours, epsilon, causes, corrections."""

from __future__ import annotations

from stripemeter.core.reconcile_compare import (
    LAG_CAP_S,
    Hour,
    Item,
    Lag,
    Step,
    combine,
    judge,
    judge_totals,
    settle_time,
    shared_pairs,
)

NOW = 1_800_000_000.0
H0, H1, H2 = 1_799_982_000, 1_799_985_600, 1_799_989_200  # three hour starts before NOW


def synced(units: int, changed_at: float = NOW - 3600) -> Hour:
    return Hour(units, units, "synced", None, changed_at)


def item(**hours: Hour) -> Item:
    it = Item("t", "requests", "c1", "sum")
    it.hours = {int(k[1:]): v for k, v in hours.items()}
    return it


def test_equal_hours_are_parity_and_totals_alone_can_prove_it() -> None:
    it = item(**{f"h{H0}": synced(500), f"h{H1}": synced(500)})
    verdict = judge(it, {H0: 500, H1: 500}, NOW, 60, 0.005)
    assert (verdict.status, verdict.diff_abs, verdict.causes, verdict.corrections) == ("parity", 0, [], [])
    assert judge_totals(it, 1000) is not None
    assert judge_totals(it, 1001) is None


def test_a_small_foreign_push_is_within_epsilon_and_corrected_in_its_hour() -> None:
    it = item(**{f"h{H0}": synced(500), f"h{H1}": synced(500)})
    verdict = judge(it, {H0: 500, H1: 503}, NOW, 60, 0.005)
    assert verdict.status == "within_epsilon"
    assert verdict.hours == [{"bucket": H1, "local": 500, "stripe": 503, "diff": -3}]
    assert verdict.corrections == [(H1, -3)]
    assert [c["code"] for c in verdict.causes] == ["stripe_higher"]


def test_differences_in_two_hours_do_not_cancel_out() -> None:
    it = item(**{f"h{H0}": synced(100), f"h{H1}": synced(100)})
    verdict = judge(it, {H0: 150, H1: 50}, NOW, 60, 0.005)
    assert verdict.local == verdict.stripe == 200
    assert verdict.diff_abs == 100 and verdict.status == "drift"
    assert {c["code"] for c in verdict.causes} == {"stripe_higher", "stripe_missing"}


def test_a_recent_change_is_in_flight_not_drift() -> None:
    it = item(**{f"h{H0}": synced(500), f"h{H2}": Hour(80, 0, "waiting", None, NOW - 5)})
    verdict = judge(it, {H0: 500}, NOW, 60, 0.005)
    assert (verdict.status, verdict.in_flight, verdict.diff_abs) == ("parity", 80, 0)


def test_an_old_unpushed_change_is_drift_named_not_yet_pushed_and_left_to_the_writer() -> None:
    it = item(**{f"h{H0}": synced(500), f"h{H2}": Hour(80, 0, "waiting", None, NOW - 3600)})
    verdict = judge(it, {H0: 500}, NOW, 60, 0.005)
    assert verdict.status == "drift"
    assert [c["code"] for c in verdict.causes] == ["not_yet_pushed"]
    assert verdict.corrections == []  # the writer still owes it: correcting too would count it twice


def test_parked_and_unmapped_items_name_their_cause() -> None:
    it = item(**{f"h{H0}": Hour(10, 0, "parked", "No such customer: 'cus_x'", NOW - 3600)})
    verdict = judge(it, {}, NOW, 60, 0.005)
    assert verdict.causes[0] == {"code": "push_parked", "message": "No such customer: 'cus_x'", "hours": 1}
    it = item(**{f"h{H0}": Hour(10, None, None, None, NOW - 3600)})
    it.missing = ["customer mapping"]
    verdict = judge(it, {}, NOW, 60, 0.005)
    assert verdict.causes[0]["code"] == "missing_mapping" and verdict.corrections == []


def test_late_events_are_reported_with_count_and_total() -> None:
    it = item(**{f"h{H0}": synced(10)})
    it.late_count, it.late_micros = 3, 4_500_000
    verdict = judge(it, {H0: 10}, NOW, 60, 0.005)
    assert verdict.status == "parity"
    assert verdict.causes[0]["code"] == "late_events"
    assert (verdict.causes[0]["count"], verdict.causes[0]["total"]) == (3, 4.5)


def test_a_stripe_only_hour_is_corrected_to_zero() -> None:
    it = item(**{f"h{H0}": synced(1000)})
    verdict = judge(it, {H0: 1000, H1: 2}, NOW, 60, 0.005)
    assert verdict.status == "within_epsilon" and verdict.corrections == [(H1, -2)]


def test_last_meters_compare_the_newest_hour_and_are_never_corrected_by_an_event() -> None:
    it = item(**{f"h{H0}": synced(7), f"h{H1}": synced(9)})
    it.aggregation = "last"
    verdict = judge(it, {H0: 7, H1: 8}, NOW, 60, 0.5)
    assert (verdict.local, verdict.stripe, verdict.status, verdict.corrections) == (
        9,
        8,
        "within_epsilon",
        [],
    )


def test_an_hour_the_writer_may_still_send_is_never_corrected_local_zero_included() -> None:
    """A correction brought a counter to 0 and the writer still owes Stripe the -5: correcting it here
    too would take the 5 away twice."""
    for status in ("waiting", "pending", "parked", "unmapped"):
        it = item(**{f"h{H0}": synced(1000), f"h{H1}": Hour(0, 5, status, None, NOW - 3600)})
        verdict = judge(it, {H0: 1000, H1: 5}, NOW, 60, 0.005)
        assert verdict.status == "within_epsilon" and verdict.corrections == [], status
    # delivered and nothing in flight: the writer is done with it, so the difference is Stripe's
    it = item(**{f"h{H0}": synced(1000), f"h{H1}": synced(0)})
    assert judge(it, {H0: 1000, H1: 5}, NOW, 60, 0.005).corrections == [(H1, -5)]


def test_stripe_is_compared_with_whole_unit_targets_of_the_exact_totals() -> None:
    """0.9 units in each of three hours: Stripe should hold 0, 1, 1 (targets carry the fraction); the
    exact total is kept for the report."""
    it = item(
        **{
            f"h{H0}": Hour(0, 0, "synced", None, NOW - 3600, 900_000),
            f"h{H1}": Hour(1, 1, "synced", None, NOW - 3600, 900_000),
            f"h{H2}": Hour(1, 1, "synced", None, NOW - 3600, 900_000),
        }
    )
    verdict = judge(it, {H1: 1, H2: 1}, NOW, 60, 0.005)
    assert (verdict.status, verdict.local, it.exact_total_micros()) == ("parity", 2, 2_700_000)


# --- last: what Stripe's last formula bills -------------------------------------------------------------


def seats(**hours: Hour) -> Item:
    it = item(**hours)
    it.aggregation = "last"
    return it


def test_a_last_drop_to_zero_stripe_never_got_is_drift_not_parity() -> None:
    """Seats 10 in H0, 0 in H1: Stripe holds H0's 10 and no event in H1, so its last formula bills 10
    for the period while 0 was counted. Reading the absent hour as 0 called this parity."""
    it = seats(**{f"h{H0}": synced(10), f"h{H1}": synced(0)})
    verdict = judge(it, {H0: 10}, NOW, 60, 0.005)
    assert (verdict.local, verdict.stripe, verdict.diff_abs, verdict.status) == (0, 10, 10, "drift")
    assert verdict.hours == [{"bucket": H1, "local": 0, "stripe": None, "diff": None}]
    assert [c["code"] for c in verdict.causes] == ["not_yet_pushed"]
    assert verdict.corrections == []  # the writer sends the hour's value; no extra event


def test_last_compares_what_each_side_bills_not_every_hour() -> None:
    """An older hour Stripe lacks changes nothing billed: the newest event decides."""
    it = seats(**{f"h{H0}": synced(4), f"h{H1}": synced(9)})
    verdict = judge(it, {H1: 9}, NOW, 60, 0.005)
    assert (verdict.status, verdict.diff_abs, verdict.hours) == ("parity", 0, [])


def test_last_difference_is_in_flight_while_the_deciding_hour_is() -> None:
    it = seats(**{f"h{H0}": synced(10), f"h{H1}": Hour(0, 10, "waiting", None, NOW - 5)})
    verdict = judge(it, {H0: 10}, NOW, 60, 0.005)
    assert (verdict.status, verdict.in_flight, verdict.diff_abs) == ("parity", -10, 0)


def test_a_newer_stripe_only_hour_of_a_last_meter_is_what_stripe_bills() -> None:
    it = seats(**{f"h{H0}": synced(10)})
    verdict = judge(it, {H0: 10, H2: 3}, NOW, 60, 0.005)
    assert (verdict.local, verdict.stripe, verdict.diff_abs, verdict.status) == (10, 3, 7, "drift")
    assert verdict.hours == [{"bucket": H2, "local": None, "stripe": 3, "diff": None}]
    assert [c["code"] for c in verdict.causes] == ["stripe_higher"]


# --- Stripe's summaries lag: never chase them ----------------------------------------------------------


def delivered(local: int, *steps: Step) -> Hour:
    """A synced hour of ``local`` units whose pushes and corrections are ``steps``."""
    pushed = sum(s.value for s in steps if s.seen is None)
    return Hour(local, pushed, "synced", None, max(s.at for s in steps), steps=steps)


def test_a_summary_showing_the_first_pushes_only_is_lag_in_flight_not_a_correction() -> None:
    """The hour's push of 7 was delivered 90 s ago, past the 60 s settle time, and Stripe's summary
    does not show it yet: correcting it would make Stripe hold it twice once the summary catches up."""
    it = item(
        **{f"h{H0}": synced(10_000), f"h{H1}": delivered(507, Step(NOW - 7200, 500), Step(NOW - 90, 7))}
    )
    verdict = judge(it, {H0: 10_000, H1: 500}, NOW, 60, 0.005)
    assert (verdict.status, verdict.in_flight, verdict.corrections) == ("parity", 7, [])
    assert verdict.lags == [Lag(H1, NOW - 90, 90)]


def test_a_push_unseen_beyond_the_cap_is_missing_and_said_so() -> None:
    late = NOW - LAG_CAP_S - 60
    it = item(**{f"h{H0}": synced(10_000), f"h{H1}": delivered(507, Step(NOW - 7200, 500), Step(late, 7))})
    verdict = judge(it, {H0: 10_000, H1: 500}, NOW, 60, 0.005)
    assert verdict.status == "within_epsilon" and verdict.corrections == [(H1, 7)]
    assert verdict.hours == [
        {"bucket": H1, "local": 507, "stripe": 500, "diff": 7, "unseenSeconds": LAG_CAP_S + 60}
    ]
    assert verdict.lags == []  # not an observation of lag: a loss, or lag beyond the cap
    [missing] = verdict.causes
    assert missing["code"] == "stripe_missing" and "still not in Stripe's summaries" in missing["message"]


def test_a_value_no_step_sequence_explains_is_drift_once_settled() -> None:
    it = item(
        **{f"h{H0}": synced(10_000), f"h{H1}": delivered(507, Step(NOW - 7200, 500), Step(NOW - 90, 7))}
    )
    verdict = judge(it, {H0: 10_000, H1: 509}, NOW, 60, 0.005)  # a foreign +2
    assert verdict.corrections == [(H1, -2)] and verdict.lags == []
    # ... but not before the (adapted) settle time since the hour's last step
    assert judge(it, {H0: 10_000, H1: 509}, NOW, 120, 0.005).corrections == []


def test_a_correction_stripe_does_not_show_yet_is_in_flight_whatever_else_stripe_holds() -> None:
    """A foreign +2 was corrected by -2 (decided when Stripe showed 502); the summary still shows 502:
    the correction is lagging, not missing, and is not sent again."""
    hour = delivered(500, Step(NOW - 7200, 500), Step(NOW - 600, -2, seen=502))
    it = item(**{f"h{H0}": synced(10_000), f"h{H1}": hour})
    verdict = judge(it, {H0: 10_000, H1: 502}, NOW, 60, 0.005)
    assert (verdict.status, verdict.in_flight, verdict.corrections) == ("parity", -2, [])
    assert verdict.lags == [Lag(H1, NOW - 600, 600)]
    # once shown, the correction is confirmed as lag; the push before it is not (the correction
    # took the hour from what Stripe showed, whatever that held)
    caught_up = judge(it, {H0: 10_000, H1: 500}, NOW, 60, 0.005)
    assert caught_up.status == "parity" and caught_up.shown == [(H1, (NOW - 600,))]


def test_a_last_hour_still_showing_its_older_value_is_lag() -> None:
    hour = Hour(12, 12, "synced", None, NOW - 300, steps=(Step(NOW - 3000, 10), Step(NOW - 300, 12)))
    it = seats(**{f"h{H0}": hour})
    verdict = judge(it, {H0: 10}, NOW, 60, 0.005)
    assert (verdict.status, verdict.in_flight, verdict.lags) == ("parity", 2, [Lag(H0, NOW - 300, 300)])


def test_the_settle_time_follows_the_longest_lag_seen_lately_up_to_the_cap() -> None:
    assert settle_time(300, None) == 300
    assert settle_time(300, 100) == 300
    assert settle_time(10, 90) == 180
    assert settle_time(10, 5000) == LAG_CAP_S
    assert settle_time(7200, 5000) == 7200  # a configured settle time above the cap is kept


# --- a Stripe pair fed by more than one counter ----------------------------------------------------------


def test_pairs_mapped_from_more_than_one_counter_are_found_and_named() -> None:
    rows = [
        ("api", "cus_1", "t", "requests", "acme", "sum"),
        ("api", "cus_1", "t", "requests", "acme-eu", "sum"),  # two customerRefs on one Stripe customer
        ("api", "cus_2", "t", "requests", "globex", "sum"),
        ("seats", "cus_3", "t", "seats", "initech", "last"),
        ("seats", "cus_3", "t2", "seats", "initech", "last"),  # two tenants on one pair
    ]
    pairs = shared_pairs(rows)
    assert set(pairs) == {("api", "cus_1"), ("seats", "cus_3")}
    assert pairs[("api", "cus_1")].members == (("t", "requests", "acme"), ("t", "requests", "acme-eu"))
    assert pairs[("api", "cus_1")].summed and not pairs[("seats", "cus_3")].summed


def test_a_shared_pair_is_compared_as_the_sum_of_its_counters_and_never_corrected() -> None:
    """1,000 units of acme and 4 of acme-eu reach the one Stripe customer as 1,004."""
    pair = shared_pairs(
        [
            ("api", "cus_1", "t", "requests", "acme", "sum"),
            ("api", "cus_1", "t", "requests", "acme-eu", "sum"),
        ]
    )[("api", "cus_1")]
    it = item(**{f"h{H0}": combine([synced(1000), synced(4)])})
    it.shared = pair
    verdict = judge(it, {H0: 1004}, NOW, 60, 0.005)
    assert (verdict.status, verdict.local, verdict.corrections) == ("parity", 1004, [])
    assert verdict.causes[0]["code"] == "shared_stripe_pair" and "'api'" in verdict.causes[0]["message"]
    drifting = judge(it, {H0: 1006}, NOW, 60, 0.005)
    assert drifting.status == "within_epsilon" and drifting.corrections == []
    assert [c["code"] for c in drifting.causes] == ["stripe_higher", "shared_stripe_pair"]


def test_epsilon_is_inclusive_and_divides_by_the_larger_side() -> None:
    """The contract's epsilon: drift / max(local, stripe) <= epsilon is within epsilon. Each case sits
    exactly on the boundary, so `<` for `<=`, or dividing by one side only, changes its verdict."""
    it = item(**{f"h{H0}": synced(1000)})
    on_the_line = 5 / 1005  # Stripe holds more: the larger side is Stripe's
    assert judge(it, {H0: 1005}, NOW, 60, on_the_line).status == "within_epsilon"
    assert judge(it, {H0: 1005}, NOW, 60, on_the_line * 0.999).status == "drift"
    assert judge(it, {H0: 1005}, NOW, 60, on_the_line).diff_pct == on_the_line

    more_local = item(**{f"h{H0}": synced(1005)})  # the local side is the larger: the same fraction
    assert judge(more_local, {H0: 1000}, NOW, 60, on_the_line).status == "within_epsilon"
    # 5 / 1005 = 0.004975 is within 0.00499; 5 / 1000 (the smaller side, either one) = 0.005 is not
    assert judge(it, {H0: 1005}, NOW, 60, 0.00499).status == "within_epsilon"
    assert judge(more_local, {H0: 1000}, NOW, 60, 0.00499).status == "within_epsilon"


def test_zero_difference_is_parity_whatever_epsilon_and_a_side_at_zero_is_all_drift() -> None:
    it = item(**{f"h{H0}": synced(1000)})
    assert judge(it, {H0: 1000}, NOW, 60, 0.0).status == "parity"
    nothing_local = item(**{f"h{H0}": synced(0)})
    verdict = judge(nothing_local, {H0: 7}, NOW, 60, 0.5)
    assert (verdict.status, verdict.diff_pct) == ("drift", 1.0)
