"""What create_app registers on the Faust app: agents, timers and tasks in start order, signal hooks,
services and pages, for each way of running the worker."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import faust
import pytest

from stripemeter.domain.config import Settings
from stripemeter.streams import memory_tuning
from stripemeter.streams.worker_app import create_app

TIMERS = [
    ("checkpoint", 0.2),
    ("expire_dedupe", 5.0),
    ("watch_progress", 10.0),
    ("measure_memory", 5.0),
    ("collect_cycles", memory_tuning.CYCLE_INTERVAL),
    ("watch_recovery", 5.0),
]


def timers(app: faust.App) -> list[tuple[str, float]]:
    """(name, interval) of each timer, in the order the app starts its tasks."""
    found: list[tuple[str, float]] = []
    for task in app._app_tasks:
        around = getattr(task, "__wrapped__", None)
        names = inspect.getclosurevars(around).nonlocals if around is not None else {}
        if "timer_name" in names:
            found.append((names["timer_name"], names["interval_s"]))
    return found


def task_names(app: faust.App) -> list[str]:
    return [task.__name__ for task in app._app_tasks]


def wiring(app: faust.App) -> dict[str, Any]:
    return {
        "agents": {name: list(agent.channel.topics) for name, agent in app.agents.items()},
        "revoked": sorted(f.__name__ for f in app.on_partitions_revoked.iter_receivers(app)),
        "rebalanced": sorted(f.__name__ for f in app.on_rebalance_complete.iter_receivers(app)),
        "services": [s.__name__ for s in app._extra_services],
        "pages": sorted(app.web.views),
    }


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path)


def test_the_default_worker_runs_every_stage_in_process(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="stripemeter.streams.worker_app"):
        app = create_app(settings)
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("stripemeter.streams.worker_app", "STRIPE_API_KEY is not set: counters are not pushed to Stripe")
    ]
    assert [(name.rsplit(".", 1)[1], interval) for name, interval in timers(app)] == TIMERS
    assert all(name.startswith("stripemeter.streams.worker.") for name, _ in timers(app))
    assert task_names(app) == [
        *(name for name, _ in TIMERS),
        "start_producer",
        "run_intake",
        "run_sink",
        "run_heartbeat",
        "refresh_policies",
    ]
    assert wiring(app) == {
        "agents": {"meter": [f"{settings.app_id}-events-keyed"]},
        "revoked": ["flush_before_revoke"],
        "rebalanced": ["count_partitions"],
        "services": ["CleanStop"],
        "pages": ["/health/live", "/health/ready", "/metrics"],
    }


def test_a_worker_with_stripe_runs_the_writer_and_the_reconciler(settings: Settings) -> None:
    app = create_app(settings.with_overrides(stripe_api_base="http://127.0.0.1:1"))
    assert task_names(app)[len(TIMERS) :] == [
        "start_producer",
        "run_intake",
        "run_stripe_writer",
        "run_reconciler",
        "run_invoice_guard",
        "run_sink",
        "run_heartbeat",
        "refresh_policies",
    ]


def test_scheduled_reconciliation_can_be_turned_off(settings: Settings) -> None:
    app = create_app(settings.with_overrides(stripe_api_base="http://x", reconcile_interval_seconds=0.0))
    assert "run_stripe_writer" in task_names(app)
    assert "run_reconciler" not in task_names(app)


def test_the_invoice_guard_can_be_turned_off(settings: Settings) -> None:
    app = create_app(settings.with_overrides(stripe_api_base="http://x", invoice_guard=False))
    assert "run_reconciler" in task_names(app)
    assert "run_invoice_guard" not in task_names(app)


def test_stage_processes_replace_the_in_process_stages_with_supervised_children(settings: Settings) -> None:
    app = create_app(settings, stage_processes=True)
    assert task_names(app)[len(TIMERS) :] == [
        "start_producer",
        "supervise_intake",
        "supervise_sink",
        "run_heartbeat",
        "refresh_policies",
    ]
    app = create_app(settings, with_intake=False, stage_processes=True)
    assert task_names(app)[len(TIMERS) :] == [
        "start_producer",
        "supervise_sink",
        "run_heartbeat",
        "refresh_policies",
    ]


def test_stages_left_to_other_processes_are_not_run(settings: Settings) -> None:
    app = create_app(settings, with_sink=False, with_intake=False)
    assert task_names(app)[len(TIMERS) :] == ["start_producer", "run_heartbeat", "refresh_policies"]
    assert timers(app) == timers(create_app(settings))


def test_the_worker_web_server_serves_only_our_pages_on_loopback(settings: Settings) -> None:
    """Faust's /table pages would serve every tenant's counters, /router the other workers' addresses:
    the worker's web server serves its health and metrics pages (and Faust's {"status": "OK"} index)."""
    app = create_app(settings)
    app.web.blueprints.apply(app.web)
    server: Any = app.web  # Faust's aiohttp driver; its aiohttp app is not on the Web type
    routes = sorted(r.canonical for r in server.web_app.router.resources())
    assert routes == ["/", "/health/live", "/health/ready", "/metrics"]
    assert (app.conf.web_bind, app.conf.web_host) == ("127.0.0.1", "127.0.0.1")


def test_the_worker_keeps_as_many_standby_copies_as_set(settings: Settings) -> None:
    assert create_app(settings).conf.table_standby_replicas == 1  # the default
    for replicas in (0, 2):
        app = create_app(settings.with_overrides(standby_replicas=replicas))
        assert app.conf.table_standby_replicas == replicas
