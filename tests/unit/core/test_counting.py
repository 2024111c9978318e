from __future__ import annotations

from stripemeter.core.counting import Partial, apply, bucket_key, counter_key, split_counter_key, stream_key
from stripemeter.domain.policy import Aggregation

HOUR = 3_600_000


def partial(aggregation: Aggregation, *events: tuple[int, int]) -> Partial:
    p = Partial(aggregation)
    for micros, ts in events:
        p.add(micros, ts)
    return p


def test_sum_count_last() -> None:
    assert apply(None, partial("sum", (1, 10), (2, 5)), 0) == [3, 1, 0, -1]
    assert apply(None, partial("count", (1, 10), (2, 5)), 0) == [2_000_000, 1, 0, -1]
    assert apply(None, partial("last", (1, 10), (2, 5)), 0) == [1, 1, 0, 10]
    # a later message with an older event does not replace the newest value of a last counter
    assert apply([1, 1, 0, 10], partial("last", (7, 9)), 1) == [1, 2, 1, 10]
    assert apply([1, 1, 0, 10], partial("last", (7, 11)), 1) == [7, 2, 1, 11]


def test_message_at_or_below_applied_offset_changes_nothing() -> None:
    value = apply(None, partial("sum", (5, 1)), 7)
    assert value == [5, 1, 7, -1]
    assert apply(value, partial("sum", (5, 1)), 7) is None
    assert apply(value, partial("sum", (5, 1)), 3) is None
    assert apply(value, partial("sum", (5, 1)), 8) == [10, 2, 8, -1]


def test_counter_key_round_trips_customer_refs_with_separators() -> None:
    key = counter_key("t", "m:x", "cust|with|bars and spaces", 7 * HOUR)
    assert split_counter_key(key) == ("t", "m:x", "cust|with|bars and spaces", 7 * HOUR)


def test_bucket_key_is_counter_key_in_bytes() -> None:
    for customer in ("acme", "cust|with|bars", "ünïcode ✓"):
        stream = stream_key("t", "m", customer).encode()
        assert bucket_key(stream, 7 * HOUR) == counter_key("t", "m", customer, 7 * HOUR).encode()
