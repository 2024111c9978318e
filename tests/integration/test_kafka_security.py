"""A broker with SASL/SCRAM and ACLs: the worker, the API and the CLI connect with credentials, as the
super user (SASL_PLAINTEXT) and, over TLS (SASL_SSL), as the principals of the ACL recipe in
docs/kafka-security.md; strangers are refused.

Runs its own broker (the local stack's, on other ports, with its own data directory) next to the
shared one; PostgreSQL is the shared one.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shlex
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
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.domain.config import Secret, Settings, settings_env
from stripemeter.domain.kafka_access import KafkaAccess
from stripemeter.schemas.topics import TopicNames
from stripemeter.services.api_keys import ensure_local_key
from stripemeter.tools.local.kafka import with_local_ca
from stripemeter.tools.local.procs import wait_for
from stripemeter.tools.local.stack import app_settings, down, services, start_process, up
from tests.integration.harness import free_port

ROOT = Path(__file__).resolve().parents[2]
PRINCIPALS = ("producer-billing", "stripemeter-worker", "stripemeter-api")


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(settings)}
    command = [sys.executable, "-m", "stripemeter", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)


def _run_all(settings: Settings, commands: list[list[str]]) -> None:
    """Kafka's tools through the CLI, side by side (each is a JVM start)."""
    env = {**os.environ, **settings_env(settings)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "stripemeter", *c], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for c in commands
    ]
    for command, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"{command}: {out.decode()}{err.decode()}"


def recipe_acls(prefix: str, app_id: str) -> list[list[str]]:
    """The ``acl ...`` commands of docs/kafka-security.md, with its P and A filled in."""
    text = (ROOT / "docs" / "kafka-security.md").read_text()
    block = re.search(r'```bash\nP="" A=stripemeter\n(.*?)```', text, re.S)
    assert block is not None, "the ACL recipe block is missing from docs/kafka-security.md"
    commands = []
    for line in block.group(1).replace("\\\n", " ").splitlines():
        if line.startswith("acl "):
            words = shlex.split(line.replace("${P}", prefix).replace("${A}", app_id))[1:]
            commands.append(["kafka-tool", "kafka-acls", "--add", *words])
    return commands


