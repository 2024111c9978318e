"""GET /v1/reconciliation/summary (the latest verdicts) and POST /v1/reconciliation/run (one cycle now)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from stripemeter.adapters.postgres import reconciliation as db
from stripemeter.api import params
from stripemeter.api.appkeys import POOL, RECONCILER, SETTINGS
from stripemeter.api.auth import check_operator
from stripemeter.api.csv_export import csv_text
from stripemeter.api.errors import ApiError, bad_request, json_response
from stripemeter.api.heavy import heavy
from stripemeter.domain import periods
from stripemeter.domain.timefmt import iso_exact, iso_seconds
from stripemeter.schemas.events import METRIC_RE, TENANT_RE
from stripemeter.services.reconciler import RunRequest, overall_status, totals

CSV_COLUMNS = (
    "customerRef", "local", "stripe", "diffAbs", "diffPct", "status", "action", "inFlight", "causes",
    "checkedAt",
)  # fmt: skip


def _period(request: web.Request, raw: str | None) -> str:
    if raw is None:
        return periods.current_name(request.app[SETTINGS].clock.utc())
    periods.parse_name(raw)  # PeriodError: 400 naming the period (api/errors.py)
    return raw


def _checked(value: str, field: str, pattern: Any) -> str:
    if not pattern.fullmatch(value):
        raise bad_request(field, f"must match {pattern.pattern}")
    return value


def _number(value: Any) -> int | float:
    number = float(value)
    return int(number) if number.is_integer() else number


def item_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "customerRef": row["customer_ref"],
        "local": _number(row["local"]),
        "stripe": _number(row["stripe"]),
        "diffAbs": _number(row["diff_abs"]),
        "diffPct": round(float(row["diff_pct"]), 6),
        "status": row["status"],
        "action": row["action"],
        "inFlight": _number(row["in_flight"]),
        "causes": row["causes"],
        "hours": row["hours"],
        "periodStart": iso_seconds(row["period_start"]),
        "periodEnd": iso_seconds(row["period_end"]),
        "checkedAt": iso_exact(row["checked_at"]),
        "runId": row["run_id"],
    }


async def get_summary(request: web.Request) -> web.StreamResponse:
    tenant = _checked(params.tenant(request), "tenantId", TENANT_RE)
    metric = _checked(params.required(request, "metric"), "metric", METRIC_RE)
    period_name = _period(request, request.query.get("period") or None)
    customer = request.query.get("customerRef") or None
    output = params.choice(request, "format", ("json", "csv"), "json")
    async with request.app[POOL].connection() as conn:
        rows = await db.latest(conn, tenant, metric, period_name, customer)
    items = [item_view(r) for r in rows]
    if output == "csv":
        return csv_response(items, f"reconciliation-{tenant}-{metric}-{period_name}.csv")
    return json_response(
        {
            "tenantId": tenant,
            "metric": metric,
            "period": periods.period(period_name).wire(),
            "epsilon": request.app[RECONCILER].settings.epsilon if RECONCILER in request.app else None,
            "status": overall_status(items),
            "checkedAt": max((i["checkedAt"] for i in items), default=None),
            "items": items,
            "totals": totals(items),
        }
    )


def csv_response(items: list[dict[str, Any]], filename: str) -> web.Response:
    rows = ({**item, "causes": " ".join(c["code"] for c in item["causes"])} for item in items)
    return web.Response(
        text=csv_text(CSV_COLUMNS, ([row[c] for c in CSV_COLUMNS] for row in rows)),
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


async def post_run(request: web.Request) -> web.Response:
    body = await params.json_object(request)
    tenant = params.body_tenant(request, body)
    metric = params.optional_body_text(body, "metric", 100)
    if metric is not None:
        _checked(metric, "metric", METRIC_RE)
    period_raw = params.optional_body_text(body, "period", 7)
    period_name = _period(request, period_raw) if period_raw is not None else None
    align = body.get("align", "within_epsilon")
    if align not in ("within_epsilon", "all"):
        raise bad_request("align", "must be within_epsilon or all")
    if align == "all":  # corrects Stripe however far it drifted, counted or not: not a tenant's call
        check_operator(request, "align", 'align "all"')
    if RECONCILER not in request.app:
        raise ApiError(
            "stripe_not_configured", "set STRIPE_API_KEY or STRIPE_API_BASE to reconcile", status=503
        )
    async with heavy(request, tenant), request.app[POOL].connection() as conn:
        report = await request.app[RECONCILER].run(
            conn, RunRequest(tenant, metric, period_name, align=align, trigger="api")
        )
    return json_response(report)
