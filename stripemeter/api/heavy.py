"""The heavy routes' admission: ``async with heavy(request, tenant):`` around the work of a replay, a
reconciliation run or an adjustment (``stripemeter.domain.concurrency``).

Over the tenant's cap (``STRIPEMETER_HEAVY_REQUESTS_PER_TENANT``): 429 ``too_many_heavy_requests``;
over the cap of all tenants together (``STRIPEMETER_HEAVY_REQUESTS_TOTAL``): 503 ``overloaded``;
both with ``Retry-After``. The rest of the database pool stays free for reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from stripemeter.api.appkeys import HEAVY, SETTINGS
from stripemeter.domain import metrics
from stripemeter.domain.errors import Backpressure, Transient

RETRY_AFTER_SECONDS = 2.0  # a dry-run takes well under that; a reconciliation run against Stripe, seconds


@asynccontextmanager
async def heavy(request: web.Request, tenant: str) -> AsyncIterator[None]:
    limit = request.app[HEAVY]
    full = limit.try_enter(tenant)
    if full is not None:
        metrics.API_HEAVY_REFUSED.labels(full).inc()
        settings = request.app[SETTINGS]
        if full == "tenant":
            raise Backpressure(
                f"tenantId: {settings.heavy_requests_per_tenant} replays, reconciliation runs or adjustments"
                " of this tenant are running; retry later",
                code="too_many_heavy_requests",
                retry_after=RETRY_AFTER_SECONDS,
            )
        raise Transient(
            f"{settings.heavy_requests_total} replays, reconciliation runs or adjustments are running;"
            " retry later",
            code="overloaded",
            retry_after=RETRY_AFTER_SECONDS,
        )
    try:
        yield
    finally:
        limit.leave(tenant)
