"""Where counter streams send their usage in Stripe: (meter event name, Stripe customer) pairs.

``stripe_destinations`` remembers every pair a stream (tenant, metric, customerRef) was mapped to
(migration 0016). A mapping change asks who else sends or sent to the pairs it would create, and
where usage of the open periods already sits: what the writer delivered (or may have: a request
still pending) and reconciliation's corrections, for hours that hold something.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import psycopg

StreamKey = tuple[str, str, str]  # tenant, metric, customerRef
Destination = tuple[str, str]  # Stripe meter event name, Stripe customer id


@dataclass(frozen=True)
class Claimant:
    """A stream that sends, or once sent, to a pair; ``maps_there`` if its mappings still do."""

    stream: StreamKey
    destination: Destination
    maps_there: bool


async def record(conn: psycopg.AsyncConnection, pairs: Iterable[tuple[Destination, StreamKey]]) -> None:
    rows = sorted(set(pairs))
    if not rows:
        return
    await conn.execute(
        "INSERT INTO stripe_destinations (event_name, stripe_customer_id, tenant_id, metric, customer_ref)"
        " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[])"
        " ON CONFLICT DO NOTHING",
        (
            [d[0] for d, _ in rows], [d[1] for d, _ in rows],
            [s[0] for _, s in rows], [s[1] for _, s in rows], [s[2] for _, s in rows],
        ),
    )  # fmt: skip


# Each claimant with whether its mappings still send it there (``{where}``: which pairs).
CLAIMANTS = """
SELECT d.event_name, d.stripe_customer_id, d.tenant_id, d.metric, d.customer_ref,
       (m.stripe_meter_event_name IS NOT DISTINCT FROM d.event_name
        AND c.stripe_customer_id IS NOT DISTINCT FROM d.stripe_customer_id) AS maps_there
FROM stripe_destinations d
LEFT JOIN metric_mappings m ON m.tenant_id = d.tenant_id AND m.metric = d.metric
LEFT JOIN customer_mappings c ON c.tenant_id = d.tenant_id AND c.customer_ref = d.customer_ref
WHERE {where}
"""
OF_PAIRS = "(d.event_name, d.stripe_customer_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
OF_CUSTOMER = "d.stripe_customer_id = %s"


async def claimants(conn: psycopg.AsyncConnection, destinations: Iterable[Destination]) -> list[Claimant]:
    """Streams that send or sent to any of ``destinations``."""
    pairs = sorted(set(destinations))
    if not pairs:
        return []
    return await _claimants(conn, OF_PAIRS, ([e for e, _ in pairs], [c for _, c in pairs]))


async def customer_claimants(conn: psycopg.AsyncConnection, stripe_customer: str) -> list[Claimant]:
    """Streams that send or sent to ``stripe_customer``, for any meter."""
    return await _claimants(conn, OF_CUSTOMER, (stripe_customer,))


async def _claimants(conn: psycopg.AsyncConnection, where: str, params: tuple[object, ...]) -> list[Claimant]:
    cur = await conn.execute(CLAIMANTS.format(where=where), params)
    return [
        Claimant((tenant, metric, customer), (event, stripe_id), bool(maps_there))
        for event, stripe_id, tenant, metric, customer, maps_there in await cur.fetchall()
    ]


async def tenants_mapping(conn: psycopg.AsyncConnection, stripe_customer: str) -> dict[str, list[str]]:
    """Tenant -> customerRefs whose mapping names ``stripe_customer`` now (with or without metrics)."""
    cur = await conn.execute(
        "SELECT tenant_id, customer_ref FROM customer_mappings WHERE stripe_customer_id = %s"
        " ORDER BY tenant_id, customer_ref",
        (stripe_customer,),
    )
    found: dict[str, list[str]] = {}
    for tenant, customer in await cur.fetchall():
        found.setdefault(tenant, []).append(customer)
    return found


# Stripe's asynchronous error codes that refuse a whole pair (no such customer, no customer in the
# payload, no such or an archived meter): usage sent to a pair Stripe refused is not there.
PAIR_REFUSED = (
    "meter_event_customer_not_found",
    "meter_event_no_customer_defined",
    "no_meter",
    "archived_meter",
)

# Per stream, the pairs its usage of hours from %(since)s sits at: requests the writer sent (delivered,
# or pending: they may have landed) for hours that hold something or have a request pending, and
# reconciliation's corrections that landed or may have; and the pairs Stripe refused whole (a drop
# report with one of PAIR_REFUSED). A pair is the request's event name and the payload value that is
# not the value (the payload's keys are the meter's own).
HELD = """
WITH k AS (
    SELECT * FROM unnest(%(tenants)s::text[], %(metrics)s::text[], %(customers)s::text[])
        AS k(tenant_id, metric, customer_ref)
), requests AS (
    SELECT r.tenant_id, r.metric, r.customer_ref, r.request,
           CASE WHEN r.status = 'dropped' THEN 'refused' ELSE 'held' END AS kind
    FROM stripe_push_requests r
    JOIN k USING (tenant_id, metric, customer_ref)
    JOIN stripe_pushes p USING (tenant_id, metric, customer_ref, bucket)
    WHERE r.bucket >= %(since)s
      AND ((r.status IN ('sent', 'delivered') AND (p.pushed_units <> 0 OR p.pending_request IS NOT NULL))
           OR (r.status = 'dropped' AND r.reason ~ %(refused)s))
    UNION ALL
    SELECT a.tenant_id, a.metric, a.customer_ref, a.request, 'held'
    FROM adjustments a
    JOIN k USING (tenant_id, metric, customer_ref)
    WHERE a.target = 'stripe' AND a.bucket >= %(since)s AND a.request IS NOT NULL
      AND a.status IN ('applied', 'pending', 'unknown') AND a.delta_micros <> 0
)
SELECT DISTINCT tenant_id, metric, customer_ref, kind, request ->> 'event_name',
       (SELECT p.value FROM jsonb_each_text(request -> 'payload') AS p
        WHERE p.value IS DISTINCT FROM request ->> 'value' ORDER BY p.key LIMIT 1)
FROM requests
"""


async def usage_held(
    conn: psycopg.AsyncConnection, streams: Iterable[StreamKey], since: datetime
) -> dict[StreamKey, set[Destination]]:
    """The pairs each stream holds usage of hours from ``since`` at (less the pairs Stripe refused)."""
    keys = sorted(set(streams))
    if not keys:
        return {}
    cur = await conn.execute(
        HELD,
        {
            "tenants": [k[0] for k in keys], "metrics": [k[1] for k in keys],
            "customers": [k[2] for k in keys], "since": since, "refused": "|".join(PAIR_REFUSED),
        },
    )  # fmt: skip
    held: dict[StreamKey, set[Destination]] = {}
    refused: dict[StreamKey, set[Destination]] = {}
    for tenant, metric, customer, kind, event_name, stripe_customer in await cur.fetchall():
        into = held if kind == "held" else refused
        into.setdefault((tenant, metric, customer), set()).add((event_name, stripe_customer))
    return {stream: pairs - refused.get(stream, set()) for stream, pairs in held.items()}
