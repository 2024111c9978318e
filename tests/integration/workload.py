"""A usage stream with duplicates, late and too-late events, and the oracle that says what counts.

Outcomes do not depend on arrival order: every stream first gets an anchor event at ``now`` (its
watermark); later events are either within the lateness window behind it or far beyond it.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

HOUR_MS = 3_600_000
# ./dev soak sets a fresh value per round; unset, every test draws the same streams on every run
SEED_ENV = "STRIPEMETER_TEST_SEED"


def round_seed(base: int) -> int:
    """The seed a test's random draw uses: ``base`` alone, or mixed with the round's seed when
    STRIPEMETER_TEST_SEED is set (a failing round replays with the seed ./dev soak printed)."""
    round_value = os.environ.get(SEED_ENV)
    return base if not round_value else int(round_value) * 1_000_003 + base


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Workload:
    tenant: str
    anchors: list[dict[str, Any]] = field(default_factory=list)
    stream: list[dict[str, Any]] = field(default_factory=list)  # in send order, duplicates included
    expected: Counter[tuple[str, str, int]] = field(default_factory=Counter)  # (metric, customer, bucket)
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def expected_micros(self) -> dict[tuple[str, str, int], int]:
        return dict(self.expected)


def build(
    tenant: str, customers: int = 40, events: int = 6000, seed: int = 7, lateness_h: int = 48
) -> Workload:
    rng = random.Random(round_seed(seed))
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    anchor_ms = now_ms - 60_000
    w = Workload(tenant)
    metrics = ("requests", "tokens")
    for c in range(customers):
        for metric in metrics:
            e: dict[str, Any] = {
                "tenantId": tenant,
                "metric": metric,
                "customerRef": f"cust-{c}",
                "quantity": 1,
                "ts": iso(anchor_ms),
                "idempotencyKey": f"anchor-{metric}-{c}",
            }
            w.anchors.append(e)
            w.expected[(metric, f"cust-{c}", anchor_ms - anchor_ms % HOUR_MS)] += 1_000_000
            w.outcomes["counted"] += 1
    sent: list[dict[str, Any]] = []
    for i in range(events):
        customer = f"cust-{rng.randrange(customers)}"
        metric = rng.choice(metrics)
        kind = rng.random()
        if kind < 0.05:  # too late: beyond the window behind the anchor
            ts = anchor_ms - (lateness_h + 2 + rng.randrange(24)) * HOUR_MS
        elif kind < 0.35:  # late but within the window
            ts = anchor_ms - rng.randrange(1, (lateness_h - 2) * 60) * 60_000
        else:
            ts = anchor_ms - rng.randrange(0, 3_000_000)
        quantity = rng.choice([1, 2, 5, 0.5, 0.25, 10])
        e = {
            "tenantId": tenant,
            "metric": metric,
            "customerRef": customer,
            "quantity": quantity,
            "ts": iso(ts),
        }
        if rng.random() < 0.8:
            e["idempotencyKey"] = f"ev-{i}"
        sent.append(e)
        late = kind < 0.05
        w.outcomes["late" if late else "counted"] += 1
        if not late:
            w.expected[(metric, customer, ts - ts % HOUR_MS)] += round(quantity * 1_000_000)
    # duplicates: 10% re-sent, some right away, some at the end
    stream = list(sent)
    for e in rng.sample(sent, len(sent) // 10):
        stream.insert(rng.randrange(len(stream) + 1), dict(e))
        late = e["ts"] < iso(anchor_ms - lateness_h * HOUR_MS)
        w.outcomes["late" if late else "duplicate"] += 1
    w.stream = stream
    return w


def chunks(stream: list[dict[str, Any]], rng: random.Random) -> list[Any]:
    """Mix single-event messages and array messages, as real producers do."""
    messages: list[Any] = []
    i = 0
    while i < len(stream):
        if rng.random() < 0.5:
            messages.append(stream[i])
            i += 1
        else:
            n = rng.randrange(2, 200)
            messages.append(stream[i : i + n])
            i += n
    return messages
