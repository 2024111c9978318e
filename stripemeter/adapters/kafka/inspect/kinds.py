"""Which stripemeter topic a name is, what its records look like, and who consumes it (pure)."""

from __future__ import annotations

from typing import Literal, cast

from stripemeter.schemas.topics import TABLES, TopicNames

Kind = Literal[
    "events", "dlq", "late", "deltas", "drift", "keyed", "ledger", "dedupe", "counters", "watermarks", "other"
]

# Logical (contract) names, as operators type them; the prefix setting is applied on resolution.
CONTRACT_TOPICS: dict[str, Kind] = {
    "usage.events": "events",
    "usage.events.dlq": "dlq",
    "usage.late": "late",
    "usage.deltas": "deltas",
    "reconciliation.drift": "drift",
}


def kinds_by_name(names: TopicNames) -> dict[str, Kind]:
    """Full topic name -> kind, for every topic of this prefix and app id."""
    kinds: dict[str, Kind] = {f"{names.prefix}{logical}": kind for logical, kind in CONTRACT_TOPICS.items()}
    kinds[names.keyed] = "keyed"
    kinds[names.ledger] = "ledger"
    for table in TABLES:
        kinds[names.changelog(table)] = cast(Kind, table)  # TABLES are Kind values
    return kinds


def resolve_topic(names: TopicNames, name: str) -> str:
    """A logical contract name (``usage.events``) gets the configured prefix; anything else is taken
    as the full name. Internal topics may also be named by their suffix (``ledger``,
    ``counters-changelog``)."""
    if name in CONTRACT_TOPICS:
        return f"{names.prefix}{name}"
    internal = {"events-keyed": names.keyed, "ledger": names.ledger}
    internal.update({f"{t}-changelog": names.changelog(t) for t in TABLES})
    return internal.get(name, name)


def topic_kind(names: TopicNames, topic: str) -> Kind:
    return kinds_by_name(names).get(topic, "other")


def logical_name(names: TopicNames, topic: str) -> str:
    """``t1.usage.events`` -> ``usage.events`` for short output lines; other names unchanged."""
    if names.prefix and topic.startswith(names.prefix) and topic[len(names.prefix) :] in CONTRACT_TOPICS:
        return topic[len(names.prefix) :]
    return topic


def consumer_groups(app_id: str) -> dict[str, str]:
    """Group id -> role, for every consumer group the pipeline runs (see streams/worker_app.py)."""
    return {
        app_id: "worker (Faust: meter agent)",
        f"{app_id}-intake": "intake",
        TopicNames(app_id=app_id).sink_group: "PostgreSQL sink",
        f"{app_id}-stripe-writer": "Stripe writer",
    }


def is_ours(names: TopicNames, topic: str) -> bool:
    """Our topics: the prefix's contract topics and anything the app id owns (Faust adds its own,
    e.g. ``{app_id}-__assignor-__leader``)."""
    if topic in kinds_by_name(names):
        return True
    if names.prefix and topic.startswith(names.prefix):
        return True
    return topic.startswith(f"{names.app_id}-")
