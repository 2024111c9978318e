"""A metric mapping change as the meter receives it: a control message in every keyed partition.

The API sends it to every partition of the keyed topic once the change is saved, and answers only
when the broker has them all. An event that reaches Kafka after the answer is re-keyed by intake
after that, so in its keyed partition it lies behind the update: the meter counts it under the new
rules, on whichever worker holds the partition. The update carries the rules themselves, so applying
it needs no database. Versions only grow (one PostgreSQL sequence); an older update changes nothing.

``reaggregateFromMs``: when the aggregation changed, the counters of the metric with buckets from
there on (the open billing periods) are re-expressed under the new aggregation (core/counting.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from stripemeter.domain.policy import AGGREGATIONS, MAX_LATENESS_SECONDS, Aggregation, MetricPolicy
from stripemeter.schemas import versions

PREFIX = b'{"policy":'


@dataclass(frozen=True)
class PolicyUpdate:
    tenant_id: str
    metric: str
    version: int
    aggregation: Aggregation
    lateness_ms: int
    horizon_ms: int | None  # None: no dedupe horizon
    reaggregate_from_ms: int | None = None

    def policy(self) -> MetricPolicy:
        horizon = -(2**63) if self.horizon_ms is None else self.horizon_ms
        return MetricPolicy(self.aggregation, self.lateness_ms, horizon, self.version)


def is_policy_update(raw: bytes) -> bool:
    return raw.startswith(PREFIX)


def encode_policy_update(update: PolicyUpdate) -> bytes:
    return orjson.dumps(
        versions.stamp(
            {
                "policy": {
                    "tenantId": update.tenant_id,
                    "metric": update.metric,
                    "version": update.version,
                    "aggregation": update.aggregation,
                    "latenessMs": update.lateness_ms,
                    "horizonMs": update.horizon_ms,
                    "reaggregateFromMs": update.reaggregate_from_ms,
                }
            }
        )  # "v" after "policy": the message starts with PREFIX in every format
    )


def decode_policy_update(raw: bytes) -> PolicyUpdate:
    value = orjson.loads(raw)
    versions.object_version(value, "a mapping update")
    body = value["policy"]
    aggregation = body["aggregation"]
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}")
    lateness_ms = int(body["latenessMs"])
    if not 0 <= lateness_ms <= MAX_LATENESS_SECONDS * 1000:  # what the API and the mappings table allow
        raise ValueError(f"latenessMs {lateness_ms} is outside 0..{MAX_LATENESS_SECONDS * 1000} (35 days)")
    horizon, since = body.get("horizonMs"), body.get("reaggregateFromMs")
    return PolicyUpdate(
        str(body["tenantId"]),
        str(body["metric"]),
        int(body["version"]),
        aggregation,
        lateness_ms,
        None if horizon is None else int(horizon),
        None if since is None else int(since),
    )
