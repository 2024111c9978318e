"""PUT/DELETE/GET /v1/tenants/{tenantId}/meters[/{eventName}]: which Stripe meters a tenant may map its
metrics to. Granting and revoking is the operator's (scope ``operator``); a tenant's key reads its own
grants. What a grant means: services/meter_grants.py."""

from __future__ import annotations

from aiohttp import web

from stripemeter.api import pages, params
from stripemeter.api.appkeys import POOL
from stripemeter.api.errors import bad_request, json_response
from stripemeter.services import meter_grants

MAX_EVENT_NAME = 100  # as stripeMeterEventName in PUT /v1/mappings


def _event_name(request: web.Request) -> str:
    name = request.match_info["eventName"]
    if not name.strip() or len(name) > MAX_EVENT_NAME:
        detail = f"must be a Stripe meter event name of 1 to {MAX_EVENT_NAME} characters"
        raise bad_request("eventName", detail)
    return name


async def put_meter(request: web.Request) -> web.Response:
    tenant, name = params.path_tenant(request), _event_name(request)
    async with request.app[POOL].connection() as conn:
        row = await meter_grants.grant(conn, tenant, name)
    return json_response(params.row_view(row))


async def delete_meter(request: web.Request) -> web.Response:
    tenant, name = params.path_tenant(request), _event_name(request)
    async with request.app[POOL].connection() as conn:
        await meter_grants.revoke(conn, tenant, name)
    return json_response({"tenantId": tenant, "eventName": name, "revoked": True})


async def list_meters(request: web.Request) -> web.Response:
    tenant = params.path_tenant(request)
    asked = pages.page_request(request, (str,))  # eventName
    after = asked.after[0] if asked.after else None
    async with request.app[POOL].connection() as conn:
        rows = await meter_grants.list_grants(conn, tenant, asked.limit + 1, after)
    rows, next_cursor = pages.page(rows, asked, lambda r: (r["event_name"],))
    return json_response(
        {"tenantId": tenant, "meters": [params.row_view(r) for r in rows], "nextCursor": next_cursor}
    )
