from __future__ import annotations

from stripemeter.streams.counting import FoldResult, counter_key, fold, split_counter_key

from stripemeter.events import UsageEvent

HOUR = 3_600_000


def ev(customer: str, micros: int, ts_ms: int) -> UsageEvent:
    return UsageEvent("t", "m", customer, micros, ts_ms, f"k{customer}{ts_ms}{micros}", False, None, None)


def test_fold_sums_per_hour_bucket_and_bumps_seq_once_per_message() -> None:
    table: dict[str, list[int]] = {}
    fold([ev("a", 1, 10), ev("a", 2, HOUR - 1), ev("a", 4, HOUR), ev("b", 8, 5)], 0, table, FoldResult())
    assert table[counter_key("t", "m", "a", 0)] == [3, 1, 0]
    assert table[counter_key("t", "m", "a", HOUR)] == [4, 1, 0]
    assert table[counter_key("t", "m", "b", 0)] == [8, 1, 0]
    fold([ev("a", 5, 20)], 1, table, FoldResult())
    assert table[counter_key("t", "m", "a", 0)] == [8, 2, 1]


def test_redelivered_message_is_not_counted_again_but_republished() -> None:
    table: dict[str, list[int]] = {}
    fold([ev("a", 1, 10)], 7, table, FoldResult())
    again = FoldResult()
    fold([ev("a", 1, 10)], 7, table, again)  # the same keyed message after a crash
    fold([ev("a", 1, 10)], 3, table, again)  # an older one
    assert table[counter_key("t", "m", "a", 0)] == [1, 1, 7]
    assert again.touched == {counter_key("t", "m", "a", 0)}


def test_counter_key_round_trips_customer_refs_with_separators() -> None:
    key = counter_key("t", "m:x", "cust|with|bars and spaces", 7 * HOUR)
    assert split_counter_key(key) == ("t", "m:x", "cust|with|bars and spaces", 7 * HOUR)
