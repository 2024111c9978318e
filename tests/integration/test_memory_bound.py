"""The metering process's memory is bounded by bytes, whatever the batch shape (issue 31, item 6).

50,000 events in 1,000-event messages through one worker (intake, metering and sink in one process);
its RSS is sampled every 0.2 s while it counts them. A resource bound, not a timing: the run holds at
most the workload itself in flight, so a slow machine makes it last longer, not use more memory.
"""

from __future__ import annotations

from pathlib import Path

from stripemeter.domain.config import Settings
from stripemeter.tools.bench import Workload, throughput

# Measured here (docs/benchmarks.md, "Memory"): peaks of 153-159 MiB; 329 MiB while every encoded item
# sat in its own 4 KiB buffer (stripemeter/schemas/held_json.py), which this bound would catch.
METERING_RSS_BOUND_MIB = 256


async def test_metering_rss_stays_bounded_with_batched_messages(stack: Settings, tmp_path: Path) -> None:
    said: list[str] = []
    result = await throughput(
        stack.with_overrides(state_dir=tmp_path), Workload(50_000, 500, 1000), 4, said.append
    )
    peak = result["peakRssMiB"]["metering"]
    assert 0 < peak <= METERING_RSS_BOUND_MIB, "\n".join(said)
