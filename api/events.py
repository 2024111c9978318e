"""GET /v1/events and GET /v1/watermarks"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from stripemeter.adapters.postgres.events import list_events, list_watermarks
from stripemeter.api import params
from stripemeter.api.appkeys import POOL, SETTINGS
from stripemeter.api.errors import bad_request, json_response
from stripemeter.domain.timefmt import iso_millis
from stripemeter.domain.units import micros_to_number

MAX_LIMIT = 1000


def encode_cursor(row: dict[str, Any]) -> str:
    values = [
        row["ts"].isoformat(),
        row["source_topic"],
        row["source_partition"],
        row["source_offset"],
        row["source_index"],
    ]
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode()


def decode_cursor(text: str) -> tuple[Any, ...]:
    try:
        ts, topic, partition, offset, index = orjson.loads(base64.urlsafe_b64decode(text.encode()))
        return (datetime.fromisoformat(ts), str(topic), int(partition), int(offset), int(index))
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise bad_request("cursor", "is not a cursor this API returned") from None


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
    limit = params.integer(request, "limit", default=100, low=1, high=MAX_LIMIT)
    cursor = request.query.get("cursor")
    async with request.app[POOL].connection() as conn:
        rows = await list_events(
            conn,
            tenant,
            request.query.get("metric"),
            request.query.get("customerRef"),
            params.optional_time(request, "since"),
            params.optional_time(request, "until"),
            limit,
            decode_cursor(cursor) if cursor else None,
        )
    next_cursor = encode_cursor(rows[-1]) if len(rows) == limit else None
    return json_response({"events": [event_view(r) for r in rows], "nextCursor": next_cursor})


async def get_watermarks(request: web.Request) -> web.Response:
    tenant = params.tenant(request)
    metric = params.required(request, "metric")
    default_lateness = request.app[SETTINGS].lateness_seconds
    async with request.app[POOL].connection() as conn:
        rows = await list_watermarks(conn, tenant, metric, request.query.get("customerRef"))
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
        }
    )
