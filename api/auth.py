"""Who may call /v1: API keys with scopes, one tenant per key, and a per-tenant rate limit.

Every /v1 request needs ``Authorization: Bearer smk_...`` unless ``STRIPEMETER_AUTH=off``. The key's
scopes must cover the route (``stripemeter.auth.required_scope``); handlers then call
``check_tenant`` for every tenant a request names, so a key of tenant A never reads or writes B.
"""

from __future__ import annotations

import math
import time

from aiohttp import web
from stripemeter.api.appkeys import KEY_CACHE, POOL, RATE_LIMITER, SETTINGS
from stripemeter.api.errors import ApiError
from stripemeter.api.http_metrics import Handler, route_template

from stripemeter.auth import Principal, required_scope, split_token, verify
from stripemeter.db import api_keys

PRINCIPAL = web.RequestKey("principal", Principal)
WEBHOOK_PATH = "/v1/stripe/webhook"  # Stripe's deliveries carry its signature, not an API key
KEY_CACHE_SECONDS = 5.0  # a revoked key stops working within this


class RateLimiter:
    """A token bucket per tenant: ``rate`` requests a second, bursts up to ``2 * rate``."""

    def __init__(self, rate: float):
        self.rate = rate
        self.burst = max(2 * rate, 1.0)
        self.buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)

    def take(self, tenant: str, now: float | None = None) -> float:
        """0 when allowed, else the seconds until a request would be."""
        now = time.monotonic() if now is None else now
        tokens, at = self.buckets.get(tenant, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1:
            self.buckets[tenant] = (tokens - 1, now)
            return 0.0
        self.buckets[tenant] = (tokens, now)
        return (1 - tokens) / self.rate


def unauthorized(message: str) -> ApiError:
    return ApiError(
        "unauthorized", message, status=401, headers={"WWW-Authenticate": 'Bearer realm="stripemeter"'}
    )


async def authenticate(request: web.Request) -> Principal:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("missing API key: send Authorization: Bearer <key>")
    parts = split_token(token.strip())
    if parts is None:
        raise unauthorized("malformed API key")
    key_id, secret = parts
    cache = request.app[KEY_CACHE]
    cached = cache.get(key_id)
    if cached is None or time.monotonic() - cached[1] > KEY_CACHE_SECONDS:
        async with request.app[POOL].connection() as conn:
            row = await api_keys.find(conn, key_id)
            if row is not None:
                await api_keys.touch(conn, key_id)
        cached = (row, time.monotonic())
        cache[key_id] = cached
    row = cached[0]
    if row is None or not verify(bytes(row["salt"]), bytes(row["hash"]), secret):
        raise unauthorized("unknown or revoked API key")
    return Principal(row["key_id"], row["tenant_id"], frozenset(row["scopes"]))


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/v1/") or request.path == WEBHOOK_PATH:  # Stripe signs its own
        return await handler(request)
    settings = request.app[SETTINGS]
    tenant = request.query.get("tenantId") or request.match_info.get("tenantId") or "-"
    if settings.auth_enabled:
        principal = await authenticate(request)
        scope = required_scope(request.method, route_template(request))
        if not principal.allows(scope):
            raise ApiError("forbidden", f"this API key lacks the {scope!r} scope", status=403)
        request[PRINCIPAL] = principal
        tenant = principal.tenant_id if principal.tenant_id != "*" else f"key:{principal.key_id}"
    wait = request.app[RATE_LIMITER].take(tenant)
    if wait > 0:
        raise ApiError(
            "rate_limited",
            f"more than {settings.rate_limit_per_second:g} requests/s for this tenant; retry later",
            status=429,
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return await handler(request)


def check_tenant(request: web.Request, tenant: str, field: str = "tenantId") -> str:
    """``tenant`` if the caller's key may see it; 403 naming the field otherwise."""
    principal: Principal | None = request.get(PRINCIPAL)
    if principal is not None and not principal.sees(tenant):
        raise ApiError(
            "tenant_forbidden", f"{field}: this API key belongs to another tenant", field=field, status=403
        )
    return tenant


def may_see(request: web.Request, tenant: str) -> bool:
    principal: Principal | None = request.get(PRINCIPAL)
    return principal is None or principal.sees(tenant)
