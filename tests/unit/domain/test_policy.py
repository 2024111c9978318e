"""Policies arrive two ways (the change itself through the keyed partitions, and reloads of every
mapping); whichever comes first, the newest version wins."""

from __future__ import annotations

from stripemeter.domain.policy import MetricPolicy, Policies

DEFAULT = MetricPolicy(lateness_ms=1000)


def test_a_reload_never_undoes_a_newer_change_learnt_from_the_partition() -> None:
    policies = Policies(DEFAULT)
    assert policies.learn("t", "m", MetricPolicy("count", 1000, version=5))
    policies.replace({("t", "m"): MetricPolicy("sum", 1000, version=4)})  # read before the change
    assert policies.get("t", "m").aggregation == "count"
    policies.replace({("t", "m"): MetricPolicy("last", 1000, version=6)})
    assert policies.get("t", "m").aggregation == "last"
    assert not policies.learn("t", "m", MetricPolicy("count", 1000, version=5))  # older: ignored
    assert policies.get("t", "m").version == 6


def test_a_change_is_counted_once_in_the_policies_version() -> None:
    policies = Policies(DEFAULT)
    before = policies.version
    policies.learn("t", "m", MetricPolicy("count", 1000, version=1))
    policies.learn("t", "m", MetricPolicy("count", 1000, version=1))  # the same again
    policies.replace({("t", "m"): MetricPolicy("count", 1000, version=1)})
    assert policies.version == before + 1
    assert policies.get("t", "other") == DEFAULT
