"""Settings: the environment is read here, once, into one frozen object.

Everything below takes plain arguments; nothing else reads ``os.environ``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from stripemeter.domain.clock import Clock
from stripemeter.domain.errors import Invalid
from stripemeter.domain.kafka_access import SASL_MECHANISMS, SECURITY_PROTOCOLS, KafkaAccess
from stripemeter.domain.policy import MAX_LATENESS_SECONDS


class ConfigError(Invalid, ValueError):
    """A setting is missing or malformed: ``field`` names the variable, ``detail`` says what is wrong;
    the message is ``"{field} {detail}"``."""

    def __init__(self, field: str, detail: str, message: str | None = None) -> None:
        super().__init__(field, detail, message=f"{field} {detail}" if message is None else message)


@dataclass(frozen=True)
class Secret:
    """A string that never shows itself in repr, logs or tracebacks."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('**********')" if self.value else "Secret('')"

    def __str__(self) -> str:
        return repr(self)

    def __bool__(self) -> bool:
        return bool(self.value)


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: str = "PLAINTEXT"  # or SASL_PLAINTEXT, SASL_SSL, SSL (see kafka_access.py)
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: Secret = Secret("")
    kafka_ssl_cafile: str = ""  # empty: the system's CAs
    kafka_ssl_certfile: str = ""  # client certificate and key, for mutual TLS
    kafka_ssl_keyfile: str = ""
    database_url: Secret = Secret("postgresql://stripemeter:stripemeter@127.0.0.1:5433/stripemeter")
    stripe_api_key: Secret = Secret("")
    stripe_api_base: str = ""
    stripe_webhook_secret: Secret = Secret("")  # signs Stripe's event deliveries to POST /v1/stripe/webhook
    topic_prefix: str = ""
    app_id: str = "stripemeter"
    partitions: int = 4
    api_host: str = "127.0.0.1"
    api_port: int = 3000
    # the API's operator listener: /metrics with the series that name tenants and customers (0: off)
    operator_metrics_host: str = "127.0.0.1"
    operator_metrics_port: int = 9464
    operator_metrics_max_series: int = 1000  # label sets per detailed family (the worst items kept)
    worker_web_port: int = 6066
    worker_web_host: str = "127.0.0.1"  # 0.0.0.0 in containers, for probes and Prometheus
    group_instance_id: str = ""  # static group membership (e.g. the pod name); empty: dynamic
    # how long the group waits for a silent worker before moving its partitions; 0: 45 s with a group
    # instance id (a restarted pod comes back to its partitions without a rebalance), 10 s without
    kafka_session_timeout_seconds: float = 0.0
    # every topic's replication factor and min.insync.replicas: right for three brokers; the local
    # stack (one broker) runs with 1 and 1
    topic_replication_factor: int = 3
    topic_min_insync_replicas: int = 2
    emulator_port: int = 12111  # the local stack's Stripe emulator, when no Stripe is configured
    state_dir: Path = Path(".stack")
    cache_dir: Path = Path("~/.cache/stripemeter")
    kafka_version: str = "4.3.1"
    kafka_heap: str = "512m"
    store: str = "rocksdb://"
    rocksdb_memory_mb: int = 192  # block cache + memtables of all the worker's tables together
    # copies of each table partition kept current on other workers (adapters/kafka/standby_copies.py);
    # 0 while workers of a release without exact copies share the group (docs/upgrades.md)
    standby_replicas: int = 1
    lateness_seconds: int = 48 * 3600
    stripe_calls_per_second: float = 20.0  # test mode allows 25 operations/s
    # which API carries meter events: v1 (one a request), v2 (the meter event stream, up to 100 a
    # request) or auto (v1 while a round needs at most half the calls budget, else v2; core/send_api.py)
    stripe_api: str = "auto"
    stripe_stream_events_per_second: float = 10_000.0  # v2 stream events a second, besides the calls budget
    log_level: str = "INFO"
    log_format: str = "text"  # or "json": one JSON object per line (time, level, logger, message, exc_info)
    reconcile_interval_seconds: float = 900.0  # 0 turns the scheduled runs off
    reconcile_epsilon: float = 0.005
    reconcile_settle_seconds: float = 300.0  # younger changes are in flight, not drift
    # a delivered push Stripe's summaries do not show is taken for Stripe's lag this long, then missing
    reconcile_lag_cap_seconds: float = 3600.0
    # a scheduled pass reads Stripe for items that changed, and every item at least once per sweep and
    # once in the closing window before its period ends (docs/reconciliation.md)
    reconcile_sweep_seconds: float = 86400.0
    reconcile_closing_seconds: float = 21600.0
    auth_enabled: bool = True  # API keys on /v1; off only for purely local use
    rate_limit_per_second: float = 50.0  # per tenant, on /v1
    auth_failures_per_minute: float = 30.0  # failed API-key attempts per client, at once or per minute
    api_proxy_hops: int = 0  # reverse proxies in front of the API that append to X-Forwarded-For
    ready_max_lag_seconds: float = 300.0  # API readiness says degraded when a group lags more
    replay_max_window_seconds: int = 35 * 24 * 3600  # Stripe takes meter events up to 35 days old
    # Stripe finalises a period's invoice an hour after creating it, or up to 72 h later while its
    # invoice.created webhooks fail: until then a closed period's usage can still change the invoice
    invoice_grace_seconds: int = 72 * 3600
    # the ledger keeps events of the last this many days (by event time; whole day partitions dropped):
    # Stripe's 35 days of backdating plus the 72 h invoice grace, and a week to notice and replay
    ledger_retention_days: int = 45
    apply_wait_seconds: float = 30.0  # a replay apply or an adjustment waits this long to show
    db_pool_size: int = 8  # the API's PostgreSQL connections (its readiness probe has one of its own)
    db_pool_timeout_seconds: float = 5.0  # a request waits this long for one, then 503 with Retry-After
    db_statement_timeout_seconds: float = 30.0  # on the API's connections; 0: none
    heavy_requests_per_tenant: int = 2  # replays, reconciliation runs, adjustments at once per tenant
    heavy_requests_total: int = 4  # the same for all tenants together: the rest of the pool is for reads
    stripe_timeout_seconds: float = 10.0  # each Stripe call, connect to last byte
    # which Stripe customers a tenant's own key may bind: any no other tenant binds (first-binding), or
    # only those whose metadata names the tenant (stripe-metadata); see services/customer_owners.py
    customer_ownership: str = "first-binding"
    clock_offset_seconds: float = 0.0  # shifts every process's "now" alike (tests, demos); see clock.py
    # the pre-invoice guard (services/invoice_guard.py): hold Stripe's draft invoices until proven
    invoice_guard: bool = True
    invoice_release: str = "finalize"  # a proven draft: finalize it now, or hand it back ("schedule")
    invoice_unproven: str = "hold"  # a draft still unproven at its deadline: keep holding, or "release"
    invoice_deadline_margin_seconds: float = 600.0  # the deadline: automatically_finalizes_at minus this
    invoice_check_seconds: float = 30.0  # how often a held draft is proven again
    # usage counted for a finalized invoice's period after it: reported always; carried to the
    # customer's next invoice as an invoice item when on
    invoice_carry_unbilled: bool = False
    invoice_unbilled_check_seconds: float = 300.0  # how often a finalized period's local total is compared
    # the internal records' format written (schemas/versions.py): 1, the previous release's, while
    # workers of it still run in a rolling upgrade; 2 otherwise (docs/upgrades.md)
    record_write_version: int = 2

    @property
    def clock(self) -> Clock:
        return Clock(self.clock_offset_seconds)

    @property
    def kafka(self) -> KafkaAccess:
        """How every Kafka client of the project connects."""
        return KafkaAccess.of(self)

    @property
    def worker_data_dir(self) -> Path:
        return self.state_dir / "worker" / self.app_id

    def with_overrides(self, **changes: Any) -> Settings:
        """``dataclasses.replace``: it refuses a name that is not a field (each value is the caller's)."""
        return replace(self, **changes)


