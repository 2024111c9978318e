"""Which Stripe meters a tenant may use: granted and revoked by an operator, checked when a tenant's own
key maps a metric. Tenants share one Stripe account: a meter event names its customer, and the pair
rules (services/configuration.py) keep one tenant's customers from another's, but which meters, and so
which prices, a tenant's usage lands on is the operator's decision.

Grants and mapping changes of one tenant take the same lock (adapters/postgres/mappings.lock_configuration),
so a meter is never revoked under a mapping being saved to it.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from stripemeter.adapters.postgres import mappings
from stripemeter.adapters.postgres import meter_grants as grants
from stripemeter.domain.errors import Conflict, Forbidden, NotFound

log = logging.getLogger(__name__)


async def check(conn: psycopg.AsyncConnection, tenant: str, event_name: str) -> None:
    """Refuse (403 naming ``stripeMeterEventName``) a meter not granted to ``tenant``; within the
    caller's transaction, holding the tenant's configuration lock."""
    if not await grants.granted(conn, tenant, event_name):
        raise Forbidden(
            "stripeMeterEventName",
            f"the Stripe meter {event_name!r} is not granted to tenant {tenant}; an operator grants it"
            f" (PUT /v1/tenants/{tenant}/meters/{event_name})",
            code="meter_not_granted",
        )


async def grant(
    conn: psycopg.AsyncConnection, tenant: str, event_name: str, *, wait: bool = False
) -> dict[str, Any]:
    """``wait``: wait for a configuration change of the tenant in progress (the CLI) instead of ``Busy``."""
    async with conn.transaction():
        await mappings.lock_configuration(conn, f"tenant:{tenant}", wait=wait)
        return await grant_within(conn, tenant, event_name)


async def grant_within(conn: psycopg.AsyncConnection, tenant: str, event_name: str) -> dict[str, Any]:
    """Grant within the caller's transaction (holding the tenant's configuration lock)."""
    row = await grants.grant(conn, tenant, event_name)
    log.info("Stripe meter %s granted to tenant %s", event_name, tenant)
    return row


async def revoke(conn: psycopg.AsyncConnection, tenant: str, event_name: str, *, wait: bool = False) -> None:
    """Refused (409 naming ``eventName``) while a metric of the tenant is mapped to the meter."""
    async with conn.transaction():
        await mappings.lock_configuration(conn, f"tenant:{tenant}", wait=wait)
        using = await grants.metrics_using(conn, tenant, event_name)
        if using:
            raise Conflict(
                "eventName",
                f"metrics {', '.join(using)} of tenant {tenant} are mapped to {event_name}: delete or remap"
                " them first (DELETE /v1/mappings/...)",
                code="meter_in_use",
            )
        if not await grants.revoke(conn, tenant, event_name):
            raise NotFound("eventName", f"{event_name} is not granted to tenant {tenant}")
    log.info("Stripe meter %s revoked from tenant %s", event_name, tenant)


async def list_grants(
    conn: psycopg.AsyncConnection, tenant: str, limit: int, after: str | None = None
) -> list[dict[str, Any]]:
    return await grants.list_grants(conn, tenant, limit, after)
