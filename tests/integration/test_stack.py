"""The local stack: idempotent start, stop keeps the data. Runs its own Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg

from stripemeter.adapters.kafka.admin import describe
from stripemeter.domain.config import Settings
from stripemeter.schemas.topics import TopicNames
from stripemeter.tools.local.stack import down, status, up
from tests.integration.client import produce
from tests.integration.harness import free_port


def running(settings: Settings) -> dict[str, str]:
    return {name: state for name, state, _addr, _log in status(settings)}


def test_start_twice_is_harmless_and_restart_keeps_data(stack: Settings, tmp_path: Path) -> None:
    kafka_port = free_port()
    settings = stack.with_overrides(
        state_dir=tmp_path / "stack",
        kafka_bootstrap_servers=f"127.0.0.1:{kafka_port}",
        database_url=type(stack.database_url)(
            f"postgresql://stripemeter:stripemeter@127.0.0.1:{free_port()}/stripemeter"
        ),
        partitions=1,
    )
    messages: list[str] = []
    try:
        up(settings, messages.append, with_app=False)
        first = running(settings)
        assert first["kafka"].startswith("running") and first["postgres"].startswith("running")

        with psycopg.connect(settings.database_url.value, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS keepme (v int)")
            conn.execute("INSERT INTO keepme VALUES (42)")
        asyncio.run(produce(settings, [{"hello": "world"}]))

        messages.clear()
        up(settings, messages.append, with_app=False)
        assert running(settings) == first, "a second start must not restart anything"
        assert not any(m.startswith("starting") for m in messages)

        down(settings, messages.append)
        assert all(state == "stopped" for state in running(settings).values())
        up(settings, messages.append, with_app=False)

        with psycopg.connect(settings.database_url.value) as conn:
            assert conn.execute("SELECT v FROM keepme").fetchall() == [(42,)]
        events_topic = TopicNames(settings.topic_prefix, settings.app_id).events
        info = asyncio.run(describe(settings.kafka, [events_topic]))
        assert info[0].messages == 1
    finally:
        down(settings, messages.append)
