"""`stripemeter bench cycle`, CI-sized: 1,000 customers, 3 days of event time across a month end.

The benchmark itself checks the oracle (every counted event once, in the counters and in Stripe,
counter hour by counter hour) and reconciles every period to parity, raising otherwise; this test
runs it and checks that the traffic had what the cycle is about. Timings are not asserted.
"""

from __future__ import annotations

import pytest

from stripemeter.domain.config import Settings
from stripemeter.tools.bench_cycle import CycleShape, run_cycle

pytestmark = pytest.mark.exactly_once  # an oracle check: never rerun by CI; repeated by ./dev soak


async def test_a_compressed_cycle_ends_at_parity_with_the_oracle(stack: Settings) -> None:
    lines: list[str] = []
    shape = CycleShape(customers=1000, days=3, minutes=1.0, rate=100, drain_minutes=5)

    result = await run_cycle(stack, shape, lines.append)

    output = "\n".join(lines)
    assert result["duplicates"] > 0 and result["late"] > 0 and result["tooLate"] > 0, output
    assert result["counted"] == result["events"] - result["duplicates"] - result["tooLate"], output
    assert result["localDiffering"] == 0 and result["stripeDiffering"] == 0, output
    assert result["meterEvents"] >= result["counterHours"] > 0, output
    # the month before the month end and the one after it, both closed at parity
    assert sorted(result["reconciled"]) == ["2027-01", "2027-02"], output
    assert all(p["items"] > 0 for p in result["reconciled"].values()), output
    assert "clock moved across the month end" in output, output
    assert result["samples"] == 12, output  # the start, ten tenths, and after the period closed
