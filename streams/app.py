"""The worker: one Faust app wiring intake, metering, checkpoints and the PostgreSQL sink.

Data path:
  usage.events --intake--> {app}-events-keyed --meter (Faust agent)--> dedupe/counters/watermarks tables
      --checkpoint--> usage.deltas, usage.late, {app}-ledger --sink--> PostgreSQL
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust
import psycopg
from aiohttp import web as aioweb
from aiokafka import AIOKafkaProducer
from stripemeter.streams import fetch_wait, heartbeat, memory_tuning, rocksdb_memory
from stripemeter.streams.checkpoint import Checkpointer
from stripemeter.streams.dedupe_sweep import DedupeSweep
from stripemeter.streams.intake import Intake
from stripemeter.streams.metering import Metering
from stripemeter.streams.packing import payload_limit
from stripemeter.streams.policy import DEDUPE_MARGIN_MS, MetricPolicy, Policies
from stripemeter.streams.sink import PostgresSink
from stripemeter.streams.stages import StageProcess, StageProcesses
from stripemeter.streams.state import ChangelogState, mark_clean_stop, prepare_table_dir
from stripemeter.streams.watchdog import RecoveryWatchdog, restart_process

from stripemeter import metrics
from stripemeter.config import Settings, settings_env
from stripemeter.db.mappings import load_policies
from stripemeter.kafka_admin import message_limits
from stripemeter.reconcile.service import build_reconciler, kafka_publisher, run_schedule, stripe_configured
from stripemeter.stripe_push.budget import StripeBudget
from stripemeter.stripe_push.client import make_client
from stripemeter.stripe_push.writer import StripeWriter
from stripemeter.topics import TABLES, TopicNames

log = logging.getLogger(__name__)

CHECKPOINT_INTERVAL = 0.2  # seconds; bounds produce-to-delta latency together with intake polling
POLICY_REFRESH_INTERVAL = 10.0
DEDUPE_SWEEP_INTERVAL = 5.0  # between steps of the dedupe sweep (streams/dedupe_sweep.py)
MEMORY_GAUGE_INTERVAL = 5.0
# Faust's RocksDB defaults (64 MiB x 3 memtables and a 2 GiB block cache per partition and table)
# are sized for a big box; these keep a worker with 3 tables x a few partitions in a few hundred MiB.
ROCKSDB_OPTIONS = {
    "write_buffer_size": 8 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "target_file_size_base": 16 * 1024 * 1024,
}  # caches and memtables share one budget: see streams/rocksdb_memory.py
# Values kept in front of RocksDB for the hot, small tables (see ChangelogState): about 10 MiB each
# when full. Dedupe keys are read once and mostly missing, so remembering them would not pay.
REMEMBERED_VALUES = {"counters": 50_000, "watermarks": 50_000}


def create_app(
    settings: Settings, with_sink: bool = True, with_intake: bool = True, stage_processes: bool = False
) -> faust.App:
    """The worker; ``with_sink=False`` leaves PostgreSQL to a separate ``stripemeter sink``, and
    ``with_intake=False`` leaves usage.events to a separate ``stripemeter intake``. Intake and the sink
    run inside the worker, or with ``stage_processes=True`` as its child processes (see ``stages.py``).
    """
    names = TopicNames(settings.topic_prefix, settings.app_id)
    rocksdb_memory.install(settings.rocksdb_memory_mb)
    settings.worker_data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        store=settings.store,
        datadir=str(settings.worker_data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        web_host=settings.worker_web_host,
        web_bind=settings.worker_web_host,
        web_port=settings.worker_web_port,
        web_enabled=True,
        producer_acks=-1,
        consumer_max_fetch_size=8 * 1024 * 1024,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        broker_commit_every=10_000,
        broker_commit_interval=0.5,
        broker_session_timeout=10.0,
        # with a stable id (a StatefulSet pod name) a restarted worker gets its partitions back
        # without a rebalance, as long as it returns within the session timeout
        consumer_group_instance_id=settings.group_instance_id or None,
        broker_heartbeat_interval=1.0,
        # a topic missing from the broker's metadata at start (just created, or a broker still loading
        # after a restart) leaves the worker without partitions until the next refresh: 30 s, not 5 min
        consumer_metadata_max_age_ms=30_000,
        stream_buffer_maxsize=4096,
        # Faust would wait for every unacknowledged message before a rebalance or stop completes;
        # ours are acknowledged only by checkpoints, and a message left unacknowledged is simply
        # read again by the next owner (exactly, see checkpoint.py), so do not wait for them.
        stream_wait_empty=False,
        worker_redirect_stdouts=False,
    )
    app.transport = fetch_wait.Transport(app.conf.broker_consumer, app)  # before anything uses it
    prepare_table_dir(Path(app.conf.tabledir), settings.worker_data_dir)

    keyed_topic = app.topic(
        names.keyed, value_serializer="raw", key_serializer="raw", partitions=settings.partitions
    )
    states = {
        name: ChangelogState(
            app.Table(
                name, default=None, partitions=settings.partitions, key_type=bytes, options=ROCKSDB_OPTIONS
            ),
            remember=REMEMBERED_VALUES.get(name, 0),
        )
        for name in TABLES
    }
    policies = Policies(MetricPolicy(lateness_ms=settings.lateness_seconds * 1000))
    metering = Metering(
        states["dedupe"], states["counters"], states["watermarks"], policies, events_topic=names.events
    )
    checkpointer = Checkpointer(metering, states, names)
    producer_started = asyncio.Event()

    @app.agent(keyed_topic, name="meter")
    async def meter(stream: Any) -> None:
        await producer_started.wait()
        async for event in stream.noack().events():
            if event.value:
                with metrics.COUNTING_BATCH_SECONDS.time():
                    handled = metering.handle(
                        event.message.partition,
                        event.message.offset,
                        event.value,
                        settings.clock.ms(),
                        names.keyed,
                    )
                if not handled:
                    metrics.POISON_MESSAGES.labels("meter").inc()
            checkpointer.add(event)

    @app.timer(CHECKPOINT_INTERVAL)
    async def checkpoint() -> None:
        if not producer_started.is_set():
            return
        try:
            await checkpointer.run()
        except Exception as exc:  # a lost write must never be acknowledged: restart instead
            log.exception("checkpoint failed; crashing the worker so unacknowledged input is read again")
            await app.crash(exc)

    sweep = DedupeSweep(metering, states["dedupe"], DEDUPE_MARGIN_MS, clock_ms=settings.clock.ms)

    @app.timer(DEDUPE_SWEEP_INTERVAL)
    async def expire_dedupe() -> None:
        """Keeps dedupe state bounded: lateness window plus a margin behind each stream's watermark."""
        if app.rebalancing or not app.tables.recovery.completed.is_set():
            return
        partitions = {tp.partition for tp in app.consumer.assignment() if tp.topic == names.keyed}
        for partition in partitions:
            checked, expired = await sweep.step(partition, lambda: bool(app.rebalancing))
            metrics.DEDUPE_EXPIRED.inc(expired)
            if expired:
                log.info(
                    "expired %d of %d dedupe entries checked in partition %d", expired, checked, partition
                )
            if app.rebalancing:
                return

    @app.timer(MEMORY_GAUGE_INTERVAL)
    async def measure_memory() -> None:
        """Where the worker's memory is: RocksDB by kind, Python's own heap, and the C heap under both."""
        databases = [db for state in states.values() for db in state.databases()]
        for kind, size in rocksdb_memory.usage(databases).items():
            metrics.ROCKSDB_MEMORY.labels(kind).set(size)
        metrics.PYTHON_BLOCKS.set(sys.getallocatedblocks())
        for kind, size in (memory_tuning.heap_usage() or {}).items():
            metrics.HEAP_MEMORY.labels(kind).set(size)

    @app.timer(memory_tuning.CYCLE_INTERVAL)
    async def collect_cycles() -> None:
        memory_tuning.collect_cycles()

    watchdog = RecoveryWatchdog(app.tables.recovery)

    @app.timer(5.0)
    async def watch_recovery() -> None:
        if watchdog.stalled():
            log.error(
                "table recovery made no progress for %.0fs (%d changelog records left); restarting",
                watchdog.stall_seconds,
                app.tables.recovery.active_remaining_total(),
            )
            restart_process()

    def forget_remembered() -> None:
        """A partition held again may have been written by another worker meanwhile, and a changelog
        restore writes RocksDB directly: values remembered in front of it are true no more."""
        for state in states.values():
            state.forget()

    @app.on_partitions_revoked.connect
    async def flush_before_revoke(app: faust.App, revoked: set[Any], **kwargs: Any) -> None:
        """Nothing staged for a partition may reach its changelog after another worker took it over."""
        if producer_started.is_set():
            await checkpointer.run()
        sweep.forget()
        forget_remembered()
        metrics.WORKER_PARTITIONS.set(0)

    @app.on_rebalance_complete.connect
    async def count_partitions(app: faust.App, **kwargs: Any) -> None:
        forget_remembered()  # again once assigned: nothing may have been remembered in between
        metrics.WORKER_PARTITIONS.set(
            len([tp for tp in app.consumer.assignment() if tp.topic == names.keyed])
        )

    @app.task
    async def start_producer() -> None:
        checkpointer.producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            max_batch_size=1024 * 1024,
            max_request_size=16 * 1024 * 1024,
        )
        await checkpointer.producer.start()
        limits = await message_limits(settings.kafka_bootstrap_servers, [names.ledger])
        checkpointer.ledger_limit = payload_limit(limits[names.ledger])
        producer_started.set()

    intake = intake_stage(settings)
    sink = postgres_sink(settings)
    tasks_stopping = asyncio.Event()
    here = [stage for stage, on in (("intake", with_intake), ("sink", with_sink)) if on]  # not elsewhere
    children = StageProcesses(here if stage_processes else [], {**os.environ, **settings_env(settings)})
    for child in children.children:
        app.task(_supervisor(child, tasks_stopping))

    if with_intake and not stage_processes:

        @app.task
        async def run_intake() -> None:
            await _supervise(app, "intake", intake.run)

    # one Stripe budget for the process: the writer and the reconciler share Stripe's per-account limits
    budget = StripeBudget(settings.stripe_calls_per_second)
    if stripe_configured(settings):
        writer = stripe_writer(settings, budget)

        @app.task
        async def run_stripe_writer() -> None:
            await _supervise(app, "stripe writer", writer.run)
    else:
        log.warning("STRIPE_API_KEY is not set: counters are not pushed to Stripe")

    if stripe_configured(settings) and settings.reconcile_interval_seconds > 0:

        @app.task
        async def run_reconciler() -> None:
            await producer_started.wait()
            # not at once: a restarting fleet would otherwise reconcile on every start
            await asyncio.sleep(min(60.0, settings.reconcile_interval_seconds))
            publish = kafka_publisher(checkpointer.producer, names.drift)
            reconciler = build_reconciler(settings, publish, budget)
            await _supervise(app, "reconciler", lambda: run_schedule(settings, reconciler, tasks_stopping))

    if with_sink and not stage_processes:

        @app.task
        async def run_sink() -> None:
            await _supervise(app, "postgres sink", sink.run)

    def readiness() -> dict[str, Any]:
        recovered = app.tables.recovery.completed.is_set()
        rebalancing = bool(app.rebalancing)
        stages = children.running()  # {} unless intake and the sink are child processes
        return {
            "ready": recovered and not rebalancing and all(stages.values()),
            "tablesRecovered": recovered,
            "rebalancing": rebalancing,
            "stagesRunning": stages,
        }

    def worker_status() -> dict[str, Any]:
        partitions = len([tp for tp in app.consumer.assignment() if tp.topic == names.keyed])
        return {**readiness(), "partitions": partitions}

    @app.task
    async def run_heartbeat() -> None:
        await heartbeat.run(settings, worker_status, tasks_stopping)

    @app.task
    async def refresh_policies() -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(settings.database_url.value) as conn:
                    policies.replace(await load_policies(conn, policies.default))
            except psycopg.Error as exc:
                log.warning("could not load metric mappings (keeping the previous ones): %s", exc)
            await asyncio.sleep(POLICY_REFRESH_INTERVAL)

    @app.service
    class CleanStop(faust.Service):  # type: ignore[misc]
        """Marks a graceful stop so the next start keeps RocksDB.

        No new checkpoint runs here: Faust has closed the tables by now. Local RocksDB only ever
        receives what a checkpoint also sends to the changelog, so once the last checkpoint has
        finished without error, local state equals the changelog; unacknowledged input is simply
        read again by whoever owns the partition next.
        """

        async def on_stop(self) -> None:
            tasks_stopping.set()
            intake.stop()
            sink.stop()
            await children.stop()
            if producer_started.is_set():
                clean = await checkpointer.wait_idle()
                await checkpointer.producer.stop()
                if clean:
                    mark_clean_stop(settings.worker_data_dir)
                else:
                    log.warning("a checkpoint failed; the next start rebuilds tables from the changelogs")

    _add_pages(app, readiness, children)
    return app


