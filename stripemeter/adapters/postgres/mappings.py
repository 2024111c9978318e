"""Metric and customer mappings: what ties local names to Stripe, and per-metric rules."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from stripemeter.adapters.postgres import locks
from stripemeter.domain.policy import MetricPolicy

CONFIGURATION_RETRY_AFTER_SECONDS = 1.0


@dataclass(frozen=True)
class MetricMapping:
    tenant_id: str
    metric: str
    stripe_meter_event_name: str
    aggregation: str
    lateness_seconds: int | None


# Lateness raised: remember the horizon under the old lateness (stripemeter/domain/policy.py); the
# later of that and any horizon set before. A new mapping raises it from the default.
UPSERT_METRIC = """
INSERT INTO metric_mappings (tenant_id, metric, stripe_meter_event_name, aggregation, lateness_seconds,
                             dedupe_horizon, version)
VALUES (%(tenant)s, %(metric)s, %(event_name)s, %(aggregation)s, %(lateness)s,
        greatest(CASE WHEN coalesce(%(lateness)s, %(default)s) > %(default)s
                      THEN %(horizon_from_default)s END,
                 (SELECT dedupe_horizon FROM metric_mapping_tombstones
                  WHERE tenant_id = %(tenant)s AND metric = %(metric)s)),
        nextval('mapping_versions'))
ON CONFLICT (tenant_id, metric) DO UPDATE
SET stripe_meter_event_name = EXCLUDED.stripe_meter_event_name, aggregation = EXCLUDED.aggregation,
    lateness_seconds = EXCLUDED.lateness_seconds, updated_at = now(), version = EXCLUDED.version,
    dedupe_horizon = CASE
        WHEN coalesce(EXCLUDED.lateness_seconds, %(default)s)
             > coalesce(metric_mappings.lateness_seconds, %(default)s)
        THEN greatest(metric_mappings.dedupe_horizon,
                      %(now)s + interval '1 hour'
                      - make_interval(secs => coalesce(metric_mappings.lateness_seconds, %(default)s)))
        ELSE metric_mappings.dedupe_horizon END
RETURNING tenant_id, metric, stripe_meter_event_name, aggregation, lateness_seconds, dedupe_horizon,
          updated_at, version
"""

UPSERT_CUSTOMER = """
INSERT INTO customer_mappings (tenant_id, customer_ref, stripe_customer_id, billing_anchor, version)
VALUES (%s, %s, %s, %s, nextval('mapping_versions'))
ON CONFLICT (tenant_id, customer_ref) DO UPDATE
SET stripe_customer_id = EXCLUDED.stripe_customer_id, billing_anchor = EXCLUDED.billing_anchor,
    updated_at = now(), version = EXCLUDED.version
RETURNING tenant_id, customer_ref, stripe_customer_id, billing_anchor, updated_at, version
"""

# A deleted metric mapping leaves its version (workers learn that the metric is back to defaults) and,
# when that raises its lateness to the default, the dedupe horizon the raise needs (as UPSERT_METRIC).
DELETE_METRIC = """
WITH gone AS (
    DELETE FROM metric_mappings WHERE tenant_id = %(tenant)s AND metric = %(metric)s
    RETURNING lateness_seconds, dedupe_horizon
)
INSERT INTO metric_mapping_tombstones (tenant_id, metric, version, dedupe_horizon, deleted_at)
SELECT %(tenant)s, %(metric)s, nextval('mapping_versions'),
       CASE WHEN coalesce(lateness_seconds, %(default)s) < %(default)s
            THEN greatest(dedupe_horizon,
                          %(now)s + interval '1 hour' - make_interval(secs => lateness_seconds))
            ELSE dedupe_horizon END,
       %(now)s
