from __future__ import annotations

import pytest

from stripemeter.core.counting import (
    MAX_SUM,
    CannotReaggregate,
    CounterValue,
    Partial,
    apply,
    bucket_key,
    counter_key,
    reaggregate,
    split_counter_key,
    stream_key,
)
from stripemeter.domain.policy import Aggregation

HOUR = 3_600_000


def partial(aggregation: Aggregation, *events: tuple[int, int]) -> Partial:
    p = Partial(aggregation)
    for micros, ts in events:
        p.add(micros, ts)
    return p


def test_sum_count_last() -> None:
    # value, seq, applied offset, newest ts, then every aggregation's total: sum, events, newest value,
    # adjustments, and the aggregation the value is in (0 sum, 1 count, 2 last)
    assert apply(None, partial("sum", (1, 10), (2, 5)), 0) == [3, 1, 0, 10, 3, 2, 1, 0, 0]
    assert apply(None, partial("count", (1, 10), (2, 5)), 0) == [2_000_000, 1, 0, 10, 3, 2, 1, 0, 1]
    assert apply(None, partial("last", (1, 10), (2, 5)), 0) == [1, 1, 0, 10, 3, 2, 1, 0, 2]
    # a later message with an older event does not replace the newest value of a last counter
    last: CounterValue = [1, 1, 0, 10, 1, 1, 1, 0, 2]
    assert apply(last, partial("last", (7, 9)), 1) == [1, 2, 1, 10, 8, 2, 1, 0, 2]
    assert apply(last, partial("last", (7, 11)), 1) == [7, 2, 1, 11, 8, 2, 7, 0, 2]


def test_message_at_or_below_applied_offset_changes_nothing() -> None:
    value = apply(None, partial("sum", (5, 1)), 7)
    assert value is not None and value[:3] == [5, 1, 7]
    assert apply(value, partial("sum", (5, 1)), 7) is None
    assert apply(value, partial("sum", (5, 1)), 3) is None
    assert apply(value, partial("sum", (5, 1)), 8) == [10, 2, 8, 1, 10, 2, 5, 0, 0]


def test_a_counter_keeps_the_aggregation_it_was_created_with_until_reaggregated() -> None:
    counted = apply(None, partial("sum", (3_000_000, 1), (4_000_000, 2)), 0)
    assert counted is not None
    # the metric became a count metric: events of a counter created before still add as a sum ...
    later = apply(counted, partial("count", (5_000_000, 3)), 1)
    assert later is not None and later[0] == 12_000_000
    # ... until it is re-aggregated, exactly, from the totals it kept
    as_count = reaggregate(later, "count", 2)
    assert as_count is not None and as_count[0] == 3_000_000 and as_count[1] == 3
    assert as_count[2] == 2 and as_count[8] == 1
    assert reaggregate(as_count, "count", 3) is None  # a second time changes nothing
    as_last = reaggregate(as_count, "last", 4)
    assert as_last is not None and as_last[0] == 5_000_000
    after = apply(as_count, partial("count", (9, 4)), 5)
    assert after is not None and after[0] == 4_000_000


def test_adjustments_stay_on_top_of_a_reaggregated_sum_or_count() -> None:
    p = partial("sum", (2_000_000, 1))
    p.adjust(-500_000)
    value = apply(None, p, 0)
    assert value is not None and value[0] == 1_500_000
    as_count = reaggregate(value, "count", 1)
    assert as_count is not None and as_count[0] == 500_000  # one event, less the adjustment


def test_replayed_events_fold_like_events() -> None:
    direct = apply(None, partial("sum", (1, 10), (2, 30), (3, 20)), 0)
    replayed = Partial("sum")
    replayed.add_events(6, 3, 30, 2)
    assert apply(None, replayed, 0) == direct


def test_older_counters_keep_aggregating_but_cannot_be_reaggregated() -> None:
    legacy: CounterValue = [5_000_000, 3, 7, -1]  # written before counters kept every aggregation's total
    assert apply(legacy, partial("sum", (1_000_000, 1)), 8) == [6_000_000, 4, 8, -1]
    assert apply(legacy, partial("count", (9, 1)), 8) == [6_000_000, 4, 8, -1]
    legacy_last: CounterValue = [1, 1, 0, 10]
    assert apply(legacy_last, partial("last", (7, 11)), 1) == [7, 2, 1, 11]
    with pytest.raises(CannotReaggregate):
        reaggregate(legacy, "count", 9)


def test_a_sum_beyond_64_bits_is_unknown_and_cannot_become_the_value() -> None:
    big = partial("count", (MAX_SUM, 1), (MAX_SUM, 2))
    value = apply(None, big, 0)
    assert value is not None and value[0] == 2_000_000 and value[4] is None
    with pytest.raises(CannotReaggregate):
        reaggregate(value, "sum", 1)


def test_counter_key_round_trips_customer_refs_with_separators() -> None:
    key = counter_key("t", "m:x", "cust|with|bars and spaces", 7 * HOUR)
    assert split_counter_key(key) == ("t", "m:x", "cust|with|bars and spaces", 7 * HOUR)


def test_bucket_key_is_counter_key_in_bytes() -> None:
    for customer in ("acme", "cust|with|bars", "ünïcode ✓"):
        stream = stream_key("t", "m", customer).encode()
        assert bucket_key(stream, 7 * HOUR) == counter_key("t", "m", customer, 7 * HOUR).encode()
