"""Per-metric rules: how a counter aggregates and how late an event may be and still count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Aggregation = Literal["sum", "count", "last"]
AGGREGATIONS: tuple[Aggregation, ...] = ("sum", "count", "last")


@dataclass(frozen=True)
class MetricPolicy:
    aggregation: Aggregation = "sum"
    lateness_ms: int = 48 * 3_600_000


class Policies:
    """Policies by (tenant, metric), with a default; replaced wholesale when mappings change."""

    def __init__(self, default: MetricPolicy, by_metric: dict[tuple[str, str], MetricPolicy] | None = None):
        self.default = default
        self.by_metric = by_metric or {}
        self.version = 0  # grows whenever the policies change (what was learnt under them may be stale)

    def get(self, tenant: str, metric: str) -> MetricPolicy:
        return self.by_metric.get((tenant, metric), self.default)

    def replace(self, by_metric: dict[tuple[str, str], MetricPolicy]) -> None:
        if by_metric != self.by_metric:
            self.by_metric = by_metric
            self.version += 1
