"""The meter's order and stall checks (streams/meter_progress.py)."""

from __future__ import annotations

from stripemeter.streams.meter_progress import MeterProgress


def test_a_partition_starts_at_its_committed_offset_and_goes_on_without_holes() -> None:
    progress = MeterProgress()
    assert progress.skipped(1, 100, committed=100) is None
    assert progress.skipped(1, 101, committed=100) is None
    assert progress.skipped(1, 103, committed=100) == 102  # 102 was never read
    progress.assigned()
    assert progress.skipped(1, 101, committed=100) == 100  # the first message after an assignment
    progress.assigned()
    assert progress.skipped(1, 95, committed=100) is None  # read again after a seek back: in order
    # none committed: the partition starts at its earliest offset; past 0 the meter asks the broker
    # for it (Meter.skipped), and a first message past it is a skip
    assert progress.skipped(2, 7, committed=None) == 0
    assert progress.skipped(2, 8, committed=None) is None
    assert progress.skipped(3, 0, committed=None) is None


def test_only_waiting_messages_with_nothing_read_for_the_stall_time_are_a_stall() -> None:
    progress = MeterProgress(stall_seconds=60)
    assert not progress.stalled({1: 0}, quiet=True, now=1000)  # idle: nothing waits
    assert not progress.stalled({1: 5}, quiet=True, now=1030)
    assert not progress.stalled({1: 5}, quiet=False, now=1100)  # a rebalance: the clock starts again
    assert not progress.stalled({1: 5}, quiet=True, now=1150)
    assert progress.stalled({1: 5}, quiet=True, now=1161)
    progress.skipped(1, 10, committed=10, now=1162)  # a message read: no stall
    assert not progress.stalled({1: 5}, quiet=True, now=1170)


def test_behind_is_measured_from_the_next_expected_offset_or_the_committed_one() -> None:
    progress = MeterProgress()
    progress.skipped(0, 41, committed=40)  # (a skip, but the position is what counts here)
    assert progress.behind({0: 50, 1: 9, 2: 3}, {0: 40, 1: 5, 2: None}) == {0: 8, 1: 4}


def test_a_partition_never_read_is_behind_from_where_its_consumer_starts() -> None:
    progress = MeterProgress()
    # partition 1 was never committed: it starts at its earliest offset (3), and 9 - 3 messages wait
    assert progress.behind({0: 50, 1: 9}, {0: 50, 1: 3}) == {0: 0, 1: 6}


def test_a_partition_never_read_stalls_while_the_others_are_read() -> None:
    progress = MeterProgress(stall_seconds=30)
    assert not progress.stalled({0: 0, 1: 0}, quiet=True, now=1000)
    for second in range(1001, 1040):  # partition 0 is read every second; partition 1's messages wait
        progress.skipped(0, second, committed=None, now=second)
        stalled = progress.stalled({0: 1, 1: 5}, quiet=True, now=second)
        assert stalled == (second > 1030), second
