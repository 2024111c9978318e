"""GET /health/live and /health/ready.

Readiness answers one question with its status code: can this process accept ingest? Ingest needs
only the API's own Kafka producer (Kafka buffers the events until the workers read them), so only
that decides: **unhealthy** (503, the pod leaves the Service) when Kafka does not serve this
producer metadata. Everything else is reported in the body and never takes the pod out of the
Service, because it is shared by every API pod (removing them all helps no one) and ingest goes on
without it:
- **degraded** (200): PostgreSQL does not answer (routes that read it answer 503; ingest keeps
  going for keys in the key cache, or for every caller with ``STRIPEMETER_AUTH=off``), no worker of
  this app sent a heartbeat in the last 30 s (events wait in Kafka), Stripe does not answer (usage
  is still counted; pushes wait), a worker is rebalancing or recovering its tables, or a consumer
  group lags more than ``STRIPEMETER_READY_MAX_LAG_SECONDS``;
- **healthy** (200): everything answers and keeps up.
Alerts, not readiness, call an operator for those (ops/ALERTS.md).

The checks run concurrently and each gives up after ``TIMEOUT`` seconds, so an answer takes at most
about ``TIMEOUT`` (probes: ``timeoutSeconds`` above it, deploy/README.md). The Stripe check is one
cheap call (list one meter), cached for a minute. PostgreSQL is asked on a connection of
readiness's own (``HEALTH_POOL``): a pool busy with heavy requests does not make the API look down.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from stripemeter.adapters.postgres import heartbeats
from stripemeter.adapters.postgres.heartbeats import SeenWorker
from stripemeter.api.appkeys import HEALTH_POOL, PRODUCER, RECONCILER, SETTINGS, STRIPE_CHECK
from stripemeter.api.errors import json_response

HEARTBEAT_STALE_SECONDS = 30
STRIPE_CHECK_TTL = 60.0
TIMEOUT = 2.0  # each check's bound; the probes' timeoutSeconds is above it

Check = dict[str, Any]


async def live(request: web.Request) -> web.Response:
    return json_response({"status": "alive"})


async def ready(request: web.Request) -> web.Response:
    (postgres, workers), kafka, stripe = await asyncio.gather(
        _postgres_and_workers(request), _kafka(request), _stripe(request)
    )
    checks = {"postgres": postgres, "kafka": kafka, "stripe": stripe, "workers": workers}
    status = verdict(checks)
    return json_response({"status": status, "checks": checks}, status=503 if status == "unhealthy" else 200)


def verdict(checks: dict[str, Check]) -> str:
    """unhealthy only when ingest cannot go on (the Kafka producer); any other problem is degraded."""
    if checks["kafka"]["status"] == "down":
        return "unhealthy"
    if any(check["status"] in {"down", "degraded"} for check in checks.values()):
        return "degraded"
    return "healthy"


async def _postgres_and_workers(request: web.Request) -> tuple[Check, Check]:
    settings = request.app[SETTINGS]
    try:
        async with asyncio.timeout(TIMEOUT), request.app[HEALTH_POOL].connection() as conn:
            seen = await heartbeats.fresh(conn, settings.app_id, HEARTBEAT_STALE_SECONDS)
    except Exception as exc:
        down = {"status": "down", "error": type(exc).__name__}
        return down, {"status": "down", "error": "PostgreSQL is down: heartbeats unknown"}
    return {"status": "ok"}, _workers(seen, settings.ready_max_lag_seconds)


def _workers(seen: list[SeenWorker], max_lag: float) -> Check:
    if not seen:
        return {"status": "down", "alive": 0, "error": f"no worker heartbeat in {HEARTBEAT_STALE_SECONDS} s"}
    lag: dict[str, float] = {}
    for worker in seen:
        for group, seconds in (worker.state.get("lagSeconds") or {}).items():
            lag[group] = max(lag.get(group, 0.0), float(seconds))
    not_ready = [worker.worker_id for worker in seen if not worker.ready]
    behind = {group: round(seconds, 1) for group, seconds in lag.items() if seconds > max_lag}
    check: Check = {
        "status": "degraded" if not_ready or behind else "ok",
        "alive": len(seen),
        "ready": len(seen) - len(not_ready),
        "lagSeconds": {group: round(seconds, 1) for group, seconds in sorted(lag.items())},
    }
    if not_ready:
        check["notReady"] = not_ready
    if behind:
        check["behind"] = behind
    return check


async def _kafka(request: web.Request) -> Check:
    try:
        async with asyncio.timeout(TIMEOUT):
            await request.app[PRODUCER].client.fetch_all_metadata()
    except Exception as exc:
        return {"status": "down", "error": type(exc).__name__}
    return {"status": "ok"}


async def _stripe(request: web.Request) -> Check:
    if RECONCILER not in request.app:
        return {"status": "disabled", "message": "no STRIPE_API_KEY or STRIPE_API_BASE: usage is not pushed"}
    cached = request.app[STRIPE_CHECK]
    if cached and time.monotonic() - cached["at"] < STRIPE_CHECK_TTL:
        last: Check = cached["check"]
        return last
    client = request.app[RECONCILER].reader.client
    try:
        async with asyncio.timeout(TIMEOUT):
            await client.v1.billing.meters.list_async({"limit": 1})
        check: Check = {"status": "ok"}
    except Exception as exc:
        check = {"status": "degraded", "error": type(exc).__name__}
    request.app[STRIPE_CHECK].update({"at": time.monotonic(), "check": check})
    return check
