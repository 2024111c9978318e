"""The replication settings: what the worker's start-up check refuses, what the topics are given, and
the session timeout a restarted pod needs."""

from __future__ import annotations

from stripemeter.adapters.kafka.admin import replication_problems
from stripemeter.domain.config import Settings, load_settings
from stripemeter.schemas.topics import SINGLE_BROKER, THREE_BROKERS, TopicNames, deployment_specs, topic_specs
from stripemeter.streams.worker.faust_app import session_timeout_seconds

SPECS = topic_specs(TopicNames(), 2, THREE_BROKERS)


def described(replicas: list[int], partitions: int = 2) -> dict[str, dict[str, object]]:
    return {
        s.name: {"error_code": 0, "partitions": [{"replicas": replicas} for _ in range(partitions)]}
        for s in SPECS
    }


def test_the_defaults_are_three_replicas_two_in_sync() -> None:
    settings = load_settings({})
    assert (settings.topic_replication_factor, settings.topic_min_insync_replicas) == (3, 2)
    assert {s.config()["min.insync.replicas"] for s in deployment_specs(settings)} == {"2"}
    assert {s.replication for s in deployment_specs(settings)} == {THREE_BROKERS}


def test_a_cluster_with_fewer_brokers_than_the_factor_is_refused_naming_the_settings() -> None:
    problems = replication_problems(1, {}, {}, SPECS)
    assert len(problems) == 1
    assert "needs 3 brokers, the cluster has 1" in problems[0]
    assert "STRIPEMETER_TOPIC_REPLICATION_FACTOR" in problems[0]
    assert replication_problems(3, {}, {}, SPECS) == []  # topics not created yet: nothing to judge


def test_existing_topics_with_fewer_replicas_are_refused_more_are_not() -> None:
    problems = replication_problems(3, described([1]), {}, SPECS)
    assert len(problems) == len(SPECS)
    assert all("1 replica(s), fewer than the replication factor 3" in p for p in problems)
    assert replication_problems(5, described([1, 2, 3, 4]), {}, SPECS) == []
    single = topic_specs(TopicNames(), 2, SINGLE_BROKER)
    assert replication_problems(1, described([1]), {}, single) == []


def test_a_min_insync_above_the_replicas_is_refused() -> None:
    configs = {s.name: {"min.insync.replicas": "3"} for s in SPECS}
    problems = replication_problems(3, described([1, 2]), configs, SPECS)
    assert any("min.insync.replicas=3 but 2 replica(s)" in p for p in problems)


def test_a_missing_topic_is_not_judged() -> None:
    topics = {s.name: {"error_code": 3, "partitions": []} for s in SPECS}
    assert replication_problems(3, topics, {}, SPECS) == []


def test_the_session_timeout_covers_a_pod_restart_with_static_membership() -> None:
    assert session_timeout_seconds(Settings()) == 10.0
    assert session_timeout_seconds(Settings(group_instance_id="stripemeter-worker-0")) == 45.0
    assert (
        session_timeout_seconds(Settings(group_instance_id="w-0", kafka_session_timeout_seconds=120)) == 120
    )
