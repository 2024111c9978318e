"""The public registry (every process's /metrics, no key) holds no series that names a tenant, a
customer or a metric, or tells which API key ids exist; those are in the operator registry."""

from __future__ import annotations

from types import ModuleType

from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from stripemeter.api import http_metrics, operator_metrics
from stripemeter.domain import metrics

NAMING = {"tenant", "tenant_id", "customer", "customer_ref", "metric", "period", "key", "key_id"}


def families(module: ModuleType) -> dict[str, MetricWrapperBase]:
    return {
        family.name: value
        for value in vars(module).values()
        if isinstance(value, MetricWrapperBase)
        for family in value.describe()
    }


def test_no_public_family_has_a_label_naming_a_tenant_customer_or_metric() -> None:
    public = {family.name for family in REGISTRY.collect()}
    ours = {**families(metrics), **families(http_metrics)}
    exposed = {name: family for name, family in ours.items() if name in public}
    assert "http_requests" in exposed and "stripemeter_events" in exposed
    naming = {name: sorted(NAMING & set(family._labelnames)) for name, family in exposed.items()}
    assert {name: labels for name, labels in naming.items() if labels} == {}


def test_detailed_and_key_revealing_families_are_operator_data() -> None:
    public = {family.name for family in REGISTRY.collect()}
    operator = {family.name for family in metrics.OPERATOR.collect()}
    detailed = {
        "reconciliation_diff_pct", "reconciliation_diff_abs", "stripemeter_api_key_lookups",
        "stripemeter_api_key_cache_entries", "stripemeter_operator_series_left_out",
    }  # fmt: skip
    assert detailed <= operator
    assert detailed & public == set()


def test_the_public_exposition_leaves_the_operator_series_out() -> None:
    metrics.RECONCILIATION_DIFF_ABS.labels("tenant-x", "m", "customer-y", "2026-11").set(5)
    try:
        assert b"customer-y" not in operator_metrics.exposition(operator=False)
        assert b"customer-y" in operator_metrics.exposition(operator=True)
    finally:
        metrics.RECONCILIATION_DIFF_ABS.remove("tenant-x", "m", "customer-y", "2026-11")
