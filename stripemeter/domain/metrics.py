"""Every metric name in one place.

Two registries. prometheus_client's default one is public: every process serves it on its
``/metrics``, which anyone who can reach the API or a worker may read, so no series in it names a
tenant, a customer or a metric, or tells whether an API key id exists. ``OPERATOR`` holds the series
that do; only the API's operator listener serves it (``api/operator_metrics.py``), with the public ones.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OPERATOR = CollectorRegistry()  # operator data: served on the operator listener only

SHORT_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5)  # buckets for steps that should take well under 1 s

EVENTS = Counter(
    "stripemeter_events_total",
    "Usage events read from usage.events, by outcome (counted, duplicate, late, rejected)",
    ["outcome"],
)
INTAKE_MESSAGES = Counter("stripemeter_intake_messages_total", "Messages read from usage.events")
KEYS_REUSED = Counter(
    "stripemeter_idempotency_keys_reused_total",
    "Events whose idempotency key was first used by another customer of the tenant, as the meter saw"
    " it in one partition (counted: a key is one event per tenant and customer)",
)
POISON_MESSAGES = Counter(
    "stripemeter_poison_messages_total",
    "Messages whose handling raised (an input no rule foresaw): dead-lettered with processing_failed,"
    " by stage",
    ["stage"],
)
DELTAS = Counter("stripemeter_deltas_total", "Counter change records published to usage.deltas")
COUNTING_BATCH_SECONDS = Histogram(
    "stripemeter_counting_batch_seconds",
    "Time to count one keyed message",
    buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 2),
)
STAGE_RESTARTS = Counter(
    "stripemeter_worker_stage_restarts_total",
    "Times the worker restarted a stage's child process (intake, sink) after it exited",
    ["stage"],
)
WORKER_PARTITIONS = Gauge("stripemeter_worker_assigned_partitions", "Partitions assigned to this worker")
WORKER_REVOCATIONS = Counter(
    "stripemeter_worker_revocations_total",
    "Rebalances that revoked this worker's partitions (a worker joined, left or timed out)",
)
STALE_KEYED_MESSAGES = Counter(
    "stripemeter_meter_stale_messages_total",
    "Keyed messages the meter left uncounted because a rebalance began while they waited for the"
    " mappings (the partition's next owner reads them again)",
)
STANDBY_PARTITIONS = Gauge(
    "stripemeter_standby_partitions", "Changelog partitions this worker keeps a standby copy of"
)
STANDBY_RECORDS = Counter(
    "stripemeter_standby_records_total", "Changelog records applied to this worker's standby copies"
)
STANDBY_LAG = Gauge(
    "stripemeter_standby_lag_records", "Changelog records not yet in this worker's standby copies"
)
CHECKPOINT_SECONDS = Histogram(
    "stripemeter_checkpoint_seconds",
    "Time for one checkpoint: changelogs, ledger and deltas published and acknowledged, input acked",
    buckets=SHORT_SECONDS,
)
SINK_BATCH_SECONDS = Histogram(
    "stripemeter_sink_batch_seconds",
    "Time for the PostgreSQL sink to write one batch (one transaction)",
    buckets=SHORT_SECONDS,
)
SINK_RECORDS = Counter(
    "stripemeter_sink_records_total", "Records the PostgreSQL sink wrote or skipped, by topic", ["topic"]
)
SINK_SKIPPED = Counter(
    "stripemeter_sink_skipped_records_total", "Unreadable records the PostgreSQL sink skipped", ["topic"]
)
SINK_OFFSETS_LOST = Counter(
    "stripemeter_sink_offsets_lost_total",
    "Offsets retention removed from a topic before the PostgreSQL sink wrote them (their rows are missing)",
    ["topic"],
)
SINK_OFFSETS_AHEAD = Counter(
    "stripemeter_sink_offsets_ahead_total",
    "Partitions whose offset stored in PostgreSQL is past the topic's end (another cluster, a recreated"
    " topic)",
    ["topic"],
)
LEDGER_REWRITES = Counter(
    "stripemeter_sink_ledger_rewrites_total",
    "Sink batches with ledger rows already written (read again after a crash), inserted skipping those",
)
LEDGER_PARTITIONS = Counter(
    "stripemeter_ledger_partitions_total",
    "Ledger partitions created ahead, dropped past retention, or emptied (the default partition's rows"
    " past retention)",
    ["action"],
)
INGEST_EVENTS = Counter(
    "stripemeter_ingest_events_total", "Events received by POST /v1/events/ingest, by status", ["status"]
)
API_AUTH_FAILURES = Counter(
    "stripemeter_api_auth_failures_total",
    "Requests refused 401 by the API, by reason (missing, malformed, invalid_key: an unknown or revoked"
    " key id and a wrong secret are one reason, so the count does not tell which key ids exist)",
    ["reason"],
)
API_AUTH_THROTTLED = Counter(
    "stripemeter_api_auth_throttled_total",
    "Requests refused 429 because their client spent its failed API-key attempts (no query made)",
)
API_HEAVY_REFUSED = Counter(
    "stripemeter_api_heavy_refused_total",
    "Replays, reconciliation runs and adjustments refused because too many ran at once, by the cap"
    " that was full (tenant, total)",
    ["cap"],
)
API_KEY_LOOKUPS = Counter(
    "stripemeter_api_key_lookups_total",
    "API-key lookups in PostgreSQL, by result (found, not_found)",
    ["result"],
    registry=OPERATOR,  # found vs not_found would tell a caller which made-up key ids exist
)
API_KEY_CACHE_ENTRIES = Gauge(
    "stripemeter_api_key_cache_entries",
    "API-key ids the API remembers, by kind (found: valid keys; missing: ids that found nothing)",
    ["kind"],
    registry=OPERATOR,
)
STRIPE_PUSHES = Counter(
    "stripemeter_stripe_pushes_total",
    "Meter events sent to Stripe, by outcome (delivered, refused, refused_for_now, idempotency_conflict,"
    " server_error, unreachable, rate_limited, transient)",
    ["outcome"],
)
STRIPE_REFUSALS = Counter(
    "stripemeter_stripe_refusals_total",
    "Meter events Stripe refused, by kind (permanent: parked; temporary: sent again later; expired: refused"
    " for now for over an hour, parked) and Stripe's error code (none: it gave none)",
    ["kind", "code"],
)
STRIPE_LAST_HOURS_FULL = Counter(
    "stripemeter_stripe_last_hours_out_of_seconds_total",
    "Changes of a last counter hour that found no second left in the hour to stamp a newer meter event"
    " with: the counter is parked",
)
STRIPE_BACKFILLED = Counter(
    "stripemeter_stripe_backfilled_counters_total",
    "Push rows the writer made or brought up to date from the counters table (their deltas were not read)",
)
STRIPE_PUSH_SECONDS = Histogram(
    "stripemeter_stripe_push_seconds",
    "Latency of one meter event call",
    buckets=SHORT_SECONDS,
)
STRIPE_SEND_REQUESTS = Counter(
    "stripemeter_stripe_send_requests_total",
    "Requests that carried meter events to Stripe, by API (v1: one event each; v2: the meter event stream,"
    " up to 100 each)",
    ["api"],
)
STRIPE_SENT_EVENTS = Counter(
    "stripemeter_stripe_sent_events_total",
    "Meter events sent to Stripe (retries included), by API (v1, v2)",
    ["api"],
)
STRIPE_STREAM_SESSIONS = Counter(
    "stripemeter_stripe_stream_sessions_total",
    "Meter event stream sessions created (each token lives 15 minutes; replaced 2 minutes before it expires,"
    " or when Stripe says it has)",
)
STRIPE_PARKED = Gauge("stripemeter_stripe_parked_counters", "Counters parked after a permanent Stripe error")
STRIPE_IDEMPOTENCY_CONFLICTS = Counter(
    "stripemeter_stripe_idempotency_conflicts_total",
    "Meter event requests Stripe answered idempotency_error (a key first used with other parameters):"
    " the counter is parked, never retried blindly",
)
STRIPE_ERROR_REPORTS = Counter(
    "stripemeter_stripe_error_reports_total",
    "Meter events Stripe accepted and then reported as not counted (v1.billing.meter.error_report_triggered),"
    " by Stripe's error code",
    ["code"],
)
RECONCILIATION_LABELS = ["tenant", "metric", "customer", "period"]
RECONCILIATION_DIFF_PCT = Gauge(
    "reconciliation_diff_pct",
    "Relative drift between local totals and Stripe (0.01 = 1 %) at the latest reconciliation, per item"
    " not at parity (the worst STRIPEMETER_OPERATOR_METRICS_MAX_SERIES items)",
    RECONCILIATION_LABELS,
    registry=OPERATOR,
)
RECONCILIATION_DIFF_ABS = Gauge(
    "reconciliation_diff_abs",
    "Absolute drift between local totals and Stripe, in whole units, at the latest reconciliation, per"
    " item not at parity (the worst STRIPEMETER_OPERATOR_METRICS_MAX_SERIES items)",
    RECONCILIATION_LABELS,
    registry=OPERATOR,
)
OPERATOR_SERIES_LEFT_OUT = Gauge(
    "stripemeter_operator_series_left_out",
    "Items not at parity a drift gauge does not show, by gauge: beyond"
    " STRIPEMETER_OPERATOR_METRICS_MAX_SERIES (the gauge keeps the worst)",
    ["family"],
    registry=OPERATOR,
)
RECONCILIATION_OFF_PARITY = Gauge(
    "stripemeter_reconciliation_items_off_parity",
    "Items (tenant, metric, customer, period) whose latest reconciliation is not at parity, by status"
    " (within_epsilon, drift); the operator listener's drift gauges name them",
    ["status"],
)
RECONCILIATION_RUNS = Counter(
    "stripemeter_reconciliation_runs_total", "Reconciliation runs, by result", ["result"]
)
RECONCILIATION_SECONDS = Histogram(
    "stripemeter_reconciliation_seconds",
    "Duration of one reconciliation run",
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900),
)
RECONCILIATION_ITEMS = Counter(
    "stripemeter_reconciliation_items_total", "Items checked by reconciliation, by status", ["status"]
)
RECONCILIATION_ITEM_CHOICES = Counter(
    "stripemeter_reconciliation_item_choices_total",
    "Items a scheduled reconciliation pass considered, by why it read Stripe for them (new, unproven,"
    " lagging, changed, sweep, closing) or unchanged (not read: its proof stands)",
    ["reason"],
)
RECONCILIATION_ADJUSTMENTS = Counter(
    "stripemeter_reconciliation_adjustments_total", "Aligning corrections sent to Stripe by reconciliation"
)
CORRECTIONS = Counter(
    "stripemeter_counter_corrections_total",
    "Replay and adjustment corrections applied to counters by the meter",
)
MAPPING_CHANGES = Counter(
    "stripemeter_mapping_changes_total",
    "Metric mapping changes saved and announced to every keyed partition by the API",
)
POLICY_UPDATES = Counter(
    "stripemeter_policy_updates_total",
    "Metric mapping changes applied by the meter (one per keyed partition and change)",
)
REAGGREGATED_COUNTERS = Counter(
    "stripemeter_counters_reaggregated_total",
    "Counters re-expressed under a metric's new aggregation by the meter, by result (reaggregated, or"
    " impossible: the counter keeps its value)",
    ["result"],
)
REPLAYS = Counter("stripemeter_replays_total", "Replays, by mode and result", ["mode", "result"])
REPLAY_SECONDS = Histogram(
    "stripemeter_replay_seconds", "Duration of one replay", ["mode"], buckets=(0.05, 0.1, 0.5, 1, 5, 30, 120)
)
CONSUMER_LAG_MESSAGES = Gauge(
    "stripemeter_consumer_lag_messages",
    "Records not yet consumed (end offset minus committed offset), per consumer group and partition",
    ["group", "topic", "partition"],
)
CONSUMER_LAG_SECONDS = Gauge(
    "stripemeter_consumer_lag_seconds",
    "Age of the oldest record not yet consumed (0 when caught up), per consumer group and partition",
    ["group", "topic", "partition"],
)
STRIPE_ERRORS = Counter(
    "stripemeter_stripe_errors_total",
    "Errors from Stripe calls, by error class (RateLimitError, APIError, APIConnectionError, ...)",
    ["type"],
)
ROCKSDB_MEMORY = Gauge(
    "stripemeter_rocksdb_memory_bytes",
    "RocksDB memory of this worker's tables, by kind: block_cache (shared; index and filter blocks and "
    "memtables are charged to it), memtables, table_readers (outside the cache), pinned",
    ["kind"],
)
PYTHON_BLOCKS = Gauge(
    "stripemeter_python_allocated_blocks",
    "Memory blocks held by Python's allocator in this process (sys.getallocatedblocks; a leak grows it)",
)
HEAP_MEMORY = Gauge(
    "stripemeter_heap_bytes",
    "The C heap of this process (glibc), by kind: in_use, free (held but unused), mapped (big pieces)",
    ["kind"],
)
GC_SECONDS = Histogram(
    "stripemeter_gc_full_collection_seconds",
    "Pause of each full garbage collection (run on a timer: see streams/memory_tuning.py)",
    buckets=SHORT_SECONDS,
)
GC_COLLECTED = Counter(
    "stripemeter_gc_collected_objects_total",
    "Unreachable objects (reference cycles) found by full collections",
)
DEDUPE_EXPIRED = Counter(
    "stripemeter_dedupe_expired_total",
    "Dedupe entries removed because their event time fell behind the lateness window plus the margin",
)
INVOICE_CHECKS = Counter(
    "stripemeter_invoice_checks_total",
    "Checks of Stripe invoices by the pre-invoice guard, by the state each left its invoice in",
    ["state"],
)
INVOICES_HELD = Counter(
    "stripemeter_invoices_held_total", "Draft invoices the guard held (auto_advance=false) until proven"
)
INVOICES_RELEASED = Counter(
    "stripemeter_invoices_released_total",
    "Draft invoices the guard released, by reason (proven, or deadline: unproven, by policy)",
    ["reason"],
)
INVOICES = Gauge("stripemeter_invoices", "Invoices the guard knows, by guard state", ["state"])
INVOICE_HELD_SECONDS = Gauge(
    "stripemeter_invoice_held_seconds",
    "How long each held draft invoice has been held, per invoice (the oldest"
    " STRIPEMETER_OPERATOR_METRICS_MAX_SERIES)",
    ["tenant", "invoice", "customer", "reason"],
    registry=OPERATOR,
)
INVOICE_UNBILLED_UNITS = Counter(
    "stripemeter_invoice_unbilled_units_total",
    "Units counted for a period after its invoice was finalized without them",
)
RECONCILIATION_LAST_PASS = Gauge(
    "stripemeter_reconciliation_last_pass_timestamp_seconds",
    "Unix time the last scheduled reconciliation pass this worker ran ended without an error (0: none"
    " since it started; one worker a pass runs it)",
)
RECONCILIATION_INTERVAL = Gauge(
    "stripemeter_reconciliation_interval_seconds",
    "STRIPEMETER_RECONCILE_INTERVAL_SECONDS of this worker's reconciliation schedule (0: no schedule: the"
    " interval is 0 or Stripe is not configured)",
)
MEMORY_WORKING_SET = Gauge(
    "stripemeter_memory_working_set_bytes",
    "Memory of this process's container (its cgroup, every process in it): usage less the inactive file"
    " cache, what the kernel and the kubelet weigh against the limit (0: no cgroup memory accounting)",
)
MEMORY_LIMIT = Gauge(
    "stripemeter_memory_limit_bytes",
    "The memory limit of this process's container (the lowest memory.max of its cgroup and those above;"
    " 0: no limit)",
)
DATA_DIR_FREE = Gauge(
    "stripemeter_data_dir_free_bytes",
    "Bytes free to the worker on the filesystem holding its table state (STRIPEMETER_STATE_DIR)",
)
DATA_DIR_SIZE = Gauge(
    "stripemeter_data_dir_size_bytes",
    "Size of the filesystem holding the worker's table state (STRIPEMETER_STATE_DIR)",
)
