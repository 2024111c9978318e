"""POST /v1/adjustments (an audited signed correction counted into the bucket of ``ts`` and pushed
like any other change) and GET /v1/adjustments (both kinds: counter corrections and the reconciler's
corrections sent to Stripe)."""

from __future__ import annotations

import hashlib
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from stripemeter.api import params
from stripemeter.api.appkeys import POOL, PRODUCER, SETTINGS
from stripemeter.api.errors import bad_request, json_response
from stripemeter.streams.control import Correction, send_corrections
from stripemeter.streams.deltas import micros_to_number

from stripemeter.db import adjustments as db
from stripemeter.db.counters import wait_applied
from stripemeter.db.mappings import customer_anchor
from stripemeter.events import MAX_MICROS, METRIC_RE, MICROS, format_micros
from stripemeter.reconcile import periods
from stripemeter.replay.runner import shown_when_applied
from stripemeter.topics import TopicNames

HOUR_S = 3600


def _delta_micros(raw: Any) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw) or raw == 0:
        raise bad_request("delta", "is required: a finite, non-zero number (negative to subtract)")
    if abs(raw) * MICROS > MAX_MICROS:  # corrections travel as 64-bit JSON integers, like quantities
        raise bad_request("delta", f"is beyond ±{format_micros(MAX_MICROS)}")
    micros = round(raw * MICROS)
    if micros == 0 or abs(raw * MICROS - micros) > 1e-6 * max(1.0, abs(raw)):
        raise bad_request("delta", "has more than 6 decimals")
    return micros


def _ts(raw: Any, now: float) -> datetime:
    if not isinstance(raw, str):
        raise bad_request("ts", "is required: an RFC 3339 time with an offset")
    try:
        ts = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request("ts", "must be an RFC 3339 time, e.g. 2026-11-20T14:00:00Z") from None
    if ts.tzinfo is None:
        raise bad_request("ts", "must carry a UTC offset")
    if ts.timestamp() > now + HOUR_S:
        raise bad_request("ts", "is more than 1 h in the future")
    try:
        return ts.astimezone(UTC)
    except OverflowError:  # before year 1 in UTC
        raise bad_request("ts", "is out of range") from None


async def post_adjustment(request: web.Request) -> web.Response:
    body = await params.json_object(request)
    tenant = params.body_tenant(request, body)
    metric = params.body_text(body, "metric", 100)
    if not METRIC_RE.fullmatch(metric):
        raise bad_request("metric", f"must match {METRIC_RE.pattern}")
    customer = params.body_text(body, "customerRef")
    settings = request.app[SETTINGS]
    ts = _ts(body.get("ts"), settings.clock())
    micros = _delta_micros(body.get("delta"))
    reason = params.body_text(body, "reason", 500)
    key = request.headers.get("Idempotency-Key")
    # a header's non-UTF-8 bytes arrive as surrogates: hash the bytes that were sent
    material = f"{tenant}\x1f{key}".encode("utf-8", "surrogateescape") if key else None
    digest = hashlib.sha256(material).hexdigest()[:24] if material else uuid.uuid4().hex[:24]
    adjustment_id = "adj_" + digest
    bucket = ts.replace(minute=0, second=0, microsecond=0)
    async with request.app[POOL].connection() as conn:
        if await db.aggregation_of(conn, tenant, metric) == "last":
            raise bad_request("metric", "is a 'last' metric: a signed correction has no meaning for it")
        row = await db.record(
            conn, adjustment_id, (tenant, metric, customer), bucket, ts, micros, reason, settings.clock.utc()
        )
        # the same correction id again (a retried request) is applied once by the meter
        correction = Correction(
            adjustment_id, tenant, metric, customer, int(bucket.timestamp() * 1000), "add",
            int(row["delta_micros"]), int(bucket.timestamp() * 1000),
        )  # fmt: skip
        keyed = TopicNames(settings.topic_prefix, settings.app_id).keyed
        (sent,) = await send_corrections(request.app[PRODUCER], keyed, [correction])
        row = await db.mark_applied(conn, adjustment_id, settings.clock.utc(), sent.partition, sent.offset)
        # read your writes: answer once the counter shows it, or say that it does not yet
        visible = await wait_applied(conn, [shown_when_applied(sent)], settings.apply_wait_seconds)
        if visible:
            row = await db.mark_visible(conn, adjustment_id, settings.clock.utc())
        anchor = await customer_anchor(conn, tenant, customer)
    grace = timedelta(seconds=settings.invoice_grace_seconds)
    _, (note,) = periods.notes_for([(anchor, bucket, micros)], settings.clock.utc(), grace)
    body = {
        **view(row),
        "period": {**note.period.wire(), "state": note.state},
        "warnings": [w for w in [note.warning(grace)] if w],
    }
    if not visible:
        body["message"] = (
            f"sent to the meter; the counter did not show it within {settings.apply_wait_seconds:.0f} s (is a"
            " worker running, or behind?): GET /v1/adjustments lists it with visible: true once it does"
        )
    return json_response(body, status=201 if visible else 202)


def view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "adjustmentId": row["adjustment_id"],
        "tenantId": row["tenant_id"],
        "metric": row["metric"],
        "customerRef": row["customer_ref"],
        "ts": row["ts"].astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "bucket": row["bucket"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "delta": micros_to_number(int(row["delta_micros"])),
        "reason": row["reason"],
        "target": row["target"],
        "status": row["status"],
        "runId": row["run_id"],
        "visible": row["visible_at"] is not None if row["target"] == "counter" else None,
        "createdAt": row["created_at"].astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }


async def list_adjustments(request: web.Request) -> web.Response:
    tenant = params.tenant(request)
    metric = request.query.get("metric") or None
    customer = request.query.get("customerRef") or None
    limit = params.integer(request, "limit", 100, 1, 1000)
    async with request.app[POOL].connection() as conn:
        rows = await db.list_rows(conn, tenant, metric, customer, limit)
    return json_response({"tenantId": tenant, "adjustments": [view(r) for r in rows]})
