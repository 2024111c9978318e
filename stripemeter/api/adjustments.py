"""POST /v1/adjustments (an audited signed correction counted into the bucket of ``ts`` and pushed
like any other change) and GET /v1/adjustments (both kinds: counter corrections and the reconciler's
corrections sent to Stripe)."""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
from aiohttp import web

from stripemeter.adapters.kafka.corrections import send_corrections
from stripemeter.adapters.postgres import adjustments as db
from stripemeter.adapters.postgres import locks
from stripemeter.adapters.postgres.counters import Applied, wait_applied
from stripemeter.adapters.postgres.mappings import customer_anchor
from stripemeter.api import pages, params
from stripemeter.api.appkeys import POOL, PRODUCER, SETTINGS
from stripemeter.api.errors import ApiError, bad_request, json_response
from stripemeter.api.heavy import heavy
from stripemeter.domain import periods
from stripemeter.domain.timefmt import iso_exact, iso_seconds
from stripemeter.domain.units import MICROS, format_micros, micros_to_number
from stripemeter.schemas.corrections import Correction
from stripemeter.schemas.events import MAX_MICROS, METRIC_RE
from stripemeter.schemas.topics import TopicNames

HOUR_S = 3600
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
    # the bounds of a usage event's ts (stripemeter.schemas.events.parse_ts): from 1970 to 1 h ahead. An
    # earlier ts made a bucket the writer could not read back, or a billing period before year 1
    if ts < EPOCH:
        raise bad_request("ts", "is before 1970")
    if ts.timestamp() > now + HOUR_S:
        raise bad_request("ts", "is more than 1 h in the future")
    return ts.astimezone(UTC)


@dataclass(frozen=True)
class Asked:
    """What a request asks for: the fields that make two requests with one Idempotency-Key the same."""

    tenant: str
    metric: str
    customer: str
    ts: datetime  # UTC, to the microsecond
    micros: int
    reason: str

    @property
    def bucket(self) -> datetime:
        return self.ts.replace(minute=0, second=0, microsecond=0)

    def differences(self, row: dict[str, Any]) -> list[str]:
        """The request fields in which ``row`` (recorded for the same key) differs from this request."""
        stored = {
            "tenantId": (row["tenant_id"], self.tenant),
            "metric": (row["metric"], self.metric),
            "customerRef": (row["customer_ref"], self.customer),
            "ts": (row["ts"], self.ts),
            "delta": (int(row["delta_micros"]), self.micros),
            "reason": (row["reason"], self.reason),
        }
        return [name for name, (was, now) in stored.items() if was != now] or (
            ["target"] if row["target"] != "counter" else []
        )


def shown_key(key: str) -> str:
    """The key as sent, printable (a header's non-UTF-8 bytes arrive as surrogates), and bounded."""
    text = key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text if len(text) <= 200 else text[:200] + "..."


async def post_adjustment(request: web.Request) -> web.Response:
    """Stripe's idempotency semantics with an ``Idempotency-Key`` (scoped to the tenant): the same key
    and body return the stored answer and send nothing; the same key with another body is a 409; a
    retry at any later time applies once, from the row in PostgreSQL (never from the meter's dedupe
    entry, which expires after the lateness window). Without the header: a new adjustment each time.
    A retry while the first one runs is answered 409 ``busy`` with Retry-After."""
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
    asked = Asked(tenant, metric, customer, ts, micros, reason)
    key = request.headers.get("Idempotency-Key")
    # a header's non-UTF-8 bytes arrive as surrogates: hash the bytes that were sent
    material = f"{tenant}\x1f{key}".encode("utf-8", "surrogateescape") if key else None
    digest = hashlib.sha256(material).hexdigest()[:24] if material else uuid.uuid4().hex[:24]
    adjustment_id = "adj_" + digest
    async with heavy(request, tenant), request.app[POOL].connection() as conn:
        if not key:
            return await _adjust(request, conn, adjustment_id, asked, None)
        # a retry while the first request still runs (it may wait for the counter up to
        # STRIPEMETER_APPLY_WAIT_SECONDS) is told 409 busy; once done, a retry gets the stored answer
        busy = f'Idempotency-Key "{shown_key(key)}": a request with this key is being applied; retry later'
        async with locks.held(conn, db.lock_name(adjustment_id), busy):
            return await _adjust(request, conn, adjustment_id, asked, key)


