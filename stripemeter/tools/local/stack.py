"""`stripemeter stack up|down|status`: the whole local stack in the background, idempotently."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import orjson

from stripemeter.domain.config import Secret, Settings, settings_env
from stripemeter.domain.errors import Permanent
from stripemeter.tools.local.kafka import LocalKafka, with_local_ca
from stripemeter.tools.local.kafka_security import check_runnable
from stripemeter.tools.local.postgres import LocalPostgres, install_server
from stripemeter.tools.local.procs import Managed, port_open, tail, wait_for

T = TypeVar("T")

Say = Callable[[str], None]


class StackError(Permanent, RuntimeError):
    pass


# How long a start may take before it is called failed (a process that dies ends the wait at once).
# Sized for a cold first start on two cores while other work runs: a second broker's JVM started
# next to a running one took over 90 s on a fresh machine.
POSTGRES_START_SECONDS = 120
KAFKA_START_SECONDS = 240
PROCESS_START_SECONDS = 240


@dataclass(frozen=True)
class Service:
    name: str
    address: str
    managed: Managed
    port: tuple[str, int]
    stop_signal: signal.Signals = signal.SIGTERM


def _managed(settings: Settings, name: str) -> Managed:
    return Managed(name, settings.state_dir / "run", settings.state_dir / "logs")


def _postgres_managed(settings: Settings, pg: LocalPostgres) -> Managed:
    """The stack's PostgreSQL, known by the server's own pid (``postmaster.pid``) rather than by the
    process that launched it: as root that is ``runuser``, which can be gone while the server runs."""
    return replace(_managed(settings, "postgres"), own_pidfile=pg.data_dir / "postmaster.pid")


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= int(response.status) < 300
    except OSError:
        return False


def _child_env(settings: Settings) -> dict[str, str]:
    return {**os.environ, **settings_env(settings)}


def _wait(name: str, managed: Managed, check: Callable[[], bool], timeout: float) -> None:
    def ready_or_dead() -> bool:
        return check() or managed.pid() is None

    wait_for(ready_or_dead, timeout)
    if not check():
        raise StackError(
            f"{name} did not become ready within {timeout:.0f}s; last log lines of {managed.logfile}:\n"
            f"{tail(managed.logfile)}"
        )


def start_postgres(settings: Settings, say: Say) -> None:
    pg = LocalPostgres.from_settings(settings, install_server())
    managed = _postgres_managed(settings, pg)
    if managed.pid() is None:
        if port_open(pg.host, pg.port):
            if not _postgres_answers(settings):
                raise StackError(
                    f"port {pg.host}:{pg.port} is taken by a process that does not accept DATABASE_URL; "
                    "point DATABASE_URL at another port"
                )
            say(f"reusing the PostgreSQL already listening on {pg.host}:{pg.port}")
            return
        pg.init()
        managed.start(pg.server_command())
        say(f"starting PostgreSQL on {pg.host}:{pg.port}")
    _wait("PostgreSQL", managed, pg.ready, POSTGRES_START_SECONDS)
    pg.ensure_database()


def _postgres_answers(settings: Settings) -> bool:
    import psycopg

    try:
        with psycopg.connect(settings.database_url.value, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def start_kafka(settings: Settings, say: Say) -> None:
    kafka = LocalKafka.from_settings(settings)
    managed = _managed(settings, "kafka")
    if managed.pid() is None:
        if port_open(kafka.host, kafka.port):
            say(f"reusing the Kafka broker already listening on {kafka.host}:{kafka.port}")
            return
        check_runnable(settings)
        if not kafka.installed():
            say(f"fetching Apache Kafka {kafka.version} from Maven Central into {kafka.cache_dir} (once)")
        kafka.install()
        kafka.format_storage()
        managed.start(kafka.broker_command())
        say(f"starting Kafka {kafka.version} on {kafka.host}:{kafka.port}")
    _wait("Kafka", managed, lambda: port_open(kafka.host, kafka.port), KAFKA_START_SECONDS)


def start_process(settings: Settings, name: str, argv: list[str], ready_url: str, say: Say) -> None:
    managed = _managed(settings, name)
    if managed.pid() is None:
        managed.start(argv, env=_child_env(settings))
        say(f"starting {name}")
    _wait(name, managed, lambda: http_ok(ready_url), PROCESS_START_SECONDS)


def uses_emulator(settings: Settings) -> bool:
    """No Stripe configured: the local stack runs the project's emulator and points at it."""
    return not (settings.stripe_api_key or settings.stripe_api_base)


