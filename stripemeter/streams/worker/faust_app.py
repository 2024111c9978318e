"""The worker's Faust app, its keyed input topic and its tables (RocksDB sized for a small worker)."""

from __future__ import annotations

from pathlib import Path

import faust
from faust.types import TopicT

from stripemeter.adapters.kafka import fetch_wait, rocksdb_memory
from stripemeter.adapters.kafka.bulk_restore import restoring_table_manager
from stripemeter.adapters.kafka.changelog_state import ChangelogState, prepare_table_dir
from stripemeter.adapters.kafka.client_auth import faust_broker, faust_credentials
from stripemeter.domain.config import (
    DYNAMIC_SESSION_TIMEOUT_SECONDS,
    STATIC_SESSION_TIMEOUT_SECONDS,
    Settings,
)
from stripemeter.schemas.topics import TABLES, TopicNames, topic_specs

# Faust's RocksDB defaults (64 MiB x 3 memtables and a 2 GiB block cache per partition and table)
# are sized for a big box; these keep a worker with 3 tables x a few partitions in a few hundred MiB.
ROCKSDB_OPTIONS = {
    "write_buffer_size": 8 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "target_file_size_base": 16 * 1024 * 1024,
}  # caches and memtables share one budget: see stripemeter/adapters/kafka/rocksdb_memory.py
# Values kept in front of RocksDB for the hot, small tables (see ChangelogState): about 10 MiB each
# when full. Dedupe keys are read once and mostly missing, so remembering them would not pay.
REMEMBERED_VALUES = {"counters": 50_000, "watermarks": 50_000}
# Faust bounds the meter's read-ahead by messages; intake packs keyed messages up to the topic's
# max.message.bytes (4 MiB), so 4096 of them could hold 16 GiB. A byte budget sets the count instead.
KEYED_BUFFER_BYTES = 128 * 1024 * 1024
KEYED_FETCH_BYTES = 8 * 1024 * 1024  # per partition and fetch


def faust_app(settings: Settings) -> faust.App:
    """The app, with RocksDB's shared memory budget installed and the table directory prepared."""
    rocksdb_memory.install(settings.rocksdb_memory_mb)
    settings.worker_data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=faust_broker(settings.kafka),
        broker_credentials=faust_credentials(settings.kafka),
        store=settings.store,
        datadir=str(settings.worker_data_dir),
        topic_partitions=settings.partitions,
        # topics Faust itself creates (its assignor's leader topic); ours are created by `topics create`
        topic_replication_factor=settings.topic_replication_factor,
        web_host=settings.worker_web_host,
        web_bind=settings.worker_web_host,
        web_port=settings.worker_web_port,
        web_enabled=True,  # our /health and /metrics pages (streams/worker/health.py); loopback by default
        # Faust's own pages are off: /table serves table data (counters of every tenant), /router the
        # other workers' addresses, the statistics and graph pages the worker's internals
        web_tables_enabled=False,
        web_router_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_metrics_enabled=False,
        producer_acks=-1,
        consumer_max_fetch_size=KEYED_FETCH_BYTES,
        consumer_auto_offset_reset="earliest",
        # standby copies (STRIPEMETER_STANDBY_REPLICAS) are kept by our own changelog reader
        # (adapters/kafka/standby_copies.py; Faust's could skip a standby's first records): a takeover
        # then reads only the changelog past the copy's persisted offset (times: docs/sizing.md)
        table_standby_replicas=settings.standby_replicas,
        TableManager=restoring_table_manager(settings.kafka),  # changelogs restored in bulk first
        broker_commit_every=10_000,
        broker_commit_interval=0.5,
        broker_session_timeout=session_timeout_seconds(settings),
        # with a stable id (a StatefulSet pod name) a restarted worker gets its partitions back
        # without a rebalance, as long as it returns within the session timeout
        consumer_group_instance_id=settings.group_instance_id or None,
        broker_heartbeat_interval=1.0,
        # a topic missing from the broker's metadata at start (just created, or a broker still loading
        # after a restart) leaves the worker without partitions until the next refresh: 30 s, not 5 min
        consumer_metadata_max_age_ms=30_000,
        stream_buffer_maxsize=keyed_buffer_messages(),
        # Faust would wait for every unacknowledged message before a rebalance or stop completes;
        # ours are acknowledged only by checkpoints, and a message left unacknowledged is simply
        # read again by the next owner (exactly, see streams/checkpoint.py), so do not wait for them.
        stream_wait_empty=False,
        worker_redirect_stdouts=False,
    )
    app.transport = fetch_wait.Transport(app.conf.broker_consumer, app)  # before anything uses it
    prepare_table_dir(Path(app.conf.tabledir), settings.worker_data_dir)
    return app


def keyed_buffer_messages() -> int:
    """How many keyed messages the meter's stream may hold read ahead: the byte budget over the
    largest keyed message."""
    names = TopicNames()
    largest = next(spec.max_message_bytes for spec in topic_specs(names, 1) if spec.name == names.keyed)
    return max(8, KEYED_BUFFER_BYTES // largest)


def session_timeout_seconds(settings: Settings) -> float:
    """The setting, or automatic: long enough for a pod restart with a stable instance id, short without
    (a worker that left for good is noticed by its session running out, or by the rebalance it sent)."""
    if settings.kafka_session_timeout_seconds:
        return settings.kafka_session_timeout_seconds
    return STATIC_SESSION_TIMEOUT_SECONDS if settings.group_instance_id else DYNAMIC_SESSION_TIMEOUT_SECONDS


def keyed_topic(app: faust.App, settings: Settings, names: TopicNames) -> TopicT:
    """The meter's input: intake's re-keyed events, raw bytes."""
    return app.topic(
        names.keyed, value_serializer="raw", key_serializer="raw", partitions=settings.partitions
    )


def table_states(app: faust.App, settings: Settings) -> dict[str, ChangelogState]:
    """The dedupe, counters and watermarks tables, as bulk-written changelog-backed stores."""
    return {
        name: ChangelogState(
            app.Table(
                name, default=None, partitions=settings.partitions, key_type=bytes, options=ROCKSDB_OPTIONS
            ),
            remember=REMEMBERED_VALUES.get(name, 0),
        )
        for name in TABLES
    }
