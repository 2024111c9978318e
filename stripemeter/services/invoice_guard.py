"""The pre-invoice guard: no draft invoice finalizes before Stripe holds what stripemeter counted.

Stripe's ``invoice.*`` webhooks (api/stripe_webhook.py) record each invoice as due. Every worker runs
``run_guard``; each due invoice is checked by one of them at a time (a PostgreSQL advisory lock per
invoice). A check reads the invoice from Stripe again (events may come twice, late, out of order, to
several API replicas: only Stripe's current copy counts), maps each metered line to the counters that
bill it (core/invoice_guard.py), reconciles each of them now (reconciliation sends what is pending
within epsilon and waits out hours in flight), and then:

- every line proven: the draft is released, finalized at once (``STRIPEMETER_INVOICE_RELEASE=finalize``)
  or handed back to Stripe's schedule (``schedule``), and the proof is kept;
- not proven: the draft is held (``auto_advance=false``; the request is counted in PostgreSQL before it
  is sent, and the next check sees in Stripe's copy whether it landed) and checked again every
  ``STRIPEMETER_INVOICE_CHECK_SECONDS`` until it is proven or the deadline (Stripe's
  ``automatically_finalizes_at`` minus ``STRIPEMETER_INVOICE_DEADLINE_MARGIN_SECONDS``, on Stripe's
  clock: the invoice's test clock when it has one) passes; then it stays held or is released, as
  ``STRIPEMETER_INVOICE_UNPROVEN`` says;
- finalized (by the guard, by Stripe, or by hand): the final line quantities join the proof, and usage
  counted later for that period is reported as unbilled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import stripe

from stripemeter.adapters.postgres import invoices as db
from stripemeter.adapters.postgres import locks
from stripemeter.adapters.postgres import reconciliation as recon_db
from stripemeter.adapters.postgres.mappings import streams_of_stripe_customer, stripe_mappings
from stripemeter.adapters.stripe.invoices import StripeInvoices
from stripemeter.core import invoice_guard as plan
from stripemeter.core.reconcile_compare import total
from stripemeter.domain import metrics
from stripemeter.domain.clock import Clock
from stripemeter.domain.config import Settings
from stripemeter.domain.errors import Busy
from stripemeter.services.reconciliation.check import build_hours
from stripemeter.services.reconciliation.request import RunRequest
from stripemeter.services.reconciliation.run import Reconciler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuardSettings:
    release: str = "finalize"  # finalize | schedule
    unproven: str = "hold"  # hold | release, at the deadline
    deadline_margin_seconds: float = 600.0
    check_seconds: float = 30.0
    carry_unbilled: bool = False
    unbilled_check_seconds: float = 300.0  # a finalized invoice's period is looked at again this often

    @classmethod
    def of(cls, settings: Settings) -> GuardSettings:
        return cls(
            settings.invoice_release,
            settings.invoice_unproven,
            settings.invoice_deadline_margin_seconds,
            settings.invoice_check_seconds,
            settings.invoice_carry_unbilled,
            settings.invoice_unbilled_check_seconds,
        )


class InvoiceGuard:
    def __init__(self, reconciler: Reconciler, settings: GuardSettings, clock: Clock):
        self.reconciler = reconciler
        self.stripe = StripeInvoices(reconciler.reader)
        self.settings = settings
        self.clock = clock

    async def check_due(self, conn: psycopg.AsyncConnection) -> int:
        """Check every invoice due now that no other worker is checking; returns how many."""
        checked = 0
        for invoice_id in await db.due(conn, self.clock.utc()):
            try:
                async with locks.held(conn, f"stripemeter-invoice:{invoice_id}", "busy"):
                    await self.check(conn, invoice_id)
                    checked += 1
            except Busy:
                continue  # another worker has it, or reconciles its tenant: the next poll tries again
            except (stripe.StripeError, OSError) as exc:
                if isinstance(exc, stripe.InvalidRequestError) and exc.code == "resource_missing":
                    log.warning("invoice %s: Stripe has no such invoice (deleted?); not guarded", invoice_id)
                    reason = str(exc.user_message or exc)
                    await db.save_check(
                        conn, invoice_id, guard_state="unguarded", reason_code="missing", reason=reason
                    )
                    continue
                log.warning("invoice %s: Stripe failed during the check (%s); trying again", invoice_id, exc)
                await db.save_check(conn, invoice_id, next_check_at=self._next())
            except psycopg.Error:
                raise
            except Exception:  # one invoice must not stop the guard
                log.exception("invoice %s: the check failed; trying again later", invoice_id)
                await db.save_check(conn, invoice_id, next_check_at=self._next())
        return checked

    async def check(self, conn: psycopg.AsyncConnection, invoice_id: str) -> str:
        """One check of one invoice; returns the guard state it is left in."""
        row = await db.get(conn, invoice_id)
        if row is None or row["next_check_at"] > self.clock.utc():
            return "not due"  # checked by another worker since it was listed
        if row["guard_state"] == "finalized":  # a finalized invoice never changes: no need to read it
            known = {"id": invoice_id, "customer": row["stripe_customer"], "status": row["stripe_status"]}
            return await self._finalized(conn, row, known)
        invoice = await self.stripe.invoice(invoice_id)
        if invoice.get("status") != "draft":
            return await self._finalized(conn, row, invoice)
        lines = plan.metered_lines(invoice)
        meter_of_price = {line.price: await self.stripe.meter_of_price(line.price) for line in lines}
        meter_ids = {meter for meter in meter_of_price.values() if meter}
        event_names = await self.stripe.event_names(meter_ids) if meter_ids else {}
        customers, metrics_by_event = await streams_of_stripe_customer(conn, str(invoice["customer"]))
        mapped = [plan.CustomerMapping(t, c, a) for t, c, a in customers]
        targets, problems = plan.targets(lines, meter_of_price, event_names, mapped, metrics_by_event)
        checks = [await self._prove(conn, target) for target in targets]
        stripe_now = await self._stripe_now(invoice)
        # a held draft has no schedule of its own (the emulator clears automatically_finalizes_at): the
        # deadline stays the one first seen
        first = row["finalizes_at"].timestamp() if row["finalizes_at"] else None
        finalizes_at = first or invoice.get("automatically_finalizes_at")
        deadline = finalizes_at - self.settings.deadline_margin_seconds if finalizes_at else None
        decision = plan.decide(
            checks, problems, stripe_now=stripe_now, deadline=deadline, unproven=self.settings.unproven
        )
        proof = [plan.proof_line(c, await self._hours(conn, c.target)) for c in checks]
        proof += [plan.problem_line(p) for p in problems]
        first = targets[0] if targets else None
        common: dict[str, Any] = {
            "stripe_status": "draft",
            "lines": proof,
            "reason": decision.reason,
            "reason_code": decision.code,
            "finalizes_at": _at(finalizes_at),
            "deadline": _at(deadline),
            "test_clock": invoice.get("test_clock"),
            "period_start": _at(invoice.get("period_start")),
            "period_end": _at(invoice.get("period_end")),
        }
        if first is not None:
            common.update(tenant_id=first.tenant, customer_ref=first.customer_ref)
            common.update(period_start=_at(first.line.start), period_end=_at(first.line.end))
        if decision.kind == "ignore":
            if invoice.get("auto_advance") is False and row["hold_requests"]:  # held by us: give it back
                await self._send(conn, invoice_id, "release_requests", self.stripe.hand_back)
            await db.save_check(conn, invoice_id, guard_state="unguarded", **common)
            return self._done(invoice_id, "unguarded", decision)
        if decision.kind == "release":
            return await self._release(conn, row, invoice, decision, common)
        if invoice.get("auto_advance") is not False:
            # saved before the hold, which suspends the schedule automatically_finalizes_at describes
            await db.save_check(
                conn, invoice_id, finalizes_at=common["finalizes_at"], deadline=common["deadline"]
            )
            await self._send(conn, invoice_id, "hold_requests", self.stripe.hold)
            metrics.INVOICES_HELD.inc()
            log.warning("invoice %s held (auto_advance=false): %s", invoice_id, decision.reason)
        held_at = row["held_at"] or self.clock.utc()
        await db.save_check(
            conn, invoice_id, guard_state="held", held_at=held_at, next_check_at=self._next(), **common
        )
        return self._done(invoice_id, "held", decision)

    @staticmethod
    async def _send(
        conn: psycopg.AsyncConnection,
        invoice_id: str,
        counter: str,
        call: Callable[[str, int], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """A hold, hand-back or finalize: counted in PostgreSQL before it is sent, under that number."""
        return await call(invoice_id, await db.count_request(conn, invoice_id, counter))

    async def _prove(self, conn: psycopg.AsyncConnection, target: plan.Target) -> plan.LineCheck:
        """Reconcile the line's counters now (``Busy`` while another run of the tenant holds its lock: the
        next poll tries again, rather than every invoice waiting behind one tenant)."""
        request = RunRequest(
            target.tenant,
            metric=target.metric,
            period=target.period_name,
            trigger="invoice",
            customer_ref=target.customer_ref,
        )
        report = await self.reconciler.run(conn, request)  # Busy while the tenant is reconciled: retried
        item = next(
            (
                i
                for i in report["items"]
                if i["metric"] == target.metric and i["customerRef"] == target.customer_ref
            ),
            None,
        )
        if item is None:  # the period has not begun on the application's clock
            return plan.LineCheck(target, 0, 0, "not_started", 0, run_id=report["runId"])
        corrections = sum(
            1
            for a in report["adjusted"]
            if a.get("metric") == target.metric and a.get("customerRef") == target.customer_ref
        )
        return plan.LineCheck(
            target,
            int(item["local"]),
            int(item["stripe"]),
            str(item["status"]),
            int(item["inFlight"]),
            list(item["hours"]),
            corrections,
            report["runId"],
        )

    async def _release(
        self,
        conn: psycopg.AsyncConnection,
        row: dict[str, Any],
        invoice: dict[str, Any],
        decision: plan.Decision,
        common: dict[str, Any],
    ) -> str:
        invoice_id = str(invoice["id"])
        released = {
            **common,
            "released_at": row["released_at"] or self.clock.utc(),
            "release_reason": decision.reason,
        }
        if self.settings.release == "finalize":
            try:
                final = await self._send(conn, invoice_id, "release_requests", self.stripe.finalize)
            except stripe.InvalidRequestError:
                final = await self.stripe.invoice(invoice_id)  # finalized meanwhile (by Stripe, by hand)
                if final.get("status") == "draft":
                    raise
            if row["guard_state"] != "released":
                metrics.INVOICES_RELEASED.labels(decision.code).inc()
            log.info("invoice %s finalized by the guard: %s", invoice_id, decision.reason)
            await db.save_check(conn, invoice_id, guard_state="released", **released)
            return await self._finalized(conn, {**row, **released, "guard_state": "released"}, final)
        if invoice.get("auto_advance") is False:
            await self._send(conn, invoice_id, "release_requests", self.stripe.hand_back)
        if row["guard_state"] != "released":
            metrics.INVOICES_RELEASED.labels(decision.code).inc()
            log.info("invoice %s handed back to Stripe's schedule: %s", invoice_id, decision.reason)
        # Stripe finalizes it later; until then it is checked again (late usage can unprove it)
        await db.save_check(conn, invoice_id, guard_state="released", next_check_at=self._next(), **released)
        return self._done(invoice_id, "released", decision)

    async def _finalized(
        self, conn: psycopg.AsyncConnection, row: dict[str, Any], invoice: dict[str, Any]
    ) -> str:
        """Stripe's invoice is past the draft: its final quantities join the proof (once), and usage
        counted for its period since is reported as unbilled (and carried, when configured)."""
        invoice_id = str(invoice["id"])
        proof = row["lines"] or []
        if row["guard_state"] != "finalized":
            quantities = {line.line_id: line.quantity for line in plan.metered_lines(invoice)}
            proof = [
                {**line, "invoiceQuantity": quantities.get(line["lineId"], line.get("invoiceQuantity"))}
                for line in proof
            ]
        if not any(not line.get("problem") for line in proof):
            await db.save_check(
                conn, invoice_id, guard_state="unguarded", stripe_status=str(invoice.get("status"))
            )
            metrics.INVOICE_CHECKS.labels("unguarded").inc()
            return "unguarded"
        found = await self._unbilled(conn, invoice, proof, row["unbilled"] or [])
        transitions = invoice.get("status_transitions") or {}
        finalized_at = row["finalized_at"] or _at(transitions.get("finalized_at")) or self.clock.utc()
        await db.save_check(
            conn,
            invoice_id,
            guard_state="finalized",
            stripe_status=str(invoice.get("status")),
            lines=proof,
            unbilled=found,
            finalized_at=finalized_at,
            next_check_at=self._next_unbilled_check(row),
        )
        metrics.INVOICE_CHECKS.labels("finalized").inc()
        return "finalized"

    async def _unbilled(
        self,
        conn: psycopg.AsyncConnection,
        invoice: dict[str, Any],
        proof: list[dict[str, Any]],
        before: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """Each proven line's local total now against the quantity the invoice billed."""
        local: dict[str, int] = {}
        for line in proof:
            if not line.get("problem"):
                local[line["lineId"]] = await self._local_units(conn, line)
        recorded = {u["lineId"]: u for u in before}
        out: list[dict[str, Any]] = []
        for found in plan.unbilled(proof, local, before):
            line = next(x for x in proof if x["lineId"] == found.line_id)
            earlier = recorded.get(found.line_id, {})
            new_units = found.units - int(earlier.get("units", 0))
            if new_units > 0:
                metrics.INVOICE_UNBILLED_UNITS.inc(new_units)
                log.warning(
                    "invoice %s line %s (%s/%s/%s %s): %d units counted after it was finalized (%d in all)",
                    invoice["id"], found.line_id, line["tenantId"], line["metric"], line["customerRef"],
                    line["period"], new_units, found.units,
                )  # fmt: skip
            entry = {
                "lineId": found.line_id, "units": found.units, "carried": found.carried,
                "invoiceItems": list(earlier.get("invoiceItems", [])), "metric": line["metric"],
                "customerRef": line["customerRef"], "period": line["period"], "price": line["price"],
                "pendingCarry": earlier.get("pendingCarry"),
                **await self._amount(line["price"], found.units),
            }  # fmt: skip
            if self.settings.carry_unbilled and entry["pendingCarry"] is None and found.to_carry > 0:
                # recorded before it is sent: a check cut short sends the same request again
                key = f"smguard_{invoice['id']}_{found.line_id}_carry_{found.carried}_{found.units}"
                entry["pendingCarry"] = {"key": key, "units": found.to_carry, "toUnits": found.units}
            out.append(entry)
        if any(e["pendingCarry"] for e in out):
            await db.save_check(conn, str(invoice["id"]), unbilled=out)
            for entry in out:
                if entry["pendingCarry"]:
                    await self._carry(invoice, entry)
        return out

    async def _amount(self, price_id: str, units: int) -> dict[str, str]:
        """What ``units`` cost at the line's price, in the currency's smallest unit (cents)."""
        price = await self.stripe.price(price_id)
        unit = Decimal(str(price.get("unit_amount_decimal") or price.get("unit_amount") or 0))
        return {"amount": str(unit * units), "currency": str(price.get("currency", ""))}

    async def _carry(self, invoice: dict[str, Any], entry: dict[str, Any]) -> None:
        """Send a recorded carry: an invoice item on the customer's next invoice, exactly once."""
        pending = entry["pendingCarry"]
        created = await self.stripe.carry(
            str(invoice["customer"]), entry["price"], int(pending["units"]),
            f"{entry['metric']} used in {entry['period']} after invoice {invoice['id']}", pending["key"],
            {"stripemeter_invoice": str(invoice["id"]), "stripemeter_line": entry["lineId"]},
        )  # fmt: skip
        entry["carried"], entry["pendingCarry"] = int(pending["toUnits"]), None
        entry["invoiceItems"] = [*entry["invoiceItems"], str(created["id"])]
        log.info(
            "invoice %s line %s: %d unbilled units carried to the next invoice as %s",
            invoice["id"], entry["lineId"], pending["units"], created["id"],
        )  # fmt: skip

    async def _local_units(self, conn: psycopg.AsyncConnection, line: dict[str, Any]) -> int:
        """A proven line's local total now, in the whole units Stripe bills (PostgreSQL only: what
        reconciliation's local side is)."""
        start, end = datetime.fromisoformat(line["periodStart"]), datetime.fromisoformat(line["periodEnd"])
        rows = await recon_db.hours(conn, line["tenantId"], line["metric"], start, end, line["customerRef"])
        metric_map, _ = await stripe_mappings(conn, line["tenantId"])
        aggregation = metric_map[line["metric"]][1] if line["metric"] in metric_map else "sum"
        hours = build_hours(aggregation, [r for r in rows if start <= r["bucket"] < end], {})
        return total(aggregation, {bucket: hour.local for bucket, hour in hours.items()})

    async def _stripe_now(self, invoice: dict[str, Any]) -> float:
        """Stripe's clock for this invoice: its test clock's time, or the present."""
        clock = invoice.get("test_clock")
        return float(await self.stripe.clock_time(str(clock))) if clock else self.clock()

    async def _hours(self, conn: psycopg.AsyncConnection, target: plan.Target) -> int:
        start = datetime.fromtimestamp(target.line.start, tz=UTC)
        end = datetime.fromtimestamp(target.line.end, tz=UTC)
        return await db.hours_compared(conn, target.tenant, target.metric, target.customer_ref, start, end)

    def _next_unbilled_check(self, row: dict[str, Any]) -> datetime:
        """Soon while Stripe still takes usage of the period; never once it does not (36 days)."""
        now = self.clock.utc()
        if row["period_end"] is not None and row["period_end"] < now - UNBILLED_WINDOW:
            return NEVER
        return now + timedelta(seconds=self.settings.unbilled_check_seconds)

    def _next(self) -> datetime:
        return self.clock.utc() + timedelta(seconds=self.settings.check_seconds)

    @staticmethod
    def _done(invoice_id: str, state: str, decision: plan.Decision) -> str:
        metrics.INVOICE_CHECKS.labels(state).inc()
        log.info("invoice %s: %s (%s): %s", invoice_id, state, decision.code, decision.reason)
        return state


def _at(seconds: Any) -> datetime | None:
    return datetime.fromtimestamp(float(seconds), tz=UTC) if seconds is not None else None


POLL_SECONDS = 2.0
UNBILLED_WINDOW = timedelta(days=36)  # Stripe takes meter events up to 35 days old
NEVER = datetime(
    9999, 12, 31, tzinfo=UTC
)  # how often a worker looks for invoices due (an event makes one due at once)


async def run_guard(settings: Settings, guard: InvoiceGuard, stopping: asyncio.Event) -> None:
    """Every worker runs this: check due invoices until ``stopping``."""
    while not stopping.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(
                settings.database_url.value, autocommit=True
            ) as conn:
                while not stopping.is_set():
                    await guard.check_due(conn)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), POLL_SECONDS)
        except psycopg.Error as exc:
            log.warning("invoice guard: PostgreSQL failed (%s); connecting again", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), POLL_SECONDS)
