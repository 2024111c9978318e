"""PUT/DELETE/GET /v1/mappings/{tenantId}[/{metric}] and /v1/customers/{tenantId}[/{customerRef}]: the
request is read here; what a change means is services/configuration.py."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import stripe
from aiohttp import web

from stripemeter.adapters.postgres.mappings import page_rows
from stripemeter.api import pages, params
from stripemeter.api.appkeys import POOL, PRODUCER, RECONCILER, SETTINGS
from stripemeter.api.auth import operates
from stripemeter.api.errors import ApiError, bad_request, json_response
from stripemeter.core.push_plan import meter_problem
from stripemeter.domain.policy import AGGREGATIONS, MAX_LATENESS_SECONDS
from stripemeter.schemas.events import METRIC_RE
from stripemeter.services import customer_owners, meter_grants
from stripemeter.services.configuration import Configuration, CustomerChange, MetricChange, Reaggregate

MAX_LATENESS = MAX_LATENESS_SECONDS  # 35 days: Stripe refuses older usage (a CHECK of the column too)


def _reaggregate(value: object) -> Reaggregate | None:
    if value is None:
        return None
    if value == "dry-run":
        return "dry-run"
    if value == "apply":
        return "apply"
    raise bad_request("reaggregate", "must be dry-run or apply")


def _configuration(request: web.Request) -> Configuration:
    return Configuration(request.app[SETTINGS], request.app[PRODUCER])


async def put_metric(request: web.Request) -> web.Response:
    tenant = params.path_tenant(request)
    metric = _metric(request)
    body = await params.json_object(request)
    event_name = params.body_text(body, "stripeMeterEventName", 100)
    aggregation = body.get("aggregation", "sum")
    if aggregation not in AGGREGATIONS:
        raise bad_request("aggregation", f"must be one of {', '.join(AGGREGATIONS)}")
    lateness = body.get("latenessSeconds")
    if lateness is not None and (
        isinstance(lateness, bool) or not isinstance(lateness, int) or not 0 <= lateness <= MAX_LATENESS
    ):
        raise bad_request(
            "latenessSeconds",
            f"must be a whole number of seconds from 0 to {MAX_LATENESS}"
            " (35 days, the oldest usage Stripe takes)",
        )
    reaggregate = _reaggregate(body.get("reaggregate"))
    if not operates(request):  # before Stripe is asked: a meter not granted says nothing of itself
        async with request.app[POOL].connection() as conn:
            await meter_grants.check(conn, tenant, event_name)
    meter_check = await check_meter(request, event_name, aggregation)
    change = MetricChange(
        tenant, metric, event_name, aggregation, lateness, reaggregate, granted_only=not operates(request)
    )
    async with request.app[POOL].connection() as conn:
        answer = await _configuration(request).change_metric(conn, change)
    if reaggregate == "dry-run":
        return json_response({**answer, "meterCheck": meter_check})
    row = answer.pop("row")
    return json_response({**params.row_view(row), **answer, "meterCheck": meter_check})


async def delete_metric(request: web.Request) -> web.Response:
    tenant = params.path_tenant(request)
    metric = _metric(request)
    reaggregate = request.query.get("reaggregate")
    if reaggregate not in (None, "apply"):
        raise bad_request("reaggregate", "must be apply")
    async with request.app[POOL].connection() as conn:
        answer = await _configuration(request).delete_metric(conn, tenant, metric, reaggregate == "apply")
    return json_response(answer)


def _metric(request: web.Request) -> str:
    metric = request.match_info["metric"]
    if not METRIC_RE.fullmatch(metric):
        raise bad_request("metric", f"must match {METRIC_RE.pattern}")
    return metric


async def check_meter(request: web.Request, event_name: str, aggregation: str) -> dict[str, Any]:
    """Read the Stripe meter of ``event_name`` now: 422 naming the field when it cannot carry the
    metric (none, inactive, pre-aggregating, or a formula that does not fit); when Stripe is not
    configured or cannot be reached, the mapping is saved and the writer checks on first use."""
    if RECONCILER not in request.app:
        return {"status": "skipped", "reason": "Stripe is not configured"}
    catalog = request.app[RECONCILER].reader.meters
    try:
        await catalog.refresh()
    except stripe.StripeError as exc:
        return {
            "status": "skipped",
            "reason": f"Stripe could not be read ({type(exc).__name__}); the writer checks",
        }
    meter = catalog.all().get(event_name)
    problem = meter_problem(meter, event_name, aggregation)
    if problem is not None:
        field, reason = problem
        raise ApiError("stripe_meter_mismatch", f"{field}: {reason}", field=field, status=422)
    assert meter is not None
    return {
        "status": "ok",
        "meterId": meter.id,
        "formula": meter.formula,
        "customerKey": meter.customer_key,
        "valueKey": meter.value_key,
    }


async def put_customer(request: web.Request) -> web.Response:
    tenant = params.path_tenant(request)
    customer = request.match_info["customerRef"]
    body = await params.json_object(request)
    stripe_id = params.body_text(body, "stripeCustomerId")
    anchor_raw = body.get("billingAnchor")
    anchor = None
    if anchor_raw is not None:
        try:
            anchor = datetime.fromisoformat(str(anchor_raw).replace("Z", "+00:00"))
        except ValueError:
            raise bad_request("billingAnchor", "must be an RFC 3339 date-time") from None
        if anchor.tzinfo is None:
            raise bad_request("billingAnchor", "must carry a UTC offset")
    if anchor is not None:
        anchor = anchor.replace(second=0, microsecond=0)  # Stripe's summaries take minute boundaries
    if not operates(request):
        reader = request.app[RECONCILER].reader if RECONCILER in request.app else None
        await customer_owners.check(reader, request.app[SETTINGS].customer_ownership, tenant, stripe_id)
    change = CustomerChange(tenant, customer, stripe_id, anchor)
    async with request.app[POOL].connection() as conn:
        answer = await _configuration(request).change_customer(conn, change)
    row = answer.pop("row")
    return json_response({**params.row_view(row), **answer})


async def delete_customer(request: web.Request) -> web.Response:
    tenant = params.path_tenant(request)
    customer = request.match_info["customerRef"]
    async with request.app[POOL].connection() as conn:
        return json_response(await _configuration(request).delete_customer(conn, tenant, customer))


async def list_metrics(request: web.Request) -> web.Response:
    tenant = params.path_tenant(request)
    asked = pages.page_request(request, (str,))  # metric
    after = asked.after[0] if asked.after else None
    async with request.app[POOL].connection() as conn:
        rows = await page_rows(conn, "metric_mappings", tenant, asked.limit + 1, after)
    rows, next_cursor = pages.page(rows, asked, lambda r: (r["metric"],))
    return json_response(
        {"tenantId": tenant, "mappings": [params.row_view(r) for r in rows], "nextCursor": next_cursor}
    )


async def list_customers(request: web.Request) -> web.Response:
    tenant = params.path_tenant(request)
    asked = pages.page_request(request, (str,))  # customerRef
    after = asked.after[0] if asked.after else None
    async with request.app[POOL].connection() as conn:
        rows = await page_rows(conn, "customer_mappings", tenant, asked.limit + 1, after)
    rows, next_cursor = pages.page(rows, asked, lambda r: (r["customer_ref"],))
    return json_response(
        {"tenantId": tenant, "customers": [params.row_view(r) for r in rows], "nextCursor": next_cursor}
    )
