"""GET /v1/usage/history"""

from __future__ import annotations

from datetime import datetime, timedelta

from aiohttp import web

from stripemeter.adapters.postgres.usage import Granularity, usage_history
from stripemeter.api import params
from stripemeter.api.appkeys import POOL, SETTINGS
from stripemeter.api.errors import bad_request, json_response
from stripemeter.domain.timefmt import iso_seconds
from stripemeter.domain.units import micros_to_number

# The longest window one answer covers, per granularity: a bounded series (about 2,200 points)
MAX_WINDOW: dict[Granularity, timedelta] = {"hour": timedelta(days=92), "day": timedelta(days=5 * 366)}


def month_start(moment: datetime) -> datetime:
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


async def get_history(request: web.Request) -> web.Response:
    tenant = params.tenant(request)
    metric = params.required(request, "metric")
    customer = params.required(request, "customerRef")
    granularity: Granularity = params.choice(request, "granularity", ("hour", "day"), "hour")
    now = request.app[SETTINGS].clock.utc()
    until = params.optional_time(request, "until") or now.replace(
        minute=0, second=0, microsecond=0
    ) + timedelta(hours=1)
    since = params.optional_time(request, "since") or month_start(now)
    if since >= until:
        raise bad_request("since", "must be before until")
    if until - since > MAX_WINDOW[granularity]:
        raise bad_request(
            "since",
            f"the window may span at most {MAX_WINDOW[granularity].days} days at granularity {granularity}",
        )
    async with request.app[POOL].connection() as conn:
        rows = await usage_history(conn, tenant, metric, customer, since, until, granularity)
    series = [{"start": iso_seconds(start), "value": micros_to_number(m)} for start, m in rows]
    total = micros_to_number(sum(m for _, m in rows))
    return json_response(
        {
            "tenantId": tenant,
            "metric": metric,
            "customerRef": customer,
            "granularity": granularity,
            "since": iso_seconds(since),
            "until": iso_seconds(until),
            "series": series,
            "total": total,
        }
    )