# a pod restart (stop, schedule, start, table open) fits in 45 s; a dead worker's partitions move after it
STATIC_SESSION_TIMEOUT_SECONDS = 45.0
DYNAMIC_SESSION_TIMEOUT_SECONDS = 10.0
# the broker's default group.min.session.timeout.ms and group.max.session.timeout.ms
MIN_SESSION_TIMEOUT_SECONDS = 6.0
MAX_SESSION_TIMEOUT_SECONDS = 1800.0


# environment variable -> Settings field
ENV_VARS: dict[str, str] = {
    "KAFKA_BOOTSTRAP_SERVERS": "kafka_bootstrap_servers",
    "KAFKA_SECURITY_PROTOCOL": "kafka_security_protocol",
    "KAFKA_SASL_MECHANISM": "kafka_sasl_mechanism",
    "KAFKA_SASL_USERNAME": "kafka_sasl_username",
    "KAFKA_SASL_PASSWORD": "kafka_sasl_password",
    "KAFKA_SSL_CAFILE": "kafka_ssl_cafile",
    "KAFKA_SSL_CERTFILE": "kafka_ssl_certfile",
    "KAFKA_SSL_KEYFILE": "kafka_ssl_keyfile",
    "DATABASE_URL": "database_url",
    "STRIPE_API_KEY": "stripe_api_key",
    "STRIPE_API_BASE": "stripe_api_base",
    "STRIPE_WEBHOOK_SECRET": "stripe_webhook_secret",
    "STRIPEMETER_TOPIC_PREFIX": "topic_prefix",
    "STRIPEMETER_APP_ID": "app_id",
    "STRIPEMETER_PARTITIONS": "partitions",
    "STRIPEMETER_API_HOST": "api_host",
    "STRIPEMETER_API_PORT": "api_port",
    "STRIPEMETER_OPERATOR_METRICS_HOST": "operator_metrics_host",
    "STRIPEMETER_OPERATOR_METRICS_PORT": "operator_metrics_port",
    "STRIPEMETER_OPERATOR_METRICS_MAX_SERIES": "operator_metrics_max_series",
    "STRIPEMETER_WORKER_WEB_PORT": "worker_web_port",
    "STRIPEMETER_WORKER_WEB_HOST": "worker_web_host",
    "STRIPEMETER_EMULATOR_PORT": "emulator_port",
    "STRIPEMETER_GROUP_INSTANCE_ID": "group_instance_id",
    "STRIPEMETER_KAFKA_SESSION_TIMEOUT_SECONDS": "kafka_session_timeout_seconds",
    "STRIPEMETER_TOPIC_REPLICATION_FACTOR": "topic_replication_factor",
    "STRIPEMETER_TOPIC_MIN_INSYNC_REPLICAS": "topic_min_insync_replicas",
    "STRIPEMETER_STATE_DIR": "state_dir",
    "STRIPEMETER_CACHE_DIR": "cache_dir",
    "STRIPEMETER_KAFKA_VERSION": "kafka_version",
    "STRIPEMETER_KAFKA_HEAP": "kafka_heap",
    "STRIPEMETER_STORE": "store",
    "STRIPEMETER_ROCKSDB_MEMORY_MB": "rocksdb_memory_mb",
    "STRIPEMETER_STANDBY_REPLICAS": "standby_replicas",
    "STRIPEMETER_LATENESS_SECONDS": "lateness_seconds",
    "STRIPEMETER_STRIPE_CALLS_PER_SECOND": "stripe_calls_per_second",
    "STRIPEMETER_STRIPE_API": "stripe_api",
    "STRIPEMETER_STRIPE_STREAM_EVENTS_PER_SECOND": "stripe_stream_events_per_second",
    "STRIPEMETER_LOG_LEVEL": "log_level",
    "STRIPEMETER_LOG_FORMAT": "log_format",
    "STRIPEMETER_RECONCILE_INTERVAL_SECONDS": "reconcile_interval_seconds",
    "STRIPEMETER_RECONCILE_EPSILON": "reconcile_epsilon",
    "STRIPEMETER_RECONCILE_SETTLE_SECONDS": "reconcile_settle_seconds",
    "STRIPEMETER_RECONCILE_LAG_CAP_SECONDS": "reconcile_lag_cap_seconds",
    "STRIPEMETER_RECONCILE_SWEEP_SECONDS": "reconcile_sweep_seconds",
    "STRIPEMETER_RECONCILE_CLOSING_SECONDS": "reconcile_closing_seconds",
    "STRIPEMETER_REPLAY_MAX_WINDOW_SECONDS": "replay_max_window_seconds",
    "STRIPEMETER_READY_MAX_LAG_SECONDS": "ready_max_lag_seconds",
    "STRIPEMETER_AUTH": "auth_enabled",
    "STRIPEMETER_RATE_LIMIT_PER_SECOND": "rate_limit_per_second",
    "STRIPEMETER_AUTH_FAILURES_PER_MINUTE": "auth_failures_per_minute",
    "STRIPEMETER_API_PROXY_HOPS": "api_proxy_hops",
    "STRIPEMETER_INVOICE_GRACE_SECONDS": "invoice_grace_seconds",
    "STRIPEMETER_LEDGER_RETENTION_DAYS": "ledger_retention_days",
    "STRIPEMETER_APPLY_WAIT_SECONDS": "apply_wait_seconds",
    "STRIPEMETER_DB_POOL_SIZE": "db_pool_size",
    "STRIPEMETER_DB_POOL_TIMEOUT_SECONDS": "db_pool_timeout_seconds",
    "STRIPEMETER_DB_STATEMENT_TIMEOUT_SECONDS": "db_statement_timeout_seconds",
    "STRIPEMETER_HEAVY_REQUESTS_PER_TENANT": "heavy_requests_per_tenant",
    "STRIPEMETER_HEAVY_REQUESTS_TOTAL": "heavy_requests_total",
    "STRIPEMETER_STRIPE_TIMEOUT_SECONDS": "stripe_timeout_seconds",
    "STRIPEMETER_CUSTOMER_OWNERSHIP": "customer_ownership",
    "STRIPEMETER_CLOCK_OFFSET_SECONDS": "clock_offset_seconds",
    "STRIPEMETER_INVOICE_GUARD": "invoice_guard",
    "STRIPEMETER_INVOICE_RELEASE": "invoice_release",
    "STRIPEMETER_INVOICE_UNPROVEN": "invoice_unproven",
    "STRIPEMETER_INVOICE_DEADLINE_MARGIN_SECONDS": "invoice_deadline_margin_seconds",
    "STRIPEMETER_INVOICE_CHECK_SECONDS": "invoice_check_seconds",
    "STRIPEMETER_INVOICE_CARRY_UNBILLED": "invoice_carry_unbilled",
    "STRIPEMETER_INVOICE_UNBILLED_CHECK_SECONDS": "invoice_unbilled_check_seconds",
    "STRIPEMETER_RECORD_WRITE_VERSION": "record_write_version",
}


