"""The dedupe sweep: bounded steps that go on where the last one stopped and keep up with writes."""

from __future__ import annotations

import asyncio

from stripemeter.core.dedupe_sweep import DedupeSweep
from stripemeter.domain.policy import MetricPolicy
from tests.unit.core.test_metering import HOUR, T0, DictKV, item, make

SortedKV = DictKV  # MemoryState iterates in key order over a snapshot, as RocksDB does


def test_steps_are_bounded_resume_where_they_stopped_and_expire_only_what_fell_behind() -> None:
    m, _ = make(lateness_ms=48 * HOUR)
    m.dedupe = dedupe = SortedKV()
    m.process(0, 0, [item(f"old{i:03d}", 1, T0, i) for i in range(100)])
    m.process(0, 1, [item(f"new{i:03d}", 1, T0 + 60 * HOUR, 100 + i) for i in range(100)])  # watermark moves
    m.take_written(0)  # as if earlier steps had seen these writes
    sweep = DedupeSweep(m, dedupe, margin_ms=HOUR, min_step=30, chunk=7, clock_ms=lambda: T0 + 60 * HOUR)

    steps = [asyncio.run(sweep.step(0, lambda: False)) for _ in range(8)]

    # keys in order: new000-new099 (kept), then old000-old099 (behind the window); each step resumes at
    # the last key it checked (checked again if it is still there); the 7th ends the pass; nothing left
    # can expire before the clock moves on, so the 8th sleeps
    assert steps == [(30, 0), (30, 0), (30, 0), (30, 17), (30, 30), (30, 30), (23, 23), (0, 0)]
    assert sorted(dedupe.data[0]) == sorted(f"t\x1fnew{i:03d}".encode() for i in range(100))


def test_a_step_checks_twice_the_entries_written_since_the_last_one() -> None:
    m, _ = make()
    m.dedupe = dedupe = SortedKV()
    m.process(0, 0, [item(f"k{i:04d}", 1, T0, i) for i in range(500)])
    sweep = DedupeSweep(m, dedupe, margin_ms=HOUR, min_step=10, chunk=50, clock_ms=lambda: T0 + 100 * HOUR)
    assert asyncio.run(sweep.step(0, lambda: False)) == (500, 0)  # budget 2 x 500, but only 500 exist
    assert asyncio.run(sweep.step(0, lambda: False)) == (10, 0)  # nothing new written: the minimum


def test_passing_over_recent_entries_changes_no_decision() -> None:
    now = T0 + 100 * HOUR
    decided = []
    for now_ms in (None, now):
        m, _ = make(lateness_ms=48 * HOUR)
        m.dedupe = dedupe = SortedKV()
        m.process(0, 0, [item(f"e{h:03d}", 1, T0 + h * HOUR, h) for h in range(0, 101, 3)])
        expired, _ = m.expire_dedupe(0, list(dedupe.items(0)), margin_ms=HOUR, now_ms=now_ms)
        decided.append((expired, sorted(dedupe.data[0])))
    assert decided[0] == decided[1]
    assert decided[0][0] == 17  # before T0 + 50 h: behind the watermark (99 h) - 48 h - 1 h


def test_after_a_complete_pass_the_sweep_sleeps_until_its_first_entry_could_expire() -> None:
    clock = [T0]
    m, _ = make(lateness_ms=48 * HOUR, short=MetricPolicy(lateness_ms=10 * HOUR))
    m.dedupe = dedupe = SortedKV()
    sweep = DedupeSweep(m, dedupe, margin_ms=HOUR, min_step=10, chunk=4, clock_ms=lambda: clock[0])
    m.process(0, 0, [item(f"k{i}", 1, T0, i) for i in range(6)])

    assert asyncio.run(sweep.step(0, lambda: False)) == (6, 0)  # the first pass: nothing known yet
    assert asyncio.run(sweep.step(0, lambda: False)) == (0, 0)  # due T0 + 48 h: nothing can expire for days
    # an entry written since, of a metric with a shorter lateness, brings the wake-up forward: T0 - 5 h
    # + 10 h is due when the clock's horizon (now + 2 h - margin) passes it
    m.process(0, 1, [item("short", 1, T0 - 5 * HOUR, 9, metric="short")])
    clock[0] = T0 + 4 * HOUR
    assert asyncio.run(sweep.step(0, lambda: False)) == (0, 0)
    clock[0] = T0 + 4 * HOUR + 1
    assert asyncio.run(sweep.step(0, lambda: False)) == (7, 0)


