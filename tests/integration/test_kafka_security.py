"""A broker with SASL/SCRAM: the worker, the API and the CLI connect with credentials, strangers do not.

Runs its own broker (the local stack's, on other ports, with its own data directory) next to the
shared one; PostgreSQL is the shared one.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.domain.config import Secret, Settings, settings_env
from stripemeter.domain.kafka_access import KafkaAccess
from stripemeter.schemas.topics import TopicNames
from stripemeter.services.api_keys import local_key_file
from stripemeter.tools.local.procs import wait_for
from stripemeter.tools.local.stack import down, up
from tests.integration.harness import free_port


@pytest.fixture
def scram_stack(stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    """The local stack with SCRAM on a second broker: Kafka, topics, the Stripe emulator, worker, API."""
    tag = uuid.uuid4().hex[:8]
    settings = stack.with_overrides(
        state_dir=tmp_path / "stack",
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="stripemeter",
        kafka_sasl_password=Secret(secrets.token_urlsafe(18).replace("=", "")),
        kafka_heap="384m",
        topic_prefix=f"k{tag}.",
        app_id=f"smk-{tag}",
        partitions=1,
        emulator_port=free_port(),
        worker_web_port=free_port(),
        api_port=free_port(),
        stripe_api_key=Secret(""),
        stripe_api_base="",
        reconcile_interval_seconds=0,
        auth_enabled=True,
    )
    try:
        up(settings, print)
        yield settings
    finally:
        down(settings, print)
        shutil.rmtree(settings.state_dir, ignore_errors=True)  # the broker's log dirs


def _http(settings: Settings, method: str, path: str, token: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"http://{settings.api_host}:{settings.api_port}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


async def _produce(access: KafkaAccess, topic: str, event: dict[str, Any]) -> None:
    producer = AIOKafkaProducer(**client_kwargs(access), acks="all", request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(producer.start(), 30)
        await asyncio.wait_for(producer.send_and_wait(topic, json.dumps(event).encode()), 30)
    finally:
        await producer.stop()


def _refused(access: KafkaAccess, topic: str, event: dict[str, Any]) -> str:
    try:
        asyncio.run(_produce(access, topic, event))
    except (KafkaError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError(f"the broker took an event from {access.username or 'a client without a login'}")


def test_worker_api_and_cli_connect_with_scram_and_strangers_are_refused(scram_stack: Settings) -> None:
    settings = scram_stack
    names = TopicNames(settings.topic_prefix, settings.app_id)
    token = local_key_file(settings).read_text().strip()
    tenant = f"ks-{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC).isoformat()
    event = {"tenantId": tenant, "metric": "calls", "customerRef": "c1", "quantity": 2, "ts": now}

    # the API's producer, with credentials
    accepted = _http(
        settings, "POST", "/v1/events/ingest", token, {"events": [{**event, "idempotencyKey": "a"}]}
    )
    assert accepted["accepted"] == 1, accepted
    # a direct producer with the credentials
    asyncio.run(_produce(settings.kafka, names.events, {**event, "idempotencyKey": "b"}))
    # without credentials, and with a wrong password: refused
    anonymous = KafkaAccess(settings.kafka_bootstrap_servers)
    assert "KafkaConnectionError" in _refused(anonymous, names.events, {**event, "idempotencyKey": "x"})
    wrong = KafkaAccess(
        settings.kafka_bootstrap_servers, "SASL_PLAINTEXT", "SCRAM-SHA-512", "stripemeter", "nope"
    )
    assert "KafkaConnectionError" in _refused(wrong, names.events, {**event, "idempotencyKey": "y"})

    # the worker (intake, meter, sink) counts both, and only both
    def events() -> list[dict[str, Any]]:
        return list(_http(settings, "GET", f"/v1/events?tenantId={tenant}&metric=calls", token)["events"])

    assert wait_for(lambda: len(events()) == 2 and all(e["outcome"] == "counted" for e in events()), 90), (
        events()
    )
    keys = sorted(e["idempotencyKey"] for e in events())
    assert keys == ["a", "b"]

    # the CLI: aiokafka admin and consumer (topics list), and Kafka's own tools (--command-config)
    env = {**os.environ, **settings_env(settings)}
    cli = [sys.executable, "-m", "stripemeter"]
    listed = subprocess.run([*cli, "topics", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith(names.events + " "))
    assert row[-1] == "2", listed.stdout  # the two accepted events; the refused ones never arrived
    tool = subprocess.run(
        [*cli, "kafka-tool", "kafka-topics", "--describe", "--topic", names.events],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tool.returncode == 0 and f"Topic: {names.events}" in tool.stdout, tool.stderr
