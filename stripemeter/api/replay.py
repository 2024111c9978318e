"""POST /v1/replay (dry-run or apply) and GET /v1/replay/{replayId} (the stored report)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from stripemeter.adapters.postgres import replay as db
from stripemeter.api import params
from stripemeter.api.appkeys import POOL, REPLAYER, SETTINGS
from stripemeter.api.auth import may_see
from stripemeter.api.errors import ApiError, bad_request, json_response
from stripemeter.api.heavy import heavy
from stripemeter.api.retention import check_since
from stripemeter.core.replay_window import parse_window
from stripemeter.schemas.events import METRIC_RE
from stripemeter.services.replayer import ReplayRequest, refresh_visibility


def parse_request(
    request: web.Request,
    body: dict[str, Any],
    max_window_seconds: int,
    now_ms: int,
    retention_days: int = 45,
) -> ReplayRequest:
    tenant = params.body_tenant(request, body)
    metrics = body.get("metrics")
    if not isinstance(metrics, list) or not metrics or len(metrics) > 100:
        raise bad_request("metrics", "is required: a list of 1-100 metric names")
    for metric in metrics:
        if not isinstance(metric, str) or not METRIC_RE.fullmatch(metric):
            raise bad_request("metrics", f"{metric!r} is not a metric name ({METRIC_RE.pattern})")
    customer = params.optional_body_text(body, "customerRef")
    mode = body.get("mode", "dry-run")
    if mode not in ("dry-run", "apply"):
        raise bad_request("mode", 'must be "dry-run" or "apply"')
    window = parse_window(body.get("since"), body.get("until", "now"), now_ms, max_window_seconds)
    check_since(window.since, datetime.fromtimestamp(now_ms / 1000, tz=UTC), retention_days)
    return ReplayRequest(tenant, sorted(set(metrics)), customer, window, mode)


async def post_replay(request: web.Request) -> web.Response:
    body = await params.json_object(request)
    settings = request.app[SETTINGS]
    replay = parse_request(
        request, body, settings.replay_max_window_seconds, settings.clock.ms(), settings.ledger_retention_days
    )
    async with heavy(request, replay.tenant_id), request.app[POOL].connection() as conn:
        report = await request.app[REPLAYER].run(conn, replay)  # UnknownMetric: 400 (api/errors.py)
    return json_response(report)


async def get_replay(request: web.Request) -> web.Response:
    replay_id = request.match_info["replayId"]
    async with request.app[POOL].connection() as conn:
        report = await db.load(conn, replay_id)
        if report is None or not may_see(request, report["tenantId"]):
            raise ApiError("not_found", f"no replay {replay_id!r}", field="replayId", status=404)
        report = await refresh_visibility(conn, replay_id, report)
    return json_response(report)
