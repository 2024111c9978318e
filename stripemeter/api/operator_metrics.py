"""The two /metrics: the public one, and the operator listener's with the series that name tenants.

The API's ``/metrics`` (no key, on the API's port) serves the default registry: counts and
latencies that name no tenant, customer or metric (``stripemeter/domain/metrics.py``). The operator
listener (``STRIPEMETER_OPERATOR_METRICS_HOST`` / ``_PORT``, loopback by default, 0 turns it off)
serves those plus the ``OPERATOR`` registry: the drift gauges per (tenant, metric, customer, period),
the held invoices, the API-key lookups and cache. Prometheus scrapes the operator listener. Each drift
gauge holds at most ``STRIPEMETER_OPERATOR_METRICS_MAX_SERIES`` label sets: the worst items, the rest
counted in ``stripemeter_operator_series_left_out``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import REGISTRY, Gauge, generate_latest

from stripemeter.adapters.postgres import invoices
from stripemeter.adapters.postgres.reconciliation import (
    latest_version,
    not_at_parity_counts,
    worst_not_at_parity,
)
from stripemeter.api.appkeys import GAUGES_VERSION, POOL, SETTINGS
from stripemeter.domain import metrics

# each drift gauge: the column it is worst by, and its family name
GAUGES: dict[str, tuple[Gauge, str]] = {
    "diff_pct": (metrics.RECONCILIATION_DIFF_PCT, "reconciliation_diff_pct"),
    "diff_abs": (metrics.RECONCILIATION_DIFF_ABS, "reconciliation_diff_abs"),
}
STATUSES = ("within_epsilon", "drift")


async def refresh_reconciliation_gauges(api: web.Application) -> None:
    """The drift gauges show the latest verdict of the worst items not at parity, whichever process
    reconciled them; a series disappears when its item is back at parity. Reloaded only when a run
    has finished since the last scrape."""
    limit = api[SETTINGS].operator_metrics_max_series
    async with api[POOL].connection() as conn:
        version = await latest_version(conn)
        if version == api[GAUGES_VERSION].get("version"):
            return
        counts = await not_at_parity_counts(conn)
        worst = {order: await worst_not_at_parity(conn, order, limit) for order in GAUGES}
    total = sum(counts.values())
    for status in STATUSES:
        metrics.RECONCILIATION_OFF_PARITY.labels(status).set(counts.get(status, 0))
    for order, (gauge, family) in GAUGES.items():
        gauge.clear()
        for tenant, metric, customer, period, pct, diff in worst[order]:
            gauge.labels(tenant, metric, customer, period).set(pct if order == "diff_pct" else diff)
        metrics.OPERATOR_SERIES_LEFT_OUT.labels(family).set(total - len(worst[order]))
    api[GAUGES_VERSION]["version"] = version


async def refresh_invoice_gauges(api: web.Application) -> None:
    """Invoices by guard state, and each held draft with how long it has been held (the alert's
    series; the longest held ``STRIPEMETER_OPERATOR_METRICS_MAX_SERIES``)."""
    settings = api[SETTINGS]
    async with api[POOL].connection() as conn:
        states = await invoices.counts_by_state(conn)
        held = await invoices.held_invoices(conn, settings.operator_metrics_max_series)
    for state in invoices.STATES:
        metrics.INVOICES.labels(state).set(states.get(state, 0))
    now = settings.clock()
    metrics.INVOICE_HELD_SECONDS.clear()
    for row in held:
        since = row["held_at"].timestamp() if row["held_at"] else now
        metrics.INVOICE_HELD_SECONDS.labels(
            row["tenant_id"] or "", row["invoice_id"], row["stripe_customer"], row["reason_code"] or ""
        ).set(max(now - since, 0.0))


def exposition(operator: bool) -> bytes:
    """Prometheus text: the public registry, and with ``operator`` the operator's series too."""
    body = generate_latest(REGISTRY)
    return body + generate_latest(metrics.OPERATOR) if operator else body


def metrics_handler(api: web.Application, operator: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        await refresh_reconciliation_gauges(api)
        await refresh_invoice_gauges(api)
        return web.Response(body=exposition(operator), content_type="text/plain", charset="utf-8")

    return handler


def create_operator_app(api: web.Application, middlewares: Sequence[Middleware] = ()) -> web.Application:
    """The operator listener's app: ``GET /metrics`` with every series, read through ``api``'s pool
    (``middlewares``: the API's error answers, so a busy pool is a 503 here too)."""
    app = web.Application(middlewares=middlewares)
    app.router.add_get("/metrics", metrics_handler(api, operator=True))
    return app


def operator_listener(
    api: web.Application, middlewares: Sequence[Middleware] = ()
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context for ``api`` that serves the operator app while ``api`` runs (after its pool
    is open): ``api.cleanup_ctx.append(operator_listener(api))``."""

    async def serve(_: web.Application) -> AsyncIterator[None]:
        settings = api[SETTINGS]
        runner = web.AppRunner(create_operator_app(api, middlewares), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.operator_metrics_host, settings.operator_metrics_port).start()
        yield
        await runner.cleanup()

    return serve
