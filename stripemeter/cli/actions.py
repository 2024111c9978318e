"""Operator commands behind the CLI: ``stripemeter reconcile`` and ``stripemeter replay``.

They run in-process against PostgreSQL, Kafka and Stripe with the same code as the API, so they work
when the API is down; results print as a table (or JSON with ``--json``), progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
import psycopg
from aiokafka import AIOKafkaProducer

from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.domain.config import Settings
from stripemeter.schemas.topics import TopicNames
from stripemeter.services.reconciliation.build import build_reconciler, kafka_publisher, stripe_configured
from stripemeter.services.reconciliation.request import RunRequest
from stripemeter.services.reconciliation.schedule import open_periods

Say = Callable[[str], None]
Table = Callable[[list[str], list[list[object]]], None]


class ProgressBar:
    """``[#####.....] 512/1000  3.1 s`` on stderr, redrawn at most 10 times a second."""

    def __init__(self, label: str, width: int = 30):
        self.label = label
        self.width = width
        self.started = time.monotonic()
        self._drawn = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self._drawn < 0.1:
            return
        self._drawn = now
        filled = self.width * done // max(total, 1)
        bar = "#" * filled + "." * (self.width - filled)
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{self.label} [{bar}] {done}/{total}  {now - self.started:.1f} s{end}")
        sys.stderr.flush()


RECONCILE_COLUMNS = [
    "metric",
    "customer",
    "local",
    "stripe",
    "diff",
    "diff %",
    "status",
    "action",
    "in flight",
    "cause",
]


def reconcile_row(i: dict[str, Any]) -> list[object]:
    causes = ", ".join(c["code"] for c in i["causes"]) or "-"
    pct = f"{i['diffPct']:.3%}"
    return [
        i["metric"],
        i["customerRef"],
        i["local"],
        i["stripe"],
        i["diffAbs"],
        pct,
        i["status"],
        i["action"],
        i["inFlight"],
        causes,
    ]


async def reconcile(
    settings: Settings, request: RunRequest, as_json: bool, say: Say, table: Table
) -> list[dict[str, Any]]:
    """One run per period: ``request.period``, or every period whose invoice can still change (the
    current one and the previous one shortly after it closed, per billing anchor). One report each."""
    if not stripe_configured(settings):
        raise RuntimeError(
            "set STRIPE_API_KEY (or STRIPE_API_BASE for the emulator) to reconcile, or run it next to a"
            " local stack (`stripemeter stack up`; STRIPEMETER_STATE_DIR names its directory)"
        )
    names = TopicNames(settings.topic_prefix, settings.app_id)
    producer = AIOKafkaProducer(**client_kwargs(settings.kafka), acks="all")
    await producer.start()
    reports = []
    try:
        reconciler = build_reconciler(settings, kafka_publisher(producer, names.drift))
        async with await psycopg.AsyncConnection.connect(
            settings.database_url.value, autocommit=True
        ) as conn:
            wanted = (
                [request.period]
                if request.period
                else await open_periods(
                    conn, request.tenant_id, settings.clock.utc(), settings.invoice_grace_seconds
                )
            )
            for period in wanted:
                report = await reconciler.run(
                    conn,
                    replace(request, period=period),
                    progress=None if as_json else ProgressBar(f"checking {period}"),
                    wait=True,  # an operator's run waits for the one running, as before
                )
                reports.append(report)
                show_reconciliation(report, as_json, say, table)
    finally:
        await producer.stop()
    return reports


def show_reconciliation(report: dict[str, Any], as_json: bool, say: Say, table: Table) -> None:
    if as_json:
        say(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    say(
        f"reconciliation {report['runId']}: tenant {report['tenantId']}, period {report['period']['name']}"
        f" ({report['period']['start']} .. {report['period']['end']}), epsilon {report['epsilon']:.2%}"
    )
    # not at parity, still in flight, or with too-late events waiting for a replay
    shown = [i for i in report["items"] if i["status"] != "parity" or i["inFlight"] or i["causes"]]
    if shown:
        table(RECONCILE_COLUMNS, [reconcile_row(i) for i in shown])
    t = report["totals"]
    parity = sum(1 for i in report["items"] if i["status"] == "parity")
    say(
        f"{len(report['items'])} items: {parity} at parity, {len(report['items']) - parity} not;"
        f" {len(report['adjusted'])} corrections sent; totals local {t['local']} / Stripe {t['stripe']}"
        f" (diff {t['diffAbs']}, {t['diffPct']:.3%}); status {report['status'].upper()}"
    )


REPLAY_COLUMNS = ["metric", "customer", "bucket", "period", "before", "after", "delta", "events"]


async def replay(settings: Settings, args: argparse.Namespace, say: Say, table: Table) -> dict[str, Any]:
    from stripemeter.core.replay_window import parse_window
    from stripemeter.services.replayer import Mode, ReplayRequest, build_replayer

    window = parse_window(args.since, args.until, settings.clock.ms(), settings.replay_max_window_seconds)
    mode: Mode = "apply" if args.apply else "dry-run"
    request = ReplayRequest(args.tenant, sorted(set(args.metric)), args.customer, window, mode)
    producer = AIOKafkaProducer(**client_kwargs(settings.kafka), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        async with await psycopg.AsyncConnection.connect(
            settings.database_url.value, autocommit=True
        ) as conn:
            progress = None if args.json else ProgressBar("sending corrections")
            report = await build_replayer(settings, producer).run(conn, request, progress, wait=True)
    finally:
        await producer.stop()
    if args.json:
        say(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return report
    w = report["window"]
    say(
        f"replay {report['replayId']} ({mode}): tenant {args.tenant}, metrics {', '.join(request.metrics)},"
        f" window {w['since']} .. {w['until']}: {report['eventsScanned']:,} events scanned,"
        f" {report['eventsReplayed']:,} too-late events to count"
    )
    if report["counters"]:
        rows = [[c["metric"], c["customerRef"], c["bucket"], c["period"], c["before"], c["after"], c["delta"],
                 c["events"]] for c in report["counters"]]  # fmt: skip
        table(REPLAY_COLUMNS, rows)
    t, n = report["totals"], len(report["counters"])
    say(f"total: before {t['before']}, after {t['after']}, delta {t['delta']} in {n} counters")
    for p in report["periods"]:
        say(f"period {p['name']} ({p['state']}): {p['counters']} counters, delta {p['delta']}")
    for warning in report["warnings"]:
        say(f"warning: {warning}")
    if not report["applied"]:
        say("dry-run: nothing changed; run again with --apply to count them")
    elif report["visible"]:
        say("applied: the counters show the change; the writer pushes it to Stripe")
    else:
        say(f"applied, not yet visible: {report['message']}")
    return report