# how a boolean setting may be spelled (any case); anything else stops the process
TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
# settings that take one of a few values (compared without case; stored as spelled here)
CHOICES: dict[str, tuple[str, ...]] = {
    "STRIPEMETER_LOG_LEVEL": ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
    "STRIPEMETER_LOG_FORMAT": ("text", "json"),
    "STRIPEMETER_STORE": ("rocksdb://",),  # the tables are RocksDB stores (adapters/kafka/changelog_state.py)
    "STRIPEMETER_CUSTOMER_OWNERSHIP": ("first-binding", "stripe-metadata"),
    "STRIPEMETER_INVOICE_RELEASE": ("finalize", "schedule"),
    "STRIPEMETER_INVOICE_UNPROVEN": ("hold", "release"),
    "STRIPEMETER_STRIPE_API": ("v1", "v2", "auto"),
}


def _convert(env_name: str, raw: str, default: object) -> object:
    if env_name in CHOICES:
        return _choice(env_name, raw)
    if isinstance(default, bool):
        return _boolean(env_name, raw)
    try:
        if isinstance(default, Secret):
            return Secret(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, Path):
            return Path(raw)
    except ValueError as exc:
        kind = type(default).__name__
        raise ConfigError(
            env_name, f"{raw!r} is not a valid {kind}", f"{env_name}={raw!r} is not a valid {kind}"
        ) from exc
    return raw


