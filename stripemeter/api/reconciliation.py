"""GET /v1/reconciliation/summary (the latest verdicts) and POST /v1/reconciliation/run (one cycle now)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from stripemeter.adapters.postgres import reconciliation as db
from stripemeter.api import pages, params
from stripemeter.api.appkeys import POOL, RECONCILER, SETTINGS
from stripemeter.api.auth import check_operator
from stripemeter.api.csv_export import csv_text
from stripemeter.api.errors import ApiError, bad_request, json_response
from stripemeter.api.heavy import heavy
from stripemeter.domain import periods
from stripemeter.domain.timefmt import iso_exact, iso_seconds
from stripemeter.schemas.events import METRIC_RE, TENANT_RE
from stripemeter.services.reconciliation.report import status_of, totals
from stripemeter.services.reconciliation.request import RunRequest

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


CSV_PAGE = 1000  # a CSV download is written a page of verdicts at a time


async def get_summary(request: web.Request) -> web.StreamResponse:
    """A page of the latest verdicts (``limit``/``cursor`` by customerRef); ``status``, ``totals`` and
    ``checkedAt`` cover every verdict of the period. The CSV download holds all of them, written a page
    at a time."""
    tenant = _checked(params.tenant(request), "tenantId", TENANT_RE)
    metric = _checked(params.required(request, "metric"), "metric", METRIC_RE)
    period_name = _period(request, request.query.get("period") or None)
    customer = request.query.get("customerRef") or None
    output = params.choice(request, "format", ("json", "csv"), "json")
    if output == "csv":
        return await csv_download(request, tenant, metric, period_name, customer)
    asked = pages.page_request(request, (str,))  # customerRef
    after = asked.after[0] if asked.after else None
    async with request.app[POOL].connection() as conn:
        rows = await db.latest(conn, tenant, metric, period_name, customer, asked.limit + 1, after)
        overall = await db.latest_overall(conn, tenant, metric, period_name, customer)
    rows, next_cursor = pages.page(rows, asked, lambda r: (r["customer_ref"],))
    local, stripe_total, diff = (_number(overall[k]) for k in ("local", "stripe", "diff_abs"))
    return json_response(
        {
            "tenantId": tenant,
            "metric": metric,
            "period": periods.period(period_name).wire(),
            "epsilon": request.app[RECONCILER].settings.epsilon if RECONCILER in request.app else None,
            "status": status_of(overall["statuses"]),
            "checkedAt": iso_exact(overall["checked_at"]) if overall["checked_at"] else None,
            "items": [item_view(r) for r in rows],
            "itemCount": int(overall["items"]),
            "nextCursor": next_cursor,
            "totals": totals([{"local": local, "stripe": stripe_total, "diffAbs": diff}]),
        }
    )


async def csv_download(
    request: web.Request, tenant: str, metric: str, period_name: str, customer: str | None
) -> web.StreamResponse:
    filename = f"reconciliation-{tenant}-{metric}-{period_name}.csv"
    response = web.StreamResponse(
        headers={"Content-Type": "text/csv", "Content-Disposition": f'attachment; filename="{filename}"'}
    )
    after: str | None = None
    header = True
    async with request.app[POOL].connection() as conn:
        while True:
            rows = await db.latest(conn, tenant, metric, period_name, customer, CSV_PAGE, after)
            if header:
                await response.prepare(request)
            await response.write(csv_page([item_view(r) for r in rows], header).encode())
            header = False
            if len(rows) < CSV_PAGE:
                break
            after = rows[-1]["customer_ref"]
    await response.write_eof()
    return response


def csv_page(items: list[dict[str, Any]], header: bool) -> str:
    rows = ({**item, "causes": " ".join(c["code"] for c in item["causes"])} for item in items)
    text = csv_text(CSV_COLUMNS, ([row[c] for c in CSV_COLUMNS] for row in rows))
    return text if header else text.split("\r\n", 1)[1]


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
