"""POST /v1/stripe/webhook: Stripe's event destination for meter error reports and invoices.

Invoices come as v1 snapshot events (``invoice.created``, ``invoice.updated``, ``invoice.finalized``
and the other ``invoice.*``): each one records its invoice as due for the pre-invoice guard
(services/invoice_guard.py) and is answered at once; the guard reads the invoice from Stripe itself,
so a duplicate, late or out-of-order event changes nothing.

Stripe signs every delivery (``Stripe-Signature``, checked with ``STRIPE_WEBHOOK_SECRET`` by the
``stripe`` package), so this route needs no API key. A ``v1.billing.meter.error_report_triggered``
notification is a thin event: the full event is read from Stripe, and every request it names is
marked as dropped and its counter parked with Stripe's reason (core/error_reports.py). Other
event types are acknowledged and ignored. A report may name the reconciler's own corrections
(``smrec_...``): they are recorded as dropped, not applied (adapters/postgres/reconciliation.drop_correction).
Answering 2xx tells Stripe not to deliver again; a failure here answers 5xx, and Stripe retries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import orjson
import stripe
from aiohttp import web
from stripe.events import V1BillingMeterErrorReportTriggeredEventNotification as ErrorReportNotification

from stripemeter.adapters.postgres.invoices import Heard, record_event
from stripemeter.adapters.postgres.push_drops import Dropped, drop_request
from stripemeter.adapters.postgres.reconciliation import DroppedCorrection, drop_correction
from stripemeter.api.appkeys import POOL, RECONCILER, SETTINGS
from stripemeter.api.errors import ApiError, json_response
from stripemeter.core.error_reports import ReportedRequest, meter_changed, reported_requests
from stripemeter.core.push_plan import TEMPORARY_CODES
from stripemeter.domain import metrics
from stripemeter.domain.timefmt import iso_seconds

log = logging.getLogger(__name__)

PATH = "/v1/stripe/webhook"
T = TypeVar("T")


async def post_webhook(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    if not settings.stripe_webhook_secret or RECONCILER not in request.app:
        raise ApiError(  # nothing to verify a delivery with: refused
            "webhook_not_configured",
            "set STRIPE_WEBHOOK_SECRET and Stripe's settings to receive events",
            status=403,
        )
    reader = request.app[RECONCILER].reader
    raw = await request.read()
    if _is_snapshot(raw):
        return await _snapshot_event(request, reader.client, raw)
    notification = verified(request, lambda secret: reader.client.parse_event_notification(
        raw, request.headers.get("Stripe-Signature"), secret
    ))  # fmt: skip
    # Stripe picks the notification's class by its `type`: this class is exactly the type
    # v1.billing.meter.error_report_triggered, and its fetched event has the report's typed `data`.
    if not isinstance(notification, ErrorReportNotification):
        return json_response({"received": True, "handled": False})
    event = await reader.call(notification.fetch_event_async)  # within the budget, 429s waited out
    reported = reported_requests(event.data)
    if meter_changed(event.data):
        reader.meters.invalidate()
    parked: list[dict[str, str]] = []
    corrections: list[dict[str, str]] = []
    async with request.app[POOL].connection() as conn:
        for r in reported:
            metrics.STRIPE_ERROR_REPORTS.labels(r.code).inc()
            reason, now = f"Stripe dropped it ({r.code}): {r.message}", settings.clock.utc()
            # a refusal that passes later by its code alone (a clock ahead of Stripe's): due again
            dropped = await drop_request(conn, r.identifier, reason, now, temporary=r.code in TEMPORARY_CODES)
            if dropped is not None:
                parked.append(_dropped_push(r, dropped))
                continue
            correction = await drop_correction(conn, r.identifier, reason, now)
            if correction is not None:  # not ours, or reported before, when neither
                corrections.append(_dropped_correction(r, correction))
    return json_response(
        {"received": True, "handled": True, "parked": parked, "droppedCorrections": corrections}
    )


def verified(request: web.Request, parse: Callable[[str], T]) -> T:
    """The delivery parsed with the first of ``STRIPE_WEBHOOK_SECRET``'s comma-separated secrets whose
    signature matches (one per Stripe event destination: thin and snapshot events need two)."""
    secrets = [s.strip() for s in request.app[SETTINGS].stripe_webhook_secret.value.split(",") if s.strip()]
    for secret in secrets:
        try:
            return parse(secret)
        except stripe.SignatureVerificationError:
            continue
        except (ValueError, KeyError):
            raise ApiError("invalid_event", "the body is not a Stripe event", field="body") from None
    raise ApiError("invalid_signature", "Stripe-Signature does not match", field="Stripe-Signature")


def _is_snapshot(raw: bytes) -> bool:
    """A v1 snapshot event (``"object": "event"``), not a v2 thin notification."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and body.get("object") == "event"


async def _snapshot_event(request: web.Request, client: stripe.StripeClient, raw: bytes) -> web.Response:
    settings = request.app[SETTINGS]
    event = verified(
        request, lambda secret: client.construct_event(raw, request.headers.get("Stripe-Signature"), secret)
    )
    invoice = event.data.object if event.type.startswith("invoice.") else None
    if invoice is None or not getattr(invoice, "id", None) or not getattr(invoice, "customer", None):
        return json_response({"received": True, "handled": False})  # e.g. invoice.upcoming: no invoice yet
    heard = Heard(str(invoice.id), str(invoice.customer), str(invoice.status), event.type)
    async with request.app[POOL].connection() as conn:
        await record_event(conn, heard, settings.clock.utc())
    log.info("%s for invoice %s (%s, customer %s): due for the guard", event.type, heard.invoice_id,
             heard.stripe_status, heard.stripe_customer)  # fmt: skip
    return json_response({"received": True, "handled": True, "invoice": heard.invoice_id})


def _dropped_push(r: ReportedRequest, dropped: Dropped) -> dict[str, str]:
    tenant, metric, customer, bucket = dropped.key
    log.warning(
        "Stripe dropped %s (%s: %s): %s/%s/%s @%s %s, %d units no longer counted as delivered%s",
        r.identifier, r.code, r.message, tenant, metric, customer, bucket.isoformat(),
        "due again (its mapping changed since)" if dropped.mapping_fixed else "parked",
        dropped.value - dropped.covered,
        f" ({dropped.covered} made up for by reconciliation already)" if dropped.covered else "",
    )  # fmt: skip
    return {"identifier": r.identifier, "code": r.code, "tenantId": tenant, "metric": metric,
            "customerRef": customer, "bucket": iso_seconds(bucket)}  # fmt: skip


def _dropped_correction(r: ReportedRequest, dropped: DroppedCorrection) -> dict[str, str]:
    tenant, metric, customer, bucket = dropped.key
    due = f" ({dropped.given_back} units it made up for are due again)" if dropped.given_back else ""
    log.warning(
        "Stripe dropped reconciliation correction %s (%s: %s): %s/%s/%s @%s %+d was %s, recorded as"
        " dropped; the next reconciliation judges the hour again%s",
        r.identifier, r.code, r.message, tenant, metric, customer, bucket.isoformat(), dropped.value,
        dropped.was, due,
    )  # fmt: skip
    return {"identifier": r.identifier, "code": r.code, "tenantId": tenant, "metric": metric,
            "customerRef": customer, "bucket": iso_seconds(bucket)}  # fmt: skip