def on_one_broker(settings: Settings) -> Settings:
    """The stack has one broker: every topic has one replica, which must have each write."""
    return settings.with_overrides(topic_replication_factor=1, topic_min_insync_replicas=1)


def app_settings(settings: Settings) -> Settings:
    """What the stack's worker and API run with: the emulator when no Stripe is configured, a short
    settle time and lag cap (the emulator's summaries are immediate), and invoices proven every 2 s."""
    if not uses_emulator(settings):
        return settings
    return settings.with_overrides(
        stripe_api_base=emulator_url(settings),
        stripe_api_key=Secret("sk_test_local_emulator"),
        stripe_webhook_secret=settings.stripe_webhook_secret or Secret(LOCAL_WEBHOOK_SECRET),
        reconcile_settle_seconds=min(settings.reconcile_settle_seconds, 10.0),
        # the emulator's summaries never lag: a push it does not show is lost, not late
        reconcile_lag_cap_seconds=min(settings.reconcile_lag_cap_seconds, 15.0),
        invoice_check_seconds=min(settings.invoice_check_seconds, 2.0),
    )


# signs the local emulator's deliveries to the local API (both on loopback, neither reachable elsewhere)
LOCAL_WEBHOOK_SECRET = "whsec_local_emulator"


def wire_emulator_events(settings: Settings) -> str:
    """Point the emulator's event destination at the API's webhook, as a Stripe event destination
    would be: error reports and invoice events reach the API with no extra step. Returns the URL."""
    url = f"http://{settings.api_host}:{settings.api_port}/v1/stripe/webhook"
    body = orjson.dumps({"url": url, "secret": settings.stripe_webhook_secret.value})
    request = urllib.request.Request(
        emulator_url(settings) + "/_emulator/webhook",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()
    return url


def emulator_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.emulator_port}"


def emulator_file(settings: Settings) -> Path:
    """Where the stack's emulator keeps its customers, meters and meter events between runs."""
    return settings.state_dir / "stripe-emulator.json"


def _stripe_file(settings: Settings) -> Path:
    """The Stripe settings the stack's worker and API run with, for commands run next to the stack."""
    return settings.state_dir / "run" / "stripe.json"


def write_stack_stripe(settings: Settings) -> None:
    """Keep the emulator's base URL and key where ``stack_stripe`` finds them (owner-only: a key)."""
    path = _stripe_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"apiBase": settings.stripe_api_base, "apiKey": settings.stripe_api_key.value}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(orjson.dumps(body))