@pytest.fixture
def secured(stack: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Settings]:
    """A second broker with SCRAM and ACLs on (over TLS with ``SASL_SSL``: the test's parameter), its
    topics, the recipe's principals and ACLs; the test starts the worker and the API."""
    tag = uuid.uuid4().hex[:8]
    settings = stack.with_overrides(
        state_dir=tmp_path / "stack",
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        kafka_security_protocol=request.param,
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="stripemeter",
        kafka_sasl_password=Secret(secrets.token_hex(12)),
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
        up(settings, print, with_app=False)
        settings = with_local_ca(settings)  # with TLS, the stack's CA, as up() hands it to its clients
        ensure_local_key(settings)
        users = [
            [
                *("kafka-tool", "kafka-configs", "--alter", "--entity-type", "users", "--entity-name", user),
                *("--add-config", f"SCRAM-SHA-512=[password={user}-pw]"),
            ]
            for user in PRINCIPALS
        ]
        _run_all(settings, users + recipe_acls(settings.topic_prefix, settings.app_id))
        yield settings
    finally:
        down(settings, print)
        shutil.rmtree(settings.state_dir, ignore_errors=True)  # the broker's log dirs


def as_user(settings: Settings, user: str) -> Settings:
    return settings.with_overrides(kafka_sasl_username=user, kafka_sasl_password=Secret(f"{user}-pw"))


@pytest.fixture
def apps(secured: Settings) -> Iterator[Any]:
    """Starts the worker and the API (as whom the test says); stops them after the test."""

    def start(worker: Settings, api: Settings) -> None:
        running = {s.name: s.managed.pid() for s in services(secured)}
        assert running["worker"] is None and running["api"] is None, "the stack's apps already run"
        for settings, name in ((worker, "worker"), (api, "api")):
            settings = app_settings(settings)  # the emulator
            host, port = ("127.0.0.1", settings.worker_web_port) if name == "worker" else (
                settings.api_host, settings.api_port)  # fmt: skip
            argv = [sys.executable, "-m", "stripemeter", name]
            start_process(settings, name, argv, f"http://{host}:{port}/health/live", print)

    yield start
    for service in services(secured):
        if service.name in ("worker", "api"):
            service.managed.stop(timeout=60)
            assert service.managed.pid() is None, f"{service.name} did not stop"


def _http(settings: Settings, method: str, path: str, body: Any = None) -> Any:
    token = (settings.state_dir / "api-key").read_text().strip()
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


async def _consume(access: KafkaAccess, topic: str) -> None:
    consumer = AIOKafkaConsumer(
        topic, **client_kwargs(access), group_id="intruders", request_timeout_ms=10_000
    )
    try:
        await asyncio.wait_for(consumer.start(), 30)
        await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()


def _refused(action: Any) -> str:
    try:
        asyncio.run(action)
    except (KafkaError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError("the broker allowed it")


def _counted(settings: Settings, tenant: str, keys: list[str]) -> None:
    def events() -> list[dict[str, Any]]:
        return list(_http(settings, "GET", f"/v1/events?tenantId={tenant}&metric=calls")["events"])

    def done() -> bool:
        seen = events()
        return sorted(e["idempotencyKey"] for e in seen) == keys and all(
            e["outcome"] == "counted" for e in seen
        )

    assert wait_for(done, 90), events()


def _event(tenant: str, key: str) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "tenantId": tenant,
        "metric": "calls",
        "customerRef": "c1",
        "quantity": 2,
        "ts": now,
        "idempotencyKey": key,
    }


@pytest.mark.parametrize("secured", ["SASL_PLAINTEXT"], indirect=True)
def test_worker_api_and_cli_connect_with_scram_and_strangers_are_refused(
    secured: Settings, apps: Any
) -> None:
    settings = secured
    apps(settings, settings)
    names = TopicNames(settings.topic_prefix, settings.app_id)
    tenant = f"ks-{uuid.uuid4().hex[:6]}"

    accepted = _http(settings, "POST", "/v1/events/ingest", {"events": [_event(tenant, "a")]})
    assert accepted["accepted"] == 1, accepted  # the API's producer
    asyncio.run(_produce(settings.kafka, names.events, _event(tenant, "b")))  # a direct producer
    anonymous = KafkaAccess(settings.kafka_bootstrap_servers)
    assert "KafkaConnectionError" in _refused(_produce(anonymous, names.events, _event(tenant, "x")))
    wrong = settings.kafka_sasl_password.value + "-not"
    intruder = KafkaAccess(
        settings.kafka_bootstrap_servers, "SASL_PLAINTEXT", "SCRAM-SHA-512", "stripemeter", wrong
    )
    assert "KafkaConnectionError" in _refused(_produce(intruder, names.events, _event(tenant, "y")))
    _counted(settings, tenant, ["a", "b"])  # by the worker: intake, meter, sink

    # the CLI: aiokafka admin and consumer (topics list), and Kafka's own tools (--command-config)
    listed = _cli(settings, "topics", "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith(names.events + " "))
    assert row[-1] == "2", listed.stdout  # the two accepted events; the refused ones never arrived
    tool = _cli(settings, "kafka-tool", "kafka-topics", "--describe", "--topic", names.events)
    assert tool.returncode == 0 and f"Topic: {names.events}" in tool.stdout, tool.stderr
    password = settings.kafka_sasl_password.value
    for name in ("worker", "api", "kafka"):
        assert password not in (settings.state_dir / "logs" / f"{name}.log").read_text(), name
    assert password not in listed.stdout + listed.stderr + tool.stdout + tool.stderr


@pytest.mark.parametrize("secured", ["SASL_SSL"], indirect=True)
def test_the_acl_recipe_runs_the_pipeline_and_keeps_producers_to_usage_events(
    secured: Settings, apps: Any
) -> None:
    settings = secured
    apps(as_user(settings, "stripemeter-worker"), as_user(settings, "stripemeter-api"))
    names = TopicNames(settings.topic_prefix, settings.app_id)
    tenant = f"ka-{uuid.uuid4().hex[:6]}"
    producer = as_user(settings, "producer-billing").kafka

    accepted = _http(settings, "POST", "/v1/events/ingest", {"events": [_event(tenant, "api")]})
    assert accepted["accepted"] == 1, accepted
    asyncio.run(_produce(producer, names.events, _event(tenant, "producer")))
    _counted(settings, tenant, ["api", "producer"])
    # the API's corrections go to the worker's keyed topic, which the recipe lets it write
    adjustment = {
        "tenantId": tenant,
        "metric": "calls",
        "customerRef": "c1",
        "delta": 5,
        "reason": "acl test",
    }
    adjusted = _http(settings, "POST", "/v1/adjustments", {**adjustment, "ts": _event(tenant, "")["ts"]})
    assert adjusted["visible"] is True, adjusted  # counted by the meter (worker), shown by the sink

    for topic in (names.deltas, names.keyed, names.dlq):
        assert "TopicAuthorizationFailed" in _refused(_produce(producer, topic, _event(tenant, "z"))), topic
    assert "Authorization" in _refused(_consume(producer, names.events))
    # the listener speaks TLS only, and only with a certificate the client's CA file vouches for
    in_clear = as_user(settings, "producer-billing").with_overrides(kafka_security_protocol="SASL_PLAINTEXT")
    untrusting = as_user(settings, "producer-billing").with_overrides(kafka_ssl_cafile="")
    for stranger in (in_clear.kafka, untrusting.kafka):
        assert "KafkaConnectionError" in _refused(_produce(stranger, names.events, _event(tenant, "t")))
    _counted(settings, tenant, ["api", "producer"])
    for name in ("worker", "api"):  # the recipe lacks nothing they use
        log = (settings.state_dir / "logs" / f"{name}.log").read_text()
        assert not re.search(r"Authori[sz]ation|authori[sz]ed", log), log[-3000:]
