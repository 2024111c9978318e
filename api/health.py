"""GET /health/live and /health/ready"""

from __future__ import annotations

from aiohttp import web
from stripemeter.api.appkeys import POOL
from stripemeter.api.errors import json_response


async def live(request: web.Request) -> web.Response:
    return json_response({"status": "alive"})


async def ready(request: web.Request) -> web.Response:
    checks: dict[str, dict[str, object]] = {}
    try:
        async with request.app[POOL].connection() as conn:
            await conn.execute("SELECT 1")
        checks["postgres"] = {"status": "ok"}
    except Exception as exc:
        checks["postgres"] = {"status": "down", "error": type(exc).__name__}
    healthy = all(c["status"] == "ok" for c in checks.values())
    body = {"status": "healthy" if healthy else "unhealthy", "checks": checks}
    return json_response(body, status=200 if healthy else 503)
