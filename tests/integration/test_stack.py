"""The local stack: idempotent start, stop keeps the data, PostgreSQL known by the server's own pid.
Runs its own Kafka and PostgreSQL. `reconcile` next to a stack reads the stack's Stripe emulator."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg

from stripemeter.adapters.kafka.admin import describe
from stripemeter.adapters.postgres.mappings import MetricMapping, upsert_customer, upsert_metric
from stripemeter.domain.config import Settings, settings_env
from stripemeter.domain.units import MICROS
from stripemeter.schemas.topics import TopicNames
from stripemeter.tools.local.postgres import LocalPostgres
from stripemeter.tools.local.procs import pid_alive, read_pid
from stripemeter.tools.local.stack import down, emulator_url, start_emulator, status, up
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
        server = postmaster_pid(settings)
        assert first["postgres"] == f"running (pid {server})", "the server's own pid, not its launcher's"

        with psycopg.connect(settings.database_url.value, autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS keepme (v int)")
            conn.execute("INSERT INTO keepme VALUES (42)")
        asyncio.run(produce(settings, [{"hello": "world"}]))

        messages.clear()
        up(settings, messages.append, with_app=False)
        assert running(settings) == first, "a second start must not restart anything"
        assert not any(m.startswith("starting") for m in messages)

        # the process that launched the server is forgotten (as root: runuser gone): the server still runs
        (settings.state_dir / "run" / "postgres.pid").write_text("999999999\n")
        assert running(settings)["postgres"] == f"running (pid {server})"
        messages.clear()
        up(settings, messages.append, with_app=False)
        assert not any(m.startswith("starting PostgreSQL") for m in messages)

        down(settings, messages.append)
        assert all(state == "stopped" for state in running(settings).values())
        assert not pid_alive(server), "down stops the server it found by its own pid"
        up(settings, messages.append, with_app=False)

        with psycopg.connect(settings.database_url.value) as conn:
            assert conn.execute("SELECT v FROM keepme").fetchall() == [(42,)]
        events_topic = TopicNames(settings.topic_prefix, settings.app_id).events
        info = asyncio.run(describe(settings.kafka, [events_topic]))
        assert info[0].messages == 1
    finally:
        down(settings, messages.append)


def postmaster_pid(settings: Settings) -> int:
    pid = read_pid(LocalPostgres.from_settings(settings, Path("/")).data_dir / "postmaster.pid")
    assert pid is not None
    return pid


def stripe_post(base: str, path: str, form: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        base + path,
        data=urllib.parse.urlencode(form).encode(),
        headers={"Authorization": "Bearer sk_test_local_emulator"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        body: dict[str, Any] = orjson.loads(answer.read())
        return body


def test_reconcile_next_to_the_stack_reads_its_emulator_without_a_stripe_key(
    env: Settings, tmp_path: Path
) -> None:
    settings = env.with_overrides(
        state_dir=tmp_path / "stack", emulator_port=free_port(), stripe_api_key=type(env.stripe_api_key)("")
    )
    settings = settings.with_overrides(stripe_api_base="")
    start_emulator(settings, print)
    try:
        base, tenant = emulator_url(settings), f"rs-{settings.app_id}"
        meter = stripe_post(base, "/v1/billing/meters", {
            "display_name": "requests", "event_name": f"req_{settings.app_id}",
            "default_aggregation[formula]": "sum",
        })  # fmt: skip
        customer = stripe_post(base, "/v1/customers", {"email": "c1@example.com"})["id"]
        bucket = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
        stripe_post(base, "/v1/billing/meter_events", {
            "event_name": meter["event_name"], "payload[stripe_customer_id]": customer,
            "payload[value]": "2", "timestamp": str(int(bucket.timestamp()) + 60),
        })  # fmt: skip
        asyncio.run(seed_counter(settings, tenant, meter["event_name"], customer, bucket))

        child_env = {**os.environ, **settings_env(settings)}
        for name in ("STRIPE_API_KEY", "STRIPE_API_BASE"):
            child_env.pop(name, None)
        argv = [sys.executable, "-m", "stripemeter", "reconcile", "--tenant", tenant]
        argv += ["--period", f"{bucket:%Y-%m}", "--json"]
        done = subprocess.run(argv, env=child_env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        report = orjson.loads(done.stdout)
        [item] = report["items"]
        assert (item["local"], item["stripe"], item["status"]) == (2, 2, "parity"), item
    finally:
        down(settings, print)  # stops only what this state directory started: the emulator


async def seed_counter(
    settings: Settings, tenant: str, event_name: str, customer: str, bucket: datetime
) -> None:
    mapping = MetricMapping(tenant, "requests", event_name, "sum", None)
    async with await psycopg.AsyncConnection.connect(settings.database_url.value, autocommit=True) as conn:
        await upsert_metric(conn, mapping, bucket, settings.lateness_seconds)
        await upsert_customer(conn, tenant, "c1", customer, None)
        await conn.execute(
            "INSERT INTO counters (tenant_id, metric, customer_ref, bucket, total_micros, seq, updated_at)"
            " VALUES (%s, 'requests', 'c1', %s, %s, 1, %s)",
            (tenant, bucket, 2 * MICROS, bucket + timedelta(minutes=1)),
        )