def test_a_change_of_policies_starts_a_new_pass() -> None:
    m, _ = make(lateness_ms=48 * HOUR)
    m.dedupe = dedupe = SortedKV()
    sweep = DedupeSweep(m, dedupe, margin_ms=HOUR, min_step=10, clock_ms=lambda: T0)
    m.process(0, 0, [item(f"k{i}", 1, T0, i) for i in range(3)])
    assert asyncio.run(sweep.step(0, lambda: False)) == (3, 0)
    m.policies.replace({})  # the same policies again: still asleep
    assert asyncio.run(sweep.step(0, lambda: False)) == (0, 0)
    m.policies.replace({("t", "m"): MetricPolicy(lateness_ms=HOUR)})
    assert asyncio.run(sweep.step(0, lambda: False)) == (3, 0)


def test_a_rebalance_forgets_what_the_sweep_knew_even_mid_step() -> None:
    m, _ = make(lateness_ms=48 * HOUR)
    m.dedupe = dedupe = SortedKV()
    sweep = DedupeSweep(m, dedupe, margin_ms=HOUR, min_step=10, chunk=2, clock_ms=lambda: T0 + HOUR)
    m.process(0, 0, [item(f"k{i}", 1, T0, i) for i in range(6)])
    forgotten = iter([False, True])  # forget() lands while the step yields between chunks

    def rebalance_midway() -> bool:
        if next(forgotten, False):
            sweep.forget()
        return False

    assert asyncio.run(sweep.step(0, rebalance_midway)) == (6, 0)
    assert not sweep.idle(0, T0 + HOUR)  # the pass spanned a rebalance: it taught nothing
    assert asyncio.run(sweep.step(0, lambda: False)) == (6, 0)
    assert sweep.idle(0, T0 + HOUR)


def test_a_steady_stream_keeps_the_window_and_no_more_than_about_twice_it() -> None:
    """Ten days at 10 events an hour, 24 h lateness, a sweep step every hour on an injected clock:
    every entry a duplicate could still need stays, and the state stays under twice the window."""
    per_hour, lateness_h, margin_h = 10, 24, 1
    spacing = HOUR // per_hour
    clock = [T0]
    m, _ = make(lateness_ms=lateness_h * HOUR)
    m.dedupe = dedupe = SortedKV()
    sweep = DedupeSweep(
        m, dedupe, margin_ms=margin_h * HOUR, min_step=50, chunk=20, clock_ms=lambda: clock[0]
    )
    held = []
    for hour in range(240):
        clock[0] = T0 + hour * HOUR
        first = hour * per_hour
        m.process(
            0,
            hour,
            [item(f"e{first + i:05d}", 1, clock[0] + i * spacing, first + i) for i in range(per_hour)],
        )
        asyncio.run(sweep.step(0, lambda: False))
        keys = set(dedupe.data[0])
        watermark = clock[0] + (per_hour - 1) * spacing  # the stream's newest event
        oldest_needed = watermark - (lateness_h + margin_h) * HOUR
        needed = [n for n in range(first + per_hour) if T0 + n * spacing >= oldest_needed]
        missing = [n for n in needed if f"t\x1fe{n:05d}".encode() not in keys]
        assert not missing, f"entries inside the window gone at {hour} h: {missing[:5]}"
        held.append(len(keys))
    window = (lateness_h + margin_h) * per_hour
    assert window <= max(held[48:]) <= 2 * window
