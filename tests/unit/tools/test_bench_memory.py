"""The memory benchmark's verdict: RSS from the settle minute to the end, against the settle minute."""

from __future__ import annotations

from stripemeter.tools.bench_memory import Samples, flatness


def samples_of(curve: list[float], every: float = 30.0) -> Samples:
    samples = Samples()
    for i, mib in enumerate(curve):
        samples.add(i * every, {"metering": mib, "intake": 0.0})
    return samples


def test_the_reference_is_the_last_sample_of_the_settle_minute() -> None:
    samples = samples_of([100, 110, 120, 130, 140])  # at 0, 30, 60, 90, 120 s
    assert samples.at_minute("metering", 1) == 110
    assert samples.at_minute("metering", 2) == 130
    assert samples.peak("metering") == 140


def test_deviation_after_the_settle_minute_is_reported_both_ways() -> None:
    samples = samples_of([100, 200, 180, 230, 190])
    reference, low, high = flatness(samples, "metering", 1) or (0, 0, 0)
    assert reference == 200
    assert round(low, 3) == -0.1  # 180 at 60 s: the settle minute's end is the window's start
    assert round(high, 3) == 0.15


def test_a_run_ending_before_the_settle_minute_has_no_verdict() -> None:
    assert flatness(samples_of([100, 110]), "metering", 10) is None


def test_a_process_never_seen_is_not_reported() -> None:
    assert "intake" not in samples_of([100]).by_process  # zero: not running (as a child) in this layout