def stack_stripe(settings: Settings) -> Settings | None:
    """``settings`` with the Stripe of the local stack under ``STRIPEMETER_STATE_DIR`` (its emulator, as
    `stack up` wrote it), or None when that stack's emulator does not run."""
    try:
        body = orjson.loads(_stripe_file(settings).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
    if _managed(settings, "stripe-emulator").pid() is None:
        return None
    return settings.with_overrides(stripe_api_base=body["apiBase"], stripe_api_key=Secret(body["apiKey"]))


def _clock_file(settings: Settings) -> Path:
    """The clock offset the stack's worker, API and emulator started with (`demo --at`)."""
    return settings.state_dir / "run" / "clock-offset"


def clock_note(settings: Settings) -> str | None:
    """What `stack status` says when the running stack lives at another time than the real one."""
    try:
        offset = float(_clock_file(settings).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not offset or _managed(settings, "worker").pid() is None:
        return None
    now = datetime.fromtimestamp(time.time() + offset, tz=UTC)
    return (
        f"the stack lives at {now:%Y-%m-%d %H:%M} UTC, {offset / 86400:+.1f} days from now (started by"
        " `demo --at`): usage is judged on that clock; `stack down` and `stack up` bring it back to now"
    )


def services(settings: Settings) -> list[Service]:
    pg = LocalPostgres.from_settings(settings, Path("/"))
    kafka = LocalKafka.from_settings(settings)
    return [
        # SIGINT is PostgreSQL's "fast" shutdown: it does not wait for clients to leave.
        Service(
            "postgres",
            f"{pg.host}:{pg.port}",
            _postgres_managed(settings, pg),
            (pg.host, pg.port),
            signal.SIGINT,
        ),
        Service("kafka", f"{kafka.host}:{kafka.port}", _managed(settings, "kafka"), (kafka.host, kafka.port)),
        Service(
            "stripe-emulator",
            emulator_url(settings),
            _managed(settings, "stripe-emulator"),
            ("127.0.0.1", settings.emulator_port),
        ),
        Service(
            "worker",
            f"http://127.0.0.1:{settings.worker_web_port}",
            _managed(settings, "worker"),
            ("127.0.0.1", settings.worker_web_port),
        ),
        Service(
            "api",
            f"http://{settings.api_host}:{settings.api_port}" + _operator_address(settings),
            _managed(settings, "api"),
            (settings.api_host, settings.api_port),
        ),
    ]


def _operator_address(settings: Settings) -> str:
    """The API's operator listener (api/operator_metrics.py), shown beside the API's address."""
    if not settings.operator_metrics_port:
        return ""
    return f" (operator metrics http://{settings.operator_metrics_host}:{settings.operator_metrics_port})"


def up(settings: Settings, say: Say, with_app: bool = True) -> None:
    """Start (or find running) PostgreSQL, Kafka, then migrations, topics, the worker and the API."""
    from stripemeter.adapters.kafka.admin import ensure_topics
    from stripemeter.adapters.postgres.migrate import migrate
    from stripemeter.schemas.topics import deployment_specs

    start_postgres(settings, say)
    applied = migrate(settings.database_url.value)
    if applied:
        say(
            f"applied {len(applied)} migration(s): " + ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
        )
    start_kafka(settings, say)
    settings = with_local_ca(settings)  # TLS with the stack's own CA: every client trusts it
    settings = on_one_broker(settings)
    result = _retry_until_ready(
        lambda: asyncio.run(ensure_topics(settings.kafka, deployment_specs(settings)))
    )
    if result.created:
        say(f"created {len(result.created)} topic(s)")
    if with_app:
        original, me = settings, [sys.executable, "-m", "stripemeter"]
        if uses_emulator(settings):
            start_emulator(settings, say)
        if settings.auth_enabled:
            from stripemeter.services.api_keys import ensure_local_key

            path, created = ensure_local_key(settings)
            say(
                f"{'created' if created else 'using'} the local stack's API key (every tenant, admin): {path}"
            )
            say(f'to call the API from this shell: export STRIPEMETER_API_KEY="$(cat {path.resolve()})"')
        if _managed(settings, "worker").pid() is None:  # what the processes started now will live at
            _clock_file(settings).parent.mkdir(parents=True, exist_ok=True)
            _clock_file(settings).write_text(f"{settings.clock_offset_seconds}\n")
        settings = app_settings(settings)
        start_process(
            settings,
            "worker",
            [*me, "worker"],
            f"http://127.0.0.1:{settings.worker_web_port}/health/live",
            say,
        )
        start_process(
            settings, "api", [*me, "api"], f"http://{settings.api_host}:{settings.api_port}/health/live", say
        )
        if uses_emulator(original):
            say(f"the emulator's events (error reports, invoices) go to {wire_emulator_events(settings)}")


def start_emulator(settings: Settings, say: Say) -> None:
    """The Stripe emulator, and its base URL and key where commands run next to the stack find them."""
    argv = [sys.executable, "-m", "stripemeter", "stripe-emulator", "--port", str(settings.emulator_port)]
    argv += ["--state-file", str(emulator_file(settings))]
    start_process(settings, "stripe-emulator", argv, emulator_url(settings) + "/_emulator/faults", say)
    write_stack_stripe(app_settings(settings))


def _retry_until_ready(action: Callable[[], T], attempts: int = 30) -> T:
    """The broker's port opens a moment before it serves metadata."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception:
            if attempt == attempts - 1:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def down(settings: Settings, say: Say) -> None:
    for service in reversed(services(settings)):
        host, port = service.port

        def closed(h: str = host, p: int = port) -> bool:
            return not port_open(h, p)

        if service.managed.stop(timeout=60, sig=service.stop_signal, gone=closed):
            say(f"stopped {service.name}")
    _clock_file(settings).unlink(missing_ok=True)
    _stripe_file(settings).unlink(missing_ok=True)


def status(settings: Settings) -> list[tuple[str, str, str, str]]:
    """(service, state, address, log file) for each part of the stack."""
    rows = []
    for service in services(settings):
        pid = service.managed.pid()
        state = f"running (pid {pid})" if pid else "stopped"
        rows.append((service.name, state, service.address, str(service.managed.logfile)))
    return rows