def _boolean(env_name: str, raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    accepted = ", ".join(TRUE_WORDS + FALSE_WORDS)
    raise ConfigError(
        env_name,
        f"{raw!r} is not a boolean ({accepted})",
        f"{env_name}={raw!r} is not a boolean: use {accepted}",
    )


def _choice(env_name: str, raw: str) -> str:
    for choice in CHOICES[env_name]:
        if raw.strip().lower() == choice.lower():
            return choice
    accepted = ", ".join(CHOICES[env_name])
    raise ConfigError(
        env_name, f"{raw!r} is not one of {accepted}", f"{env_name}={raw!r} is not one of {accepted}"
    )


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment and validate them (fail fast, naming the variable)."""
    env = os.environ if environ is None else environ
    defaults = Settings()
    # field name -> value of that field's type (_convert gives each its default's type): a relation
    # between key and value no dict type states, hence Any; replace() refuses names that are not fields
    values: dict[str, Any] = {}
    for env_name, attr in ENV_VARS.items():
        if env_name in env and env[env_name] != "":
            values[attr] = _convert(env_name, env[env_name], getattr(defaults, attr))
    settings = replace(defaults, **values)
    settings = replace(
        settings,
        state_dir=settings.state_dir.expanduser().resolve(),
        cache_dir=settings.cache_dir.expanduser().resolve(),
    )
    _validate(settings)
    return settings


def _validate(settings: Settings) -> None:
    if settings.partitions < 1:
        raise ConfigError("STRIPEMETER_PARTITIONS", "must be at least 1")
    if not settings.kafka_bootstrap_servers:
        raise ConfigError("KAFKA_BOOTSTRAP_SERVERS", "must not be empty")
    _validate_kafka(settings)
    _validate_replication(settings)
    if not settings.database_url.value.startswith(("postgresql://", "postgres://")):
        raise ConfigError("DATABASE_URL", "must be a postgresql:// URL")
    if not 0 <= settings.lateness_seconds <= MAX_LATENESS_SECONDS:
        raise ConfigError(
            "STRIPEMETER_LATENESS_SECONDS",
            f"must be from 0 to {MAX_LATENESS_SECONDS} (35 days, the oldest usage Stripe takes)",
        )
    if not 0 <= settings.standby_replicas <= 3:
        raise ConfigError("STRIPEMETER_STANDBY_REPLICAS", "must be from 0 to 3")
    if settings.ledger_retention_days < 1:
        raise ConfigError("STRIPEMETER_LEDGER_RETENTION_DAYS", "must be at least 1")
    if not 0 <= settings.reconcile_epsilon < 1:
        raise ConfigError("STRIPEMETER_RECONCILE_EPSILON", "must be in [0, 1)")
    if settings.stripe_calls_per_second <= 0:
        raise ConfigError("STRIPEMETER_STRIPE_CALLS_PER_SECOND", "must be positive")
    if settings.stripe_stream_events_per_second < 1:
        raise ConfigError("STRIPEMETER_STRIPE_STREAM_EVENTS_PER_SECOND", "must be at least 1")
    if settings.auth_failures_per_minute <= 0:
        raise ConfigError("STRIPEMETER_AUTH_FAILURES_PER_MINUTE", "must be positive")
    if settings.api_proxy_hops < 0:
        raise ConfigError("STRIPEMETER_API_PROXY_HOPS", "must not be negative")
    if settings.operator_metrics_max_series < 1:
        raise ConfigError("STRIPEMETER_OPERATOR_METRICS_MAX_SERIES", "must be at least 1")
    if settings.operator_metrics_port == settings.api_port:  # 0.0.0.0 and 127.0.0.1 collide too
        raise ConfigError("STRIPEMETER_OPERATOR_METRICS_PORT", "must differ from STRIPEMETER_API_PORT")
    if not settings.reconcile_lag_cap_seconds > 0:
        raise ConfigError("STRIPEMETER_RECONCILE_LAG_CAP_SECONDS", "must be positive")
    if not settings.reconcile_sweep_seconds > 0:
        raise ConfigError("STRIPEMETER_RECONCILE_SWEEP_SECONDS", "must be positive")
    if not 0 <= settings.reconcile_closing_seconds <= 31 * 86400:
        raise ConfigError("STRIPEMETER_RECONCILE_CLOSING_SECONDS", "must be from 0 to 2678400 (31 days)")
    for env_name in ("STRIPEMETER_INVOICE_CHECK_SECONDS", "STRIPEMETER_INVOICE_UNBILLED_CHECK_SECONDS"):
        if not getattr(settings, ENV_VARS[env_name]) > 0:
            raise ConfigError(env_name, "must be positive")
    if not 0 <= settings.invoice_deadline_margin_seconds <= 72 * 3600:
        raise ConfigError("STRIPEMETER_INVOICE_DEADLINE_MARGIN_SECONDS", "must be from 0 to 259200 (72 h)")
    if settings.record_write_version not in (1, 2):
        raise ConfigError(
            "STRIPEMETER_RECORD_WRITE_VERSION",
            "must be 2, or 1 (the previous release's format) during a rolling upgrade",
        )
    optional = {"operator_metrics_port"}  # 0: that listener is off
    _validate_capacity(settings)
    for f in fields(settings):
        value = getattr(settings, f.name)
        if f.name.endswith("_port") and not (0 < value < 65536 or (f.name in optional and value == 0)):
            raise ConfigError(f.name, "must be a TCP port")


MAX_STATEMENT_TIMEOUT_SECONDS = 2_147_483  # statement_timeout is a 32-bit count of milliseconds


def _validate_capacity(settings: Settings) -> None:
    """The pool, its wait and statement limits, the heavy-request caps, the Stripe timeout."""
    if settings.db_pool_size < 2:
        raise ConfigError("STRIPEMETER_DB_POOL_SIZE", "must be at least 2")
    if not settings.db_pool_timeout_seconds > 0:
        raise ConfigError("STRIPEMETER_DB_POOL_TIMEOUT_SECONDS", "must be positive")
    if not 0 <= settings.db_statement_timeout_seconds <= MAX_STATEMENT_TIMEOUT_SECONDS:
        raise ConfigError(
            "STRIPEMETER_DB_STATEMENT_TIMEOUT_SECONDS",
            f"must be from 0 (none) to {MAX_STATEMENT_TIMEOUT_SECONDS} (PostgreSQL's limit)",
        )
    if settings.heavy_requests_per_tenant < 1:
        raise ConfigError("STRIPEMETER_HEAVY_REQUESTS_PER_TENANT", "must be at least 1")
    if not 1 <= settings.heavy_requests_total < settings.db_pool_size:
        raise ConfigError(
            "STRIPEMETER_HEAVY_REQUESTS_TOTAL",
            f"must be at least 1 and below STRIPEMETER_DB_POOL_SIZE ({settings.db_pool_size}):"
            " reads need connections too",
        )
    if not settings.stripe_timeout_seconds > 0:
        raise ConfigError("STRIPEMETER_STRIPE_TIMEOUT_SECONDS", "must be positive")


def _validate_replication(settings: Settings) -> None:
    if settings.topic_replication_factor < 1:
        raise ConfigError("STRIPEMETER_TOPIC_REPLICATION_FACTOR", "must be at least 1")
    if not 1 <= settings.topic_min_insync_replicas <= settings.topic_replication_factor:
        raise ConfigError(
            "STRIPEMETER_TOPIC_MIN_INSYNC_REPLICAS",
            f"must be from 1 to STRIPEMETER_TOPIC_REPLICATION_FACTOR ({settings.topic_replication_factor}):"
            " more in-sync replicas than replicas would refuse every write",
        )
    timeout = settings.kafka_session_timeout_seconds
    if timeout and not MIN_SESSION_TIMEOUT_SECONDS <= timeout <= MAX_SESSION_TIMEOUT_SECONDS:
        raise ConfigError(
            "STRIPEMETER_KAFKA_SESSION_TIMEOUT_SECONDS",
            f"must be 0 (automatic) or from {MIN_SESSION_TIMEOUT_SECONDS:g} to"
            f" {MAX_SESSION_TIMEOUT_SECONDS:g} (the broker's default group session bounds)",
        )


def _validate_kafka(settings: Settings) -> None:
    if settings.kafka_security_protocol not in SECURITY_PROTOCOLS:
        raise ConfigError("KAFKA_SECURITY_PROTOCOL", f"must be one of {', '.join(SECURITY_PROTOCOLS)}")
    if settings.kafka_sasl_mechanism not in SASL_MECHANISMS:
        raise ConfigError("KAFKA_SASL_MECHANISM", f"must be one of {', '.join(SASL_MECHANISMS)}")
    if settings.kafka.sasl:
        if not settings.kafka_sasl_username:
            raise ConfigError("KAFKA_SASL_USERNAME", f"must be set with {settings.kafka_security_protocol}")
        if not settings.kafka_sasl_password:
            raise ConfigError("KAFKA_SASL_PASSWORD", f"must be set with {settings.kafka_security_protocol}")
    if bool(settings.kafka_ssl_certfile) != bool(settings.kafka_ssl_keyfile):
        missing = "KAFKA_SSL_KEYFILE" if settings.kafka_ssl_certfile else "KAFKA_SSL_CERTFILE"
        raise ConfigError(missing, "must be set too: mutual TLS needs both a certificate and its key")
    for env_name, path in (
        ("KAFKA_SSL_CAFILE", settings.kafka_ssl_cafile),
        ("KAFKA_SSL_CERTFILE", settings.kafka_ssl_certfile),
        ("KAFKA_SSL_KEYFILE", settings.kafka_ssl_keyfile),
    ):
        if path and not settings.kafka.tls:
            raise ConfigError(env_name, "is used with SSL or SASL_SSL only (see KAFKA_SECURITY_PROTOCOL)")
        if path and not Path(path).is_file():
            raise ConfigError(env_name, f"names no readable file: {path}")


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment variables that reproduce ``settings`` in a child process."""
    env: dict[str, str] = {}
    for env_name, attr in ENV_VARS.items():
        value = getattr(settings, attr)
        env[env_name] = value.value if isinstance(value, Secret) else str(value)
    return env
