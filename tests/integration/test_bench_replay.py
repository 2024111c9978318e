"""`stripemeter bench replay` at a small size: a real worker applies the corrections, the counters and
then Stripe (the emulator) show every too-late event."""

from __future__ import annotations

from pathlib import Path

from stripemeter.domain.config import Settings
from stripemeter.tools.bench_replay import replay_window


async def test_the_replay_benchmark_applies_through_a_worker_until_stripe_holds_every_event(
    stack: Settings, tmp_path: Path
) -> None:
    said: list[str] = []
    settings = stack.with_overrides(state_dir=tmp_path / "state")
    results = await replay_window(settings, 300, 200, 40, 2, 1000, said.append)
    assert results["counters"] == 120  # 200 too-late events, 40 customers x 24 hours, one per pair
    assert 0 < results["apply"] <= results["stripe"]
    assert any("Stripe holds every too-late event" in line for line in said)