def stripe_writer(settings: Settings, budget: StripeBudget) -> StripeWriter:
    names = TopicNames(settings.topic_prefix, settings.app_id)
    client = make_client(settings.stripe_api_key.value or "sk_test_emulator", settings.stripe_api_base)
    return StripeWriter(
        settings.kafka_bootstrap_servers,
        names.deltas,
        f"{settings.app_id}-stripe-writer",
        settings.app_id,
        settings.database_url.value,
        client,
        budget,
        clock=settings.clock,
    )


def intake_stage(settings: Settings) -> Intake:
    names = TopicNames(settings.topic_prefix, settings.app_id)
    return Intake(
        settings.kafka_bootstrap_servers, names, group_id=f"{settings.app_id}-intake", clock=settings.clock
    )


def postgres_sink(settings: Settings) -> PostgresSink:
    names = TopicNames(settings.topic_prefix, settings.app_id)
    return PostgresSink(
        settings.kafka_bootstrap_servers,
        names,
        f"{settings.app_id}-postgres-sink",
        settings.database_url.value,
        clock=settings.clock,
    )


def _add_pages(app: faust.App, status: Callable[[], dict[str, Any]], children: StageProcesses) -> None:
    @app.page("/health/live")
    async def live(self: Any, request: Any) -> Any:
        return self.json({"status": "alive"})

    @app.page("/health/ready")
    async def ready(self: Any, request: Any) -> Any:
        body = status()
        body = {"status": "ready" if body.pop("ready") else "not_ready", **body}
        return self.json(body, status=200 if body["status"] == "ready" else 503)

    @app.page("/metrics")
    async def prometheus(self: Any, request: Any) -> Any:
        body = await children.exposition()
        return aioweb.Response(body=body, content_type="text/plain", charset="utf-8")


def _supervisor(child: StageProcess, stopping: asyncio.Event) -> Callable[[], Awaitable[None]]:
    async def supervise() -> None:
        await child.supervise(stopping)

    supervise.__name__ = supervise.__qualname__ = f"supervise_{child.stage}"
    return supervise


async def _supervise(app: faust.App, name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run a plain-aiokafka stage; if it fails, crash the worker rather than run half a pipeline."""
    try:
        await run()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("%s failed; stopping the worker", name)
        await app.crash(exc)
