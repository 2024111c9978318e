"""GET /v1/invoices (the invoices the pre-invoice guard knows) and GET /v1/invoices/{invoiceId} (one,
with its proof). A tenant's key sees its tenant's invoices; an operator's key may leave ``tenantId``
out and see every invoice, those of no tenant too."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from stripemeter.adapters.postgres import invoices as db
from stripemeter.api import pages, params
from stripemeter.api.appkeys import POOL
from stripemeter.api.auth import check_operator, may_see, operates
from stripemeter.api.errors import ApiError, json_response
from stripemeter.domain import periods
from stripemeter.domain.timefmt import iso_seconds

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # where invoices of no known period sort


def invoice_view(row: dict[str, Any], with_proof: bool) -> dict[str, Any]:
    view = {
        "invoiceId": row["invoice_id"],
        "tenantId": row["tenant_id"],
        "customerRef": row["customer_ref"],
        "stripeCustomer": row["stripe_customer"],
        "periodStart": _iso(row["period_start"]),
        "periodEnd": _iso(row["period_end"]),
        "stripeStatus": row["stripe_status"],
        "guardState": row["guard_state"],
        "reasonCode": row["reason_code"],
        "reason": row["reason"],
        "automaticallyFinalizesAt": _iso(row["finalizes_at"]),
        "deadline": _iso(row["deadline"]),
        "testClock": row["test_clock"],
        "heldAt": _iso(row["held_at"]),
        "releasedAt": _iso(row["released_at"]),
        "releaseReason": row["release_reason"],
        "finalizedAt": _iso(row["finalized_at"]),
        "checks": row["checks"],
        "lastEvent": row["last_event_type"],
        "updatedAt": _iso(row["updated_at"]),
    }
    if with_proof:
        view["lines"] = row["lines"]
        view["unbilled"] = row["unbilled"]
    return view


def _iso(at: datetime | None) -> str | None:
    return iso_seconds(at) if at is not None else None


async def list_invoices(request: web.Request) -> web.Response:
    """A page of invoices, newest period first; ``period`` (YYYY-MM) keeps those whose period starts in
    that calendar month, ``status`` those in that guard state."""
    raw_tenant = request.query.get("tenantId") or None
    if raw_tenant is None:
        check_operator(request, "tenantId", "listing every tenant's invoices")
        tenant = None
    else:
        tenant = params.tenant(request)
    state = request.query.get("status") or None
    if state is not None and state not in db.STATES:
        raise ApiError("invalid_parameter", f"status: must be one of {', '.join(db.STATES)}", field="status")
    start = end = None
    if request.query.get("period"):
        month = periods.period(request.query["period"])  # PeriodError: 400 naming the period
        start, end = month.start, month.end
    asked = pages.page_request(request, (datetime, str))
    after = (asked.after[0], asked.after[1]) if asked.after else None
    async with request.app[POOL].connection() as conn:
        rows = await db.page(conn, tenant, state, start, end, after, asked.limit + 1)
    rows, next_cursor = pages.page(rows, asked, lambda r: (r["period_start"] or EPOCH, r["invoice_id"]))
    items = [invoice_view(r, with_proof=False) for r in rows]
    return json_response({"items": items, "nextCursor": next_cursor})


async def get_invoice(request: web.Request) -> web.Response:
    invoice_id = request.match_info["invoiceId"]
    async with request.app[POOL].connection() as conn:
        row = await db.get(conn, invoice_id)
    # another tenant's invoice is as unknown as one that does not exist
    visible = row is not None and (
        operates(request) if row["tenant_id"] is None else may_see(request, row["tenant_id"])
    )
    if row is None or not visible:
        raise ApiError(
            "not_found", f"invoiceId: no invoice {invoice_id!r} is known", field="invoiceId", status=404
        )
    return json_response(invoice_view(row, with_proof=True))
