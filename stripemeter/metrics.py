"""Every metric name in one place."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "stripemeter_events_total",
    "Usage events read from usage.events, by outcome (counted, duplicate, late, rejected)",
    ["outcome"],
)
INTAKE_MESSAGES = Counter("stripemeter_intake_messages_total", "Messages read from usage.events")
DELTAS = Counter("stripemeter_deltas_total", "Counter change records published to usage.deltas")
COUNTING_BATCH_SECONDS = Histogram(
    "stripemeter_counting_batch_seconds",
    "Time to count one keyed message",
    buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 2),
)
WORKER_PARTITIONS = Gauge("stripemeter_worker_assigned_partitions", "Partitions assigned to this worker")
SINK_SKIPPED = Counter(
    "stripemeter_sink_skipped_records_total", "Unreadable records the PostgreSQL sink skipped", ["topic"]
)
INGEST_EVENTS = Counter(
    "stripemeter_ingest_events_total", "Events received by POST /v1/events/ingest, by status", ["status"]
)