async def _adjust(
    request: web.Request, conn: psycopg.AsyncConnection, adjustment_id: str, asked: Asked, key: str | None
) -> web.Response:
    settings = request.app[SETTINGS]
    row = await db.find(conn, adjustment_id) if key else None
    if row is not None:
        assert key is not None
        differs = asked.differences(row)
        if differs:
            raise ApiError(
                "idempotency_conflict",
                f'Idempotency-Key "{shown_key(key)}" was used before with another request (it differs in'
                f" {', '.join(differs)}): send a new key for a new adjustment",
                field="Idempotency-Key",
                status=409,
            )
        if row["response_status"] is not None:  # done: the same answer, nothing sent again
            return _json_text(row["response_text"], row["response_status"], {"Idempotent-Replayed": "true"})
        # recorded by a request that did not finish: finish it (below), sending only if never sent
    else:
        if await db.aggregation_of(conn, asked.tenant, asked.metric) == "last":
            raise bad_request("metric", "is a 'last' metric: a signed correction has no meaning for it")
        row = await db.record(
            conn, adjustment_id, (asked.tenant, asked.metric, asked.customer), asked.bucket, asked.ts,
            asked.micros, asked.reason, settings.clock.utc(),
        )  # fmt: skip
    if row["status"] == "pending":
        # never confirmed sent: send it (again). Sent twice, the same correction id is applied once
        # by the meter while its dedupe entry lives (the lateness window, after the first send)
        bucket_ms = int(row["bucket"].timestamp() * 1000)
        correction = Correction(
            adjustment_id, row["tenant_id"], row["metric"], row["customer_ref"], bucket_ms, "add",
            int(row["delta_micros"]), bucket_ms,
        )  # fmt: skip
        keyed = TopicNames(settings.topic_prefix, settings.app_id).keyed
        (sent,) = await send_corrections(request.app[PRODUCER], keyed, [correction])
        row = await db.mark_applied(conn, adjustment_id, settings.clock.utc(), sent.partition, sent.offset)
    # read your writes: answer once the counter shows it, or say that it does not yet
    visible = row["visible_at"] is not None
    if not visible and row["keyed_offset"] is not None:
        target = Applied(
            row["tenant_id"], row["metric"], row["customer_ref"], row["bucket"], row["keyed_partition"],
            row["keyed_offset"],
        )  # fmt: skip
        visible = await wait_applied(conn, [target], settings.apply_wait_seconds)
        if visible:
            row = await db.mark_visible(conn, adjustment_id, settings.clock.utc())
    anchor = await customer_anchor(conn, asked.tenant, asked.customer)
    grace = timedelta(seconds=settings.invoice_grace_seconds)
    _, (note,) = periods.notes_for([(anchor, asked.bucket, asked.micros)], settings.clock.utc(), grace)
    answer = {
        **view(row),
        "period": {**note.period.wire(), "state": note.state},
        "warnings": [w for w in [note.warning(grace)] if w],
    }
    if not visible:
        answer["message"] = (
            f"sent to the meter; the counter did not show it within {settings.apply_wait_seconds:.0f} s (is a"
            " worker running, or behind?): GET /v1/adjustments lists it with visible: true once it does"
        )
    status = 201 if visible else 202
    text = orjson.dumps(answer).decode()
    if key:
        await db.store_response(conn, adjustment_id, status, text)
    return _json_text(text, status)


def _json_text(text: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=text.encode(), status=status, content_type="application/json", headers=headers)


def view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "adjustmentId": row["adjustment_id"],
        "tenantId": row["tenant_id"],
        "metric": row["metric"],
        "customerRef": row["customer_ref"],
        "ts": iso_exact(row["ts"]),
        "bucket": iso_seconds(row["bucket"]),
        "delta": micros_to_number(int(row["delta_micros"])),
        "reason": row["reason"],
        "target": row["target"],
        "status": row["status"],
        "runId": row["run_id"],
        "visible": row["visible_at"] is not None if row["target"] == "counter" else None,
        "createdAt": iso_exact(row["created_at"]),
    }


async def list_adjustments(request: web.Request) -> web.Response:
    tenant = params.tenant(request)
    metric = request.query.get("metric") or None
    customer = request.query.get("customerRef") or None
    asked = pages.page_request(request, (datetime, str))  # createdAt, adjustmentId: newest first
    async with request.app[POOL].connection() as conn:
        rows = await db.list_rows(conn, tenant, metric, customer, asked.limit + 1, asked.after)
    rows, next_cursor = pages.page(rows, asked, lambda r: (r["created_at"], r["adjustment_id"]))
    return json_response(
        {"tenantId": tenant, "adjustments": [view(r) for r in rows], "nextCursor": next_cursor}
    )
