"""Per-metric rules: how a counter aggregates and how late an event may be and still count.

An event counts when ``ts >= watermark - lateness``, and only if every dedupe entry that could know it
still exists: entries expire behind the lateness window (plus a margin), so when lateness is raised,
events between the old and the new window may have lost theirs. ``horizon_ms`` is the earliest event
time from which every entry still exists (set when lateness goes up, see adapters/postgres/mappings.py); an
older event is too late until the window has caught up with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Stripe takes meter events up to 35 days old: a longer window would only keep dedupe entries (and
# watermarks' reach) alive for events Stripe refuses anyway. Settings, mappings and stored rows hold to it.
MAX_LATENESS_SECONDS = 35 * 24 * 3600

Aggregation = Literal["sum", "count", "last"]
AGGREGATIONS: tuple[Aggregation, ...] = ("sum", "count", "last")


@dataclass(frozen=True)
class MetricPolicy:
    aggregation: Aggregation = "sum"
    lateness_ms: int = 48 * 3_600_000
    horizon_ms: int = -(2**63)  # no event older than this counts (see the module's docstring)
    version: int = 0  # of the mapping it comes from (0: the defaults); a newer version replaces it

    def too_late(self, ts_ms: int, watermark_ms: int | None) -> bool:
        if ts_ms < self.horizon_ms:
            return True
        return watermark_ms is not None and ts_ms < watermark_ms - self.lateness_ms


# dedupe entries outlive the lateness window by this much (stripemeter/core/dedupe_sweep.py)
DEDUPE_MARGIN_MS = 3_600_000


def expiry_horizon(now_ms: int, lateness_ms: int, margin_ms: int = DEDUPE_MARGIN_MS) -> int:
    """Dedupe entries with event times from here on cannot have expired under ``lateness_ms`` by
    ``now_ms``: no event is accepted more than an hour ahead of the clock (two allowed here), so no
    watermark is either. When lateness is raised, this (under the old lateness) is the horizon."""
    return now_ms + 2 * 3_600_000 - lateness_ms - margin_ms


class Policies:
    """Policies by (tenant, metric), with a default.

    Each policy carries the version of the mapping change it comes from. Policies arrive two ways: the
    mapping change itself, sent through every keyed partition (``learn``), and reloads of all mappings
    from PostgreSQL (``replace``). Either may be older than the other, so a policy is only ever
    replaced by a newer version; a deleted mapping is a policy with the defaults and its own version.
    """

    def __init__(self, default: MetricPolicy, by_metric: dict[tuple[str, str], MetricPolicy] | None = None):
        self.default = default
        self.by_metric = by_metric or {}
        self.version = 0  # grows whenever the policies change (what was learnt under them may be stale)

    def get(self, tenant: str, metric: str) -> MetricPolicy:
        return self.by_metric.get((tenant, metric), self.default)

    def learn(self, tenant: str, metric: str, policy: MetricPolicy) -> bool:
        """Take ``policy`` unless a newer version is known; whether anything changed."""
        known = self.by_metric.get((tenant, metric))
        if known is not None and (known.version > policy.version or known == policy):
            return False
        self.by_metric[tenant, metric] = policy
        self.version += 1
        return True

    def replace(self, by_metric: dict[tuple[str, str], MetricPolicy]) -> None:
        """Everything PostgreSQL holds (mappings and deleted mappings); newer versions known stay."""
        changed = False
        for key, policy in by_metric.items():
            known = self.by_metric.get(key)
            if known is None or (policy.version >= known.version and policy != known):
                self.by_metric[key] = policy
                changed = True
        if changed:
            self.version += 1
