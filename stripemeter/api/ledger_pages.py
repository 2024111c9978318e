"""GET /v1/events and GET /v1/watermarks"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from stripemeter.adapters.postgres.ledger_reads import list_events, list_watermarks
from stripemeter.api import pages, params
from stripemeter.api.appkeys import POOL, SETTINGS
from stripemeter.api.errors import json_response
from stripemeter.api.retention import check_since
from stripemeter.domain.timefmt import iso_millis
from stripemeter.domain.units import micros_to_number

EVENT_KEY = (datetime, str, int, int, int)  # ts, then the source: newest first
WATERMARK_KEY = (str,)  # customerRef


def event_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        row["ts"],
        row["source_topic"],
        row["source_partition"],
        row["source_offset"],
        row["source_index"],
    )


def event_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "tenantId": row["tenant_id"],
        "metric": row["metric"],
        "customerRef": row["customer_ref"],
        "quantity": micros_to_number(int(row["quantity_micros"])),
        "ts": iso_millis(row["ts"]),
        "idempotencyKey": row["idempotency_key"],
        "idempotencyKeyDerived": row["key_derived"],
        "resourceId": row["resource_id"],
        "meta": row["meta"],
        "outcome": row["outcome"],
        "keyReusedAcrossCustomers": row["key_reused"],
        "source": {
            "topic": row["source_topic"],
            "partition": row["source_partition"],
            "offset": row["source_offset"],
            "index": row["source_index"],
        },
        "recordedAt": iso_millis(row["recorded_at"]),
    }


async def get_events(request: web.Request) -> web.Response:
    tenant = params.tenant(request)
    asked = pages.page_request(request, EVENT_KEY)
    since = params.optional_time(request, "since")
    if since is not None:
        settings = request.app[SETTINGS]
        check_since(since, settings.clock.utc(), settings.ledger_retention_days)
    async with request.app[POOL].connection() as conn:
        rows = await list_events(
            conn,
            tenant,
            request.query.get("metric"),
            request.query.get("customerRef"),
            since,
            params.optional_time(request, "until"),
            asked.limit + 1,
            asked.after,
        )
    rows, next_cursor = pages.page(rows, asked, event_key)
    return json_response({"events": [event_view(r) for r in rows], "nextCursor": next_cursor})


async def get_watermarks(request: web.Request) -> web.Response:
    tenant = params.tenant(request)
    metric = params.required(request, "metric")
    default_lateness = request.app[SETTINGS].lateness_seconds
    asked = pages.page_request(request, WATERMARK_KEY)
    after = asked.after[0] if asked.after else None
    async with request.app[POOL].connection() as conn:
        rows = await list_watermarks(
            conn, tenant, metric, request.query.get("customerRef"), asked.limit + 1, after
        )
    rows, next_cursor = pages.page(rows, asked, lambda r: (r["customer_ref"],))
    return json_response(
        {
            "tenantId": tenant,
            "metric": metric,
            "watermarks": [
                {
                    "customerRef": r["customer_ref"],
                    "watermark": iso_millis(r["watermark"]),
                    "latenessSeconds": default_lateness
                    if r["lateness_seconds"] is None
                    else r["lateness_seconds"],
                }
                for r in rows
            ],
            "nextCursor": next_cursor,
        }
    )