FROM gone
ON CONFLICT (tenant_id, metric) DO UPDATE
SET version = EXCLUDED.version, dedupe_horizon = EXCLUDED.dedupe_horizon, deleted_at = EXCLUDED.deleted_at
RETURNING version
"""


async def upsert_metric(
    conn: psycopg.AsyncConnection, m: MetricMapping, now: datetime, default_lateness_seconds: int
) -> dict[str, Any]:
    """Save the mapping; raising its lateness sets the dedupe horizon (see stripemeter/domain/policy.py: now
    plus two hours, less the old lateness and the hour's margin, is now + 1 h - old lateness)."""
    cur = conn.cursor(row_factory=dict_row)
    horizon_from_default = now + timedelta(hours=1) - timedelta(seconds=default_lateness_seconds)
    await cur.execute(
        UPSERT_METRIC,
        {
            "tenant": m.tenant_id, "metric": m.metric, "event_name": m.stripe_meter_event_name,
            "aggregation": m.aggregation, "lateness": m.lateness_seconds, "default": default_lateness_seconds,
            "now": now, "horizon_from_default": horizon_from_default,
        },
    )  # fmt: skip
    row = await cur.fetchone()
    assert row is not None
    return row


async def upsert_customer(
    conn: psycopg.AsyncConnection,
    tenant: str,
    customer: str,
    stripe_customer_id: str,
    anchor: datetime | None,
) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(UPSERT_CUSTOMER, (tenant, customer, stripe_customer_id, anchor))
    row = await cur.fetchone()
    assert row is not None
    return row


async def delete_metric(
    conn: psycopg.AsyncConnection, tenant: str, metric: str, now: datetime, default_lateness_seconds: int
) -> int | None:
    """Delete the mapping, leaving its version behind; None if there was none."""
    cur = await conn.execute(
        DELETE_METRIC, {"tenant": tenant, "metric": metric, "now": now, "default": default_lateness_seconds}
    )
    row = await cur.fetchone()
    return int(row[0]) if row else None


async def delete_customer(conn: psycopg.AsyncConnection, tenant: str, customer: str) -> bool:
    cur = await conn.execute(
        "DELETE FROM customer_mappings WHERE tenant_id = %s AND customer_ref = %s", (tenant, customer)
    )
    return cur.rowcount > 0


async def metric_row(conn: psycopg.AsyncConnection, tenant: str, metric: str) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute("SELECT * FROM metric_mappings WHERE tenant_id = %s AND metric = %s", (tenant, metric))
    return await cur.fetchone()


async def customer_row(conn: psycopg.AsyncConnection, tenant: str, customer: str) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT * FROM customer_mappings WHERE tenant_id = %s AND customer_ref = %s", (tenant, customer)
    )
    return await cur.fetchone()


async def lock_configuration(conn: psycopg.AsyncConnection, *names: str, wait: bool = False) -> None:
    """Mapping changes that could collide exclude each other until the transaction ends: one lock per
    tenant, and one per Stripe customer (tenants share the Stripe account). Taken in sorted order and
    tried, not waited for: a change that finds one held raises ``Busy`` (409 with Retry-After), so a
    tenant sending many at once never holds pool connections waiting. ``wait=True`` waits (the CLI)."""
    for name in sorted(set(names)):
        kind, _, which = name.partition(":")
        await locks.for_transaction(
            conn, f"stripemeter-config:{name}",
            f"another configuration change of {kind} {which} is being saved; retry",
            wait=wait, retry_after=CONFIGURATION_RETRY_AFTER_SECONDS,
        )  # fmt: skip


async def list_rows(conn: psycopg.AsyncConnection, table: str, tenant: str) -> list[dict[str, Any]]:
    assert table in ("metric_mappings", "customer_mappings")
    order = "metric" if table == "metric_mappings" else "customer_ref"
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(f"SELECT * FROM {table} WHERE tenant_id = %s ORDER BY {order}", (tenant,))
    return await cur.fetchall()


async def page_rows(
    conn: psycopg.AsyncConnection, table: str, tenant: str, limit: int, after: str | None
) -> list[dict[str, Any]]:
    """Up to ``limit`` of the tenant's mappings in key order, after ``after``: a primary-key range."""
    assert table in ("metric_mappings", "customer_mappings")
    order = "metric" if table == "metric_mappings" else "customer_ref"
    cur = conn.cursor(row_factory=dict_row)
    if after is None:
        await cur.execute(
            f"SELECT * FROM {table} WHERE tenant_id = %s ORDER BY {order} LIMIT %s", (tenant, limit)
        )
    else:
        await cur.execute(
            f"SELECT * FROM {table} WHERE tenant_id = %s AND {order} > %s ORDER BY {order} LIMIT %s",
            (tenant, after, limit),
        )
    return await cur.fetchall()


