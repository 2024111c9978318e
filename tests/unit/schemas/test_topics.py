from __future__ import annotations

from stripemeter.schemas.partitioning import partition_for
from stripemeter.schemas.topics import TopicNames, topic_specs


def test_contract_names_and_prefix() -> None:
    plain = TopicNames()
    assert [plain.events, plain.dlq, plain.late, plain.deltas, plain.drift] == [
        "usage.events",
        "usage.events.dlq",
        "usage.late",
        "usage.deltas",
        "reconciliation.drift",
    ]
    prefixed = TopicNames(prefix="t1.", app_id="sm-t1")
    assert prefixed.events == "t1.usage.events"
    assert prefixed.changelog("counters") == "sm-t1-counters-changelog"


def test_specs_are_explicit_and_changelogs_match_source_partitions() -> None:
    specs = {s.name: s for s in topic_specs(TopicNames(), 6)}
    assert specs["usage.events"].cleanup_policy == "delete"
    assert specs["stripemeter-counters-changelog"].cleanup_policy == "compact"
    assert (
        specs["stripemeter-counters-changelog"].partitions
        == specs["stripemeter-events-keyed"].partitions
        == 6
    )
    assert all(s.config()["retention.ms"] for s in specs.values())


def test_partition_for_matches_kafka_default_partitioner() -> None:
    # Values computed by Kafka's Java murmur2 (Utils.toPositive(Utils.murmur2(bytes)) % n).
    assert partition_for("demo|acme-42", 1) == 0
    assert {partition_for(f"t|c{i}", 4) for i in range(100)} == {0, 1, 2, 3}
