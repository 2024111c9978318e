"""A run's third step, report: what it found and did, told everywhere it is read.

The items are stored with the run and become the latest verdicts (the API's operator listener reads
the ``reconciliation_diff_*`` gauges from them), every item beyond parity is published to
``reconciliation.drift``, the metrics and a log line count the run, and the caller gets the summary.
Shaping the findings (``findings``, ``summary``) is pure.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from stripemeter.adapters.postgres import reconciliation as db
from stripemeter.core.reconcile_compare import Item, relative
from stripemeter.core.reconcile_due import proven
from stripemeter.domain import metrics, periods
from stripemeter.domain.timefmt import iso_exact, iso_hour, iso_seconds
from stripemeter.schemas.drift import Drift, encode_drift
from stripemeter.services.reconciliation.act import Outcome
from stripemeter.services.reconciliation.request import RunRequest

log = logging.getLogger(__name__)

Publish = Callable[[list[bytes]], Awaitable[None]]  # encoded reconciliation.drift records


@dataclass(frozen=True)
class Findings:
    """A run's outcomes in every form they are told in."""

    items: list[dict[str, Any]]  # as the API shows them
    rows: list[db.ItemRow]
    drift: list[Drift]  # the items beyond parity
    adjusted: list[dict[str, Any]]  # the corrections Stripe took
    counts: Counter[str]  # items by status, and how many were adjusted


def findings(run_id: str, period_name: str, outcomes: list[Outcome], checked_at: datetime) -> Findings:
    items, rows, drift, adjusted = [], [], [], []
    counts: Counter[str] = Counter()
    for outcome in outcomes:
        item, verdict, period = outcome.checked.item, outcome.checked.verdict, outcome.checked.period
        wire = item_wire(outcome, checked_at)
        items.append(wire)
        rows.append(
            db.ItemRow(
                run_id, item.tenant_id, item.metric, item.customer_ref, period_name, period.start, period.end,
                verdict.local, verdict.stripe, verdict.diff_abs, verdict.diff_pct, verdict.status,
                outcome.action, verdict.in_flight, verdict.causes, wire["hours"], checked_at,
            )
        )  # fmt: skip
        if verdict.status != "parity":
            drift.append(drift_record(item, wire, period_name, checked_at))
        adjusted.extend(outcome.sent)
        counts[verdict.status] += 1
        counts["adjusted"] += bool(outcome.sent)
    return Findings(items, rows, drift, adjusted, counts)


def proofs(
    period_name: str, outcomes: list[Outcome], digests: dict[tuple[str, str], str], checked_at: datetime
) -> list[db.ProofRow]:
    """What the run's Stripe reads established per item: the local state it was proven on when the
    verdict is settled parity with nothing left to do, else nothing (the item is read again)."""
    rows = []
    for outcome in outcomes:
        item, verdict = outcome.checked.item, outcome.checked.verdict
        settled = proven(verdict.status, verdict.in_flight, verdict.settled)
        ok = settled and outcome.action == "none" and not item.missing
        digest = digests.get((item.metric, item.customer_ref)) if ok else None
        rows.append(
            db.ProofRow(item.tenant_id, item.metric, item.customer_ref, period_name, checked_at, digest)
        )
    return rows


def item_wire(outcome: Outcome, checked_at: datetime) -> dict[str, Any]:
    item, verdict, period = outcome.checked.item, outcome.checked.verdict, outcome.checked.period
    return {
        "metric": item.metric,
        "customerRef": item.customer_ref,
        "periodStart": iso_seconds(period.start),
        "periodEnd": iso_seconds(period.end),
        "local": verdict.local,
        "stripe": verdict.stripe,
        "diffAbs": verdict.diff_abs,
        "diffPct": round(verdict.diff_pct, 6),
        "status": verdict.status,
        "action": outcome.action,
        "inFlight": verdict.in_flight,
        "causes": verdict.causes,
        "hours": [{**h, "bucket": iso_hour(h["bucket"] * 1000)} for h in verdict.hours],
        "checkedAt": iso_exact(checked_at),
    }


