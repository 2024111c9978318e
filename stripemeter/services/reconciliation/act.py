"""A run's second step, act: the corrections the policy allows, sent to Stripe.

Within epsilon (or when the operator asks to align everything) the aligning meter events are sent,
each recorded as an audited adjustment before the call, so a crash or an unclear answer (5xx,
timeout) resends the same identifier; such an hour stays in flight until Stripe answers. Every other
item is left to the writer (``wait``) or to the operator's replay (``replay``). What the policy allows
(``plan``), the corrections' identifiers and requests, and whether the hours moved since they were
read (``unchanged``) are pure.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg

from stripemeter.adapters.postgres import reconciliation as db
from stripemeter.adapters.stripe.reader import StripeReader
from stripemeter.core.push_plan import IDENTIFIER_WINDOW_S, Request, StripeMeterSpec
from stripemeter.core.reconcile_compare import Hour, Item, Verdict
from stripemeter.domain import metrics
from stripemeter.domain.clock import Clock
from stripemeter.domain.timefmt import iso_hour
from stripemeter.services.reconciliation.check import Check, Checked
from stripemeter.services.reconciliation.request import Align

log = logging.getLogger(__name__)

Action = Literal["none", "wait", "replay", "adjusted"]
CorrectionStatus = Literal["applied", "failed", "pending"]
# What a send's outcome means for a correction: delivered; refused (it did not land); anything else
# (5xx, timeout, no connection after retries, 409): it may have landed, so it stays pending, its hour in
# flight, and is sent again under the same identifier (Stripe answers "already exists" if it landed).
CORRECTION_STATUS: dict[str, CorrectionStatus] = {
    "delivered": "applied",
    "refused": "failed",
    "idempotency_conflict": "failed",
}

HOUR_S = 3600
# Stripe takes meter events up to 35 days old; an hour older than this cannot be corrected by an event
CORRECTABLE_SECONDS = 35 * 24 * HOUR_S - HOUR_S
YIELD_EVERY = 500  # items acted on between two yields to the event loop (inside a worker, the meter runs)


@dataclass(frozen=True)
class Outcome:
    """What the run did about one checked item: its action, and the corrections Stripe took."""

    checked: Checked
    action: Action
    sent: list[dict[str, Any]]  # adjustmentId, metric, customerRef, bucket, value


def plan(
    verdict: Verdict, align: Align, now: float, meter: StripeMeterSpec | None
) -> Action | list[tuple[int, int]]:
    """What the policy allows for a verdict: the corrections to send ((bucket, value) each), or the
    action when there are none to send: ``none`` (parity), ``wait`` (parity with hours in flight) or
    ``replay`` (drift the run may not correct, or cannot correct whole)."""
    if verdict.status == "parity":
        return "wait" if verdict.in_flight else "none"
    allowed = verdict.status == "within_epsilon" or align == "all"
    corrections = [(b, v) for b, v in verdict.corrections if now - b < CORRECTABLE_SECONDS]
    if not allowed or not corrections or len(corrections) != len(verdict.hours) or meter is None:
        return "replay"
    return corrections


def correction_identifier(item: Item, bucket: int, run_id: str) -> str:
    counter = "\x1f".join([item.tenant_id, item.metric, item.customer_ref, str(bucket)])
    return f"smrec_{hashlib.sha256(counter.encode()).hexdigest()[:24]}_{run_id}"


def correction_request(
    item: Item, bucket: int, value: int, run_id: str, meter: StripeMeterSpec, stripe_customer: str
) -> Request:
    """The meter event that adds ``value`` to an hour in Stripe, stamped at the hour's start like the
    writer's."""
    payload = {meter.customer_key: stripe_customer, meter.value_key: str(value)}
    return Request(
        correction_identifier(item, bucket, run_id), meter.event_name, payload, bucket, value, value
    )


def unchanged(before: dict[int, Hour], rows: list[dict[str, Any]], buckets: list[int]) -> bool:
    """Whether the hours to correct read now (``db.hours`` rows) as they did before Stripe was read."""
    now_seen = {int(r["bucket"].timestamp()): r for r in rows}
    for bucket in buckets:
        hour, after = before.get(bucket), now_seen.get(bucket)
        if hour is None and after is None:
            continue
        if hour is None or after is None:
            return False
        pushed = int(after["pushed_units"]) if after["pushed_units"] is not None else None
        exact = int(after["local_micros"]) if after["local_micros"] is not None else 0
        if (exact, pushed, after["status"]) != (hour.exact_micros, hour.pushed, hour.writer_status):
            return False
    return True