async def load_policies(
    conn: psycopg.AsyncConnection, default: MetricPolicy
) -> dict[tuple[str, str], MetricPolicy]:
    """Every metric's policy with its mapping's version; a deleted mapping is the default policy under
    the version of its deletion."""
    cur = await conn.execute(
        "SELECT tenant_id, metric, aggregation, lateness_seconds, dedupe_horizon, version"
        " FROM metric_mappings"
        " UNION ALL SELECT tenant_id, metric, NULL, NULL, dedupe_horizon, version"
        " FROM metric_mapping_tombstones"
    )
    policies: dict[tuple[str, str], MetricPolicy] = {}
    for tenant, metric, aggregation, lateness, horizon, version in await cur.fetchall():
        policy = MetricPolicy(
            aggregation or default.aggregation,
            default.lateness_ms if lateness is None else lateness * 1000,
            default.horizon_ms if horizon is None else int(horizon.timestamp() * 1000),
            int(version),
        )
        known = policies.get((tenant, metric))
        if known is None or known.version < policy.version:
            policies[tenant, metric] = policy
    return policies


async def stripe_mappings(
    conn: psycopg.AsyncConnection, tenant: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metric -> (event name, aggregation), customer -> (Stripe customer id, billing anchor))."""
    metrics = {
        r["metric"]: (r["stripe_meter_event_name"], r["aggregation"])
        for r in await list_rows(conn, "metric_mappings", tenant)
    }
    customers = {
        r["customer_ref"]: (r["stripe_customer_id"], r["billing_anchor"])
        for r in await list_rows(conn, "customer_mappings", tenant)
    }
    return metrics, customers


async def customer_anchor(conn: psycopg.AsyncConnection, tenant: str, customer: str) -> datetime | None:
    """The customer's billing anchor; None for calendar months (or no mapping)."""
    cur = await conn.execute(
        "SELECT billing_anchor FROM customer_mappings WHERE tenant_id = %s AND customer_ref = %s",
        (tenant, customer),
    )
    row = await cur.fetchone()
    return row[0] if row else None


async def tenant_anchors(conn: psycopg.AsyncConnection, tenant: str) -> list[datetime | None]:
    """The billing anchors the tenant's customers have (None: calendar months)."""
    cur = await conn.execute(
        "SELECT DISTINCT billing_anchor FROM customer_mappings WHERE tenant_id = %s", (tenant,)
    )
    return [row[0] for row in await cur.fetchall()]


async def streams_of_stripe_customer(
    conn: psycopg.AsyncConnection, stripe_customer: str
) -> tuple[list[tuple[str, str, datetime | None]], dict[tuple[str, str], list[str]]]:
    """Who bills a Stripe customer: its (tenant, customerRef, billing anchor) mappings, and per
    (tenant, meter event name) the tenant's metrics mapped to that meter."""
    cur = await conn.execute(
        "SELECT tenant_id, customer_ref, billing_anchor FROM customer_mappings WHERE stripe_customer_id = %s"
        " ORDER BY tenant_id, customer_ref",
        (stripe_customer,),
    )
    customers = [(str(t), str(c), a) for t, c, a in await cur.fetchall()]
    tenants = sorted({t for t, _, _ in customers})
    cur = await conn.execute(
        "SELECT tenant_id, stripe_meter_event_name, metric FROM metric_mappings WHERE tenant_id = ANY(%s)"
        " ORDER BY tenant_id, metric",
        (tenants,),
    )
    metrics: dict[tuple[str, str], list[str]] = {}
    for tenant, event_name, metric in await cur.fetchall():
        metrics.setdefault((str(tenant), str(event_name)), []).append(str(metric))
    return customers, metrics


async def tombstone_horizon(conn: psycopg.AsyncConnection, tenant: str, metric: str) -> int | None:
    """The dedupe horizon (epoch ms) a deleted metric mapping left behind, if any."""
    cur = await conn.execute(
        "SELECT dedupe_horizon FROM metric_mapping_tombstones WHERE tenant_id = %s AND metric = %s",
        (tenant, metric),
    )
    row = await cur.fetchone()
    return None if row is None or row[0] is None else int(row[0].timestamp() * 1000)