def drift_record(item: Item, wire: dict[str, Any], period_name: str, checked_at: datetime) -> Drift:
    """The item's reconciliation.drift record, from its wire form."""
    return Drift(
        tenant_id=item.tenant_id,
        metric=item.metric,
        customer_ref=item.customer_ref,
        period=period_name,
        local=wire["local"],
        stripe=wire["stripe"],
        diff_abs=wire["diffAbs"],
        diff_pct=wire["diffPct"],
        status=wire["status"],
        action=wire["action"],
        at=checked_at,
        causes=wire["causes"],
        hours=wire["hours"],
    )


async def record(
    conn: psycopg.AsyncConnection,
    run_id: str,
    found: Findings,
    stripe_calls: int,
    publish: Publish,
    proven_rows: list[db.ProofRow] | None = None,
) -> None:
    """Store the items as the run's and the latest verdicts and what their reads proved, close the run,
    and publish the drift."""
    counts = {**found.counts, "stripe_calls": stripe_calls}
    await db.finish_run(conn, run_id, found.rows, counts, proven_rows)
    if found.drift:
        await publish([encode_drift(d) for d in found.drift])


def observe(
    run_id: str,
    request: RunRequest,
    period_name: str,
    found: Findings,
    stripe_calls: int,
    seconds: float,
    reasons: dict[str, int] | None = None,
) -> None:
    """Count a finished run in the metrics and the log; ``reasons``: an incremental run's choices."""
    for status in ("parity", "within_epsilon", "drift"):
        if found.counts[status]:
            metrics.RECONCILIATION_ITEMS.labels(status).inc(found.counts[status])
    for why, n in (reasons or {}).items():
        metrics.RECONCILIATION_ITEM_CHOICES.labels(why).inc(n)
    if reasons:
        log.info(
            "reconciliation %s: read Stripe for %d of %d items (%s)", run_id, len(found.items),
            sum(reasons.values()), ", ".join(f"{n} {why}" for why, n in sorted(reasons.items())),
        )  # fmt: skip
    metrics.RECONCILIATION_RUNS.labels("finished").inc()
    metrics.RECONCILIATION_SECONDS.observe(seconds)
    counts = found.counts
    log.info(
        "reconciliation %s: tenant %s metric %s period %s: %d items, %d parity, %d within epsilon,"
        " %d drift, %d adjusted, %d Stripe calls, %.2f s",
        run_id, request.tenant_id, request.metric or "*", period_name, len(found.items),
        counts["parity"], counts["within_epsilon"], counts["drift"], counts["adjusted"],
        stripe_calls, seconds,
    )  # fmt: skip


def summary(
    run_id: str,
    request: RunRequest,
    period_name: str,
    epsilon: float,
    found: Findings,
    stripe_calls: int,
    seconds: float,
    reasons: dict[str, int] | None = None,
) -> dict[str, Any]:
    """What a run answers its caller (the API's, the CLI's and the invoice guard's report); an
    incremental run also says why it read the items it read, and how many it left (``unchanged``)."""
    extra = {"reasons": dict(sorted(reasons.items()))} if reasons is not None else {}
    return {
        **extra,
        "runId": run_id,
        "tenantId": request.tenant_id,
        "metric": request.metric,
        "period": periods.period(period_name).wire(),
        "epsilon": epsilon,
        "status": overall_status(found.items),
        "items": found.items,
        "totals": totals(found.items),
        "adjusted": found.adjusted,
        "flagged": [
            {
                "metric": i["metric"],
                "customerRef": i["customerRef"],
                "causes": [c["code"] for c in i["causes"]],
            }
            for i in found.items
            if i["status"] == "drift"
        ],
        "stripeCalls": stripe_calls,
        "durationSeconds": round(seconds, 3),
    }


def overall_status(items: list[dict[str, Any]]) -> str:
    return status_of(i["status"] for i in items)


def status_of(statuses: Iterable[str]) -> str:
    """The worst of the items' statuses (parity when there are none)."""
    present = set(statuses)
    return "drift" if "drift" in present else "within_epsilon" if "within_epsilon" in present else "parity"


def totals(items: list[dict[str, Any]]) -> dict[str, Any]:
    local = sum(i["local"] for i in items)
    stripe_total = sum(i["stripe"] for i in items)
    diff = sum(i["diffAbs"] for i in items)
    return {
        "local": local,
        "stripe": stripe_total,
        "diffAbs": diff,
        "diffPct": round(relative(diff, local, stripe_total), 6),
    }
