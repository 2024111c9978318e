"""Who may call /v1: API keys with scopes, one tenant per key, and per-tenant and per-client limits.

Every /v1 request needs ``Authorization: Bearer smk_...`` unless ``STRIPEMETER_AUTH=off``. The key's
scopes must cover the route (``stripemeter.domain.auth.required_scope``); handlers then call
``check_tenant`` for every tenant a request names, so a key of tenant A never reads or writes B.

Unauthenticated load costs bounded work (the caches and buckets are in ``limits``). Key rows are
cached in two bounded LRUs: valid keys for ``KEY_CACHE_SECONDS`` (at most ``KEY_CACHE_SIZE``), key
ids that found nothing for ``MISS_CACHE_SECONDS`` (at most ``MISS_CACHE_SIZE``; a flood of made-up ids
never evicts a valid key).
A lookup of an id not found valid within the last hour first takes a token from its client's failure
budget (``STRIPEMETER_AUTH_FAILURES_PER_MINUTE``, per peer address or IPv6 /64, or per X-Forwarded-For
entry when ``STRIPEMETER_API_PROXY_HOPS`` says a proxy sets it); a lookup that finds a valid key gives
it back, every failed attempt keeps it, and a client without tokens gets 429 with Retry-After before
any query. Concurrent lookups of one key id share one query.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from typing import Any

from aiohttp import web

from stripemeter.adapters.postgres import api_keys
from stripemeter.api.appkeys import AUTH_LIMITER, KEY_CACHE, POOL, RATE_LIMITER, SETTINGS
from stripemeter.api.errors import ApiError
from stripemeter.api.http_metrics import Handler, route_template
from stripemeter.api.limits import KeyCache
from stripemeter.domain import metrics
from stripemeter.domain.auth import OPERATOR, Principal, required_scope, split_token, verify
from stripemeter.domain.errors import Backpressure

PRINCIPAL = web.RequestKey("principal", Principal)
WEBHOOK_PATH = "/v1/stripe/webhook"  # Stripe's deliveries carry its signature, not an API key


def client_of(request: web.Request, proxy_hops: int) -> str:
    """Who is calling, for the failure budget (see ``client_address``)."""
    return client_address(request.remote, request.headers.getall("X-Forwarded-For", []), proxy_hops)


def client_address(remote: str | None, forwarded: list[str], proxy_hops: int) -> str:
    """The peer address; with ``proxy_hops`` proxies in front, the address the outermost of them saw:
    the ``proxy_hops``-th X-Forwarded-For entry from the right (entries left of it are the caller's
    to invent; with fewer entries, the peer). IPv6 counts per /64, what one host usually holds."""
    address = remote or "-"
    if proxy_hops > 0:
        entries = [part.strip() for header in forwarded for part in header.split(",") if part.strip()]
        if len(entries) >= proxy_hops:
            address = entries[-proxy_hops]
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def unauthorized(message: str) -> ApiError:
    return ApiError(
        "unauthorized", message, status=401, headers={"WWW-Authenticate": 'Bearer realm="stripemeter"'}
    )


def throttled(wait: float) -> Backpressure:
    """429 with Retry-After (api/errors.py)."""
    metrics.API_AUTH_THROTTLED.inc()
    return Backpressure("too many failed API-key attempts from this client; retry later", retry_after=wait)


async def authenticate(request: web.Request) -> Principal:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        metrics.API_AUTH_FAILURES.labels("missing").inc()
        raise unauthorized("missing API key: send Authorization: Bearer <key>")
    parts = split_token(token.strip())
    if parts is None:
        metrics.API_AUTH_FAILURES.labels("malformed").inc()
        raise unauthorized("malformed API key")
    key_id, secret = parts
    client = client_of(request, request.app[SETTINGS].api_proxy_hops)
    limiter = request.app[AUTH_LIMITER]
    cache = request.app[KEY_CACHE]
    charged = False  # this attempt holds a token of the client's failure budget
    now = time.monotonic()
    known = cache.get(key_id, now)
    if known is None and (pending := cache.inflight.get(key_id)) is not None:
        shared = await asyncio.shield(pending)  # another request is asking PostgreSQL: share its answer
        known = None if shared is _ASK_AGAIN else (shared,)
    if known is not None:
        row = known[0]
    elif cache.known.get(key_id, now) is not None:
        # an id found valid lately: its lookups are bounded by the found cache (one per 5 s per id),
        # not by the caller, so they need no token and a throttled client's own key still works
        row = await _lookup(request.app, cache, key_id)
    else:
        wait = limiter.take(client)  # before the query: a client out of tokens costs no query
        if wait > 0:
            raise throttled(wait)
        charged = True
        try:
            row = await _lookup(request.app, cache, key_id)
        except BaseException:
            limiter.give_back(client)  # PostgreSQL failed, not the caller
            raise
    if row is not None and verify(bytes(row["salt"]), bytes(row["hash"]), secret):
        if charged:
            limiter.give_back(client)
        return Principal(row["key_id"], row["tenant_id"], frozenset(row["scopes"]))
    if not charged:  # a failure answered from the cache: it still counts against the client
        wait = limiter.take(client)
        if wait > 0:
            raise throttled(wait)
    metrics.API_AUTH_FAILURES.labels("invalid_key").inc()  # one reason: which key ids exist stays unsaid
    raise unauthorized("unknown or revoked API key")


_ASK_AGAIN: Any = object()  # what a shared lookup answers when it failed: each request asks itself


async def _lookup(app: web.Application, cache: KeyCache, key_id: str) -> dict[str, Any] | None:
    """One PostgreSQL lookup of ``key_id``, shared by every request that asks while it runs."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    cache.inflight[key_id] = future
    try:
        async with app[POOL].connection() as conn:
            row = await api_keys.find(conn, key_id)
            if row is not None:
                await api_keys.touch(conn, key_id)
        metrics.API_KEY_LOOKUPS.labels("found" if row is not None else "not_found").inc()
        cache.put(key_id, row, time.monotonic())
        future.set_result(row)
        return row
    finally:
        if cache.inflight.get(key_id) is future:
            del cache.inflight[key_id]
        if not future.done():
            future.set_result(_ASK_AGAIN)


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
        raise Backpressure(
            f"more than {settings.rate_limit_per_second:g} requests/s for this tenant; retry later",
            retry_after=wait,
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


def operates(request: web.Request) -> bool:
    """Whether the caller holds the operator's powers over the shared Stripe account (every caller
    does when authentication is off, which is for purely local use)."""
    principal: Principal | None = request.get(PRINCIPAL)
    return principal is None or principal.operates


def check_operator(request: web.Request, field: str, what: str) -> None:
    """403 naming ``field`` unless the caller operates the shared Stripe account."""
    if not operates(request):
        raise ApiError(
            "operator_only",
            f"{field}: {what} acts on the shared Stripe account: it needs a key of every tenant ('*')"
            f" with the {OPERATOR!r} scope",
            field=field,
            status=403,
        )


def may_see(request: web.Request, tenant: str) -> bool:
    principal: Principal | None = request.get(PRINCIPAL)
    return principal is None or principal.sees(tenant)