class Corrector:
    """Sends a run's corrections to Stripe, and again those an earlier run left unanswered."""

    def __init__(self, reader: StripeReader, clock: Clock):
        self.reader = reader
        self.clock = clock

    async def act(
        self, conn: psycopg.AsyncConnection, run_id: str, align: Align, check: Check, now: float
    ) -> list[Outcome]:
        outcomes = []
        for n, checked in enumerate(check.items):
            if n % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            action, sent = await self._act_on(conn, run_id, align, checked, check, now)
            outcomes.append(Outcome(checked, action, sent))
        return outcomes

    async def _act_on(
        self,
        conn: psycopg.AsyncConnection,
        run_id: str,
        align: Align,
        checked: Checked,
        check: Check,
        now: float,
    ) -> tuple[Action, list[dict[str, Any]]]:
        item, period = checked.item, checked.period
        meter = check.meter_of(item)
        planned = plan(checked.verdict, align, now, meter)
        if isinstance(planned, str):
            return planned, []
        assert meter is not None  # planned corrections have a meter
        # a correction is never built on a local snapshot older than its Stripe reads
        rows = await db.hours(conn, item.tenant_id, item.metric, period.start, period.end, item.customer_ref)
        if not unchanged(item.hours, rows, [b for b, _ in planned]):
            return "wait", []  # the writer or new usage moved an hour since it was read: in flight
        customer = check.mappings.customers[item.customer_ref][0]
        key = (item.tenant_id, item.metric, item.customer_ref)
        sent: list[dict[str, Any]] = []
        for bucket, value in planned:
            correction = correction_request(item, bucket, value, run_id, meter, customer)
            identifier = correction.identifier
            seen = next((h["stripe"] for h in checked.verdict.hours if h["bucket"] == bucket), None)
            bucket_dt = datetime.fromtimestamp(bucket, tz=UTC)
            await db.record_correction(conn, correction, key, bucket_dt, run_id, self.clock.utc(), seen)
            status, reason = await self._send(conn, correction, 0)
            if status == "failed":
                log.warning("Stripe refused correction %s for %s/%s/%s: %s", identifier, *key, reason)
                return "replay", sent
            if status == "pending":
                log.warning(
                    "correction %s for %s/%s/%s not answered (%s): it may have landed; sent again under its"
                    " identifier by the next run", identifier, *key, reason,
                )  # fmt: skip
                return "wait", sent
            log.info(
                "adjusted %s/%s/%s @%s by %+d in Stripe (%s)",
                *key,
                iso_hour(bucket * 1000),
                value,
                identifier,
            )
            sent.append(
                {
                    "adjustmentId": identifier,
                    "metric": item.metric,
                    "customerRef": item.customer_ref,
                    "bucket": iso_hour(bucket * 1000),
                    "value": value,
                }
            )
        return "adjusted", sent

    async def _send(
        self, conn: psycopg.AsyncConnection, request: Request, attempt: int
    ) -> tuple[CorrectionStatus, str]:
        """Send a recorded correction and store what the answer means (see ``CORRECTION_STATUS``);
        returns its status and Stripe's reason. A 5xx moves the next resend to a new idempotency key."""
        result = await self.reader.send(request, attempt)
        status = CORRECTION_STATUS.get(result.outcome, "pending")
        await db.finish_correction(
            conn, request.identifier, status, result.reason or None, self.clock.utc(),
            # Stripe replays a stored 500, and a stored refusal, to the same key
            new_key=result.outcome in ("server_error", "refused_for_now"),
        )  # fmt: skip
        if status == "applied":
            metrics.RECONCILIATION_ADJUSTMENTS.inc()
        return status, result.reason

    async def resend_pending(self, conn: psycopg.AsyncConnection, tenant: str) -> None:
        """Corrections recorded but not answered clearly (a crash mid-call, a 5xx, a timeout): the
        recorded request again, under its identifier, while Stripe keeps identifiers; after that never
        (it could count twice): marked unknown, and the hour is judged by Stripe's settled summaries."""
        now = self.clock()
        for row in await db.pending_corrections(conn, tenant):
            request = Request.from_wire(row["request"]) if row["request"] else None
            if request is None:
                await db.finish_correction(
                    conn, row["adjustment_id"], "unknown", "recorded without its request (before an upgrade)",
                    self.clock.utc(),
                )  # fmt: skip
            elif now - row["created_at"].timestamp() > IDENTIFIER_WINDOW_S:
                log.warning(
                    "correction %s unanswered for longer than Stripe keeps identifiers: not sent again",
                    row["adjustment_id"],
                )
                await db.finish_correction(
                    conn, row["adjustment_id"], "unknown", f"no clear answer from Stripe within 24 h (last:"
                    f" {row['error'] or 'none'}); not sent again: Stripe's summaries show whether it landed",
                    self.clock.utc(),
                )  # fmt: skip
            else:
                await self._send(conn, request, int(row["send_attempt"]))
