"""GET /v1/stripe/pushes: what reached Stripe per counter, and what waits or is parked (and why)."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from stripemeter.adapters.postgres.push_listing import list_pushes
from stripemeter.api import pages, params
from stripemeter.api.appkeys import POOL
from stripemeter.api.errors import json_response
from stripemeter.domain.timefmt import iso_seconds
from stripemeter.domain.units import micros_to_number

PUSH_KEY = (datetime, str, str)  # bucket, metric, customerRef: newest hour first
STATUSES = ("", "waiting", "pending", "synced", "unmapped", "parked")


async def get_pushes(request: web.Request) -> web.Response:
    tenant = params.tenant(request)
    status = params.choice(request, "status", STATUSES, "")
    asked = pages.page_request(request, PUSH_KEY)
    async with request.app[POOL].connection() as conn:
        rows = await list_pushes(conn, tenant, status or None, asked.limit + 1, asked.after)
    rows, next_cursor = pages.page(rows, asked, lambda r: (r["bucket"], r["metric"], r["customer_ref"]))
    return json_response(
        {
            "tenantId": tenant,
            "counters": [
                {
                    "metric": r["metric"],
                    "customerRef": r["customer_ref"],
                    "bucket": iso_seconds(r["bucket"]),
                    "local": micros_to_number(int(r["latest_micros"])),
                    "pushed": int(r["pushed_units"]),
                    "status": r["status"],
                    "reason": r["reason"],
                    "attempts": r["attempts"],
                    "pendingIdentifier": r["pending_identifier"],
                }
                for r in rows
            ],
            "nextCursor": next_cursor,
        }
    )
