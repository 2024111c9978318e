"""The worker: one Faust app wiring intake, counting, checkpoints and the counters sink.

Data path:  usage.events --intake--> {app}-events-keyed --count--> counters table
            --checkpoint--> usage.deltas --sink--> PostgreSQL counters
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
from aiohttp import web as aioweb
from prometheus_client import generate_latest
from stripemeter.streams.checkpoint import Checkpointer
from stripemeter.streams.counting import FoldResult, fold
from stripemeter.streams.intake import Intake
from stripemeter.streams.records import decode_batch, decode_keyed
from stripemeter.streams.sink import CounterSink
from stripemeter.streams.tables import TrackedTable

from stripemeter import metrics
from stripemeter.config import Settings
from stripemeter.topics import TopicNames

log = logging.getLogger(__name__)

CHECKPOINT_INTERVAL = 0.2  # seconds; bounds produce-to-delta latency together with intake polling


def create_app(settings: Settings) -> faust.App:
    names = TopicNames(settings.topic_prefix, settings.app_id)
    settings.worker_data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap_servers}",
        store=settings.store,
        datadir=str(settings.worker_data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        web_host="127.0.0.1",
        web_port=settings.worker_web_port,
        web_enabled=True,
        producer_acks=-1,
        producer_max_request_size=8 * 1024 * 1024,
        consumer_max_fetch_size=8 * 1024 * 1024,
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        broker_commit_every=10_000,
        broker_commit_interval=0.5,
        stream_buffer_maxsize=4096,
        worker_redirect_stdouts=False,
    )
    app.producer.buffer.max_messages = 10_000  # Faust hard-codes 100 (faust #173)

    keyed_topic = app.topic(
        names.keyed, value_serializer="raw", key_serializer="raw", partitions=settings.partitions
    )
    deltas_topic = app.topic(names.deltas, value_serializer="raw", key_serializer="raw")
    counters = TrackedTable(
        app,
        name="counters",
        default=None,
        partitions=settings.partitions,
        beacon=app.tables.beacon,
        key_type=str,
        help="hour-bucket counters: [total_micros, seq, applied_offset]",
    )
    app.tables.add(counters)

    async def send_delta(key: bytes, value: bytes) -> Any:
        return await deltas_topic.send(key=key, value=value)

    checkpointer = Checkpointer(counters, send_delta)
    app.stripemeter_checkpointer = checkpointer  # type: ignore[attr-defined]

    @app.agent(keyed_topic, name="count")
    async def count(stream: Any) -> None:
        async for event in stream.noack().events():
            started = time.perf_counter()
            result = FoldResult()
            value = event.value
            if value:
                items = [decode_keyed(item)[0] for item in decode_batch(value)]
                fold(items, event.message.offset, counters, result)
                metrics.EVENTS.labels("counted").inc(result.counted)
            checkpointer.add(event, result.touched)
            metrics.COUNTING_BATCH_SECONDS.observe(time.perf_counter() - started)

    @app.timer(CHECKPOINT_INTERVAL)
    async def checkpoint() -> None:
        try:
            await checkpointer.run()
        except Exception as exc:  # a lost write must never be acknowledged: restart instead
            log.exception("checkpoint failed; crashing the worker so uncommitted input is read again")
            await app.crash(exc)

    intake = Intake(settings.kafka_bootstrap_servers, names, group_id=f"{settings.app_id}-intake")
    sink = CounterSink(
        settings.kafka_bootstrap_servers,
        names.deltas,
        f"{settings.app_id}-counters-sink",
        settings.database_url.value,
    )

    @app.task
    async def run_intake() -> None:
        await _supervise(app, "intake", intake.run)

    @app.task
    async def run_sink() -> None:
        await _supervise(app, "counters sink", sink.run)

    @app.page("/health/live")
    async def live(self: Any, request: Any) -> Any:
        return self.json({"status": "alive"})

    @app.page("/health/ready")
    async def ready(self: Any, request: Any) -> Any:
        recovered = app.tables.recovery.completed.is_set()
        rebalancing = app.rebalancing
        status = "ready" if recovered and not rebalancing else "not_ready"
        body = {"status": status, "tablesRecovered": recovered, "rebalancing": rebalancing}
        return self.json(body, status=200 if status == "ready" else 503)

    @app.page("/metrics")
    async def prometheus(self: Any, request: Any) -> Any:
        return aioweb.Response(body=generate_latest(), content_type="text/plain", charset="utf-8")

    return app


async def _supervise(app: faust.App, name: str, run: Any) -> None:
    """Run a plain-aiokafka stage; if it fails, crash the worker rather than run half a pipeline."""
    try:
        await run()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.exception("%s failed; stopping the worker", name)
        await app.crash(exc)
