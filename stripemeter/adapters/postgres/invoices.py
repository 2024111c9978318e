"""The ``invoices`` table (migration 0021): the invoices the guard heard of, its state for each, and
the proof it keeps. The API records events; the guard (services/invoice_guard.py) checks due rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

STATES = ("received", "proving", "held", "released", "finalized", "unguarded")


@dataclass(frozen=True)
class Heard:
    """What one invoice.* event said about its invoice."""

    invoice_id: str
    stripe_customer: str
    stripe_status: str
    event_type: str


async def record_event(conn: psycopg.AsyncConnection, heard: Heard, now: datetime) -> None:
    """Remember the invoice and make it due now. Idempotent: an event delivered twice, late or to two
    API replicas only makes the guard read the invoice again (Stripe's copy is the truth)."""
    await conn.execute(
        """
        INSERT INTO invoices (invoice_id, stripe_customer, stripe_status, last_event_type, next_check_at,
                              first_event_at, updated_at)
        VALUES (%(id)s, %(customer)s, %(status)s, %(type)s, %(now)s, %(now)s, %(now)s)
        ON CONFLICT (invoice_id) DO UPDATE
        SET last_event_type = EXCLUDED.last_event_type, updated_at = EXCLUDED.updated_at,
            next_check_at = least(invoices.next_check_at, EXCLUDED.next_check_at),
            -- looked at again: a released draft once Stripe moved it on (its final quantities), one
            -- not guarded before (its mappings may exist now); a finalized one never goes back
            guard_state = CASE
                WHEN invoices.guard_state = 'unguarded' THEN 'received'
                WHEN invoices.guard_state = 'released' AND EXCLUDED.stripe_status <> 'draft' THEN 'received'
                ELSE invoices.guard_state END
        """,
        {
            "id": heard.invoice_id,
            "customer": heard.stripe_customer,
            "status": heard.stripe_status,
            "type": heard.event_type,
            "now": now,
        },
    )


async def due(conn: psycopg.AsyncConnection, now: datetime, limit: int = 50) -> list[str]:
    cur = await conn.execute(
        "SELECT invoice_id FROM invoices WHERE (guard_state IN ('received', 'proving', 'held')"
        " OR (guard_state = 'released' AND stripe_status = 'draft')"
        # a finalized invoice's period takes late usage for as long as Stripe takes it (35 days)
        " OR (guard_state = 'finalized' AND period_end > %(now)s - interval '36 days'))"
        # drafts first: a backlog of finalized invoices never delays a draft Stripe will finalize
        " AND next_check_at <= %(now)s ORDER BY guard_state = 'finalized', next_check_at LIMIT %(limit)s",
        {"now": now, "limit": limit},
    )
    return [row[0] for row in await cur.fetchall()]


async def get(conn: psycopg.AsyncConnection, invoice_id: str) -> dict[str, Any] | None:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute("SELECT * FROM invoices WHERE invoice_id = %s", (invoice_id,))
    return await cur.fetchone()


async def save_check(conn: psycopg.AsyncConnection, invoice_id: str, **fields: Any) -> None:
    """Write the outcome of a check: any of the table's columns (jsonb ones as Python values), plus one
    more check counted."""
    names = sorted(fields)
    sets = ", ".join(f"{name} = %({name})s" for name in names)
    params = {n: _json(v) if n in ("lines", "unbilled") else v for n, v in fields.items()}
    await conn.execute(
        f"UPDATE invoices SET {sets}, checks = checks + 1, updated_at = now()"
        " WHERE invoice_id = %(invoice_id)s",
        {**params, "invoice_id": invoice_id},
    )


def _json(value: Any) -> str:
    """JSON text; Stripe's decimals (``quantity_decimal``) as their exact strings."""
    return orjson.dumps(value, default=_exact).decode()


def _exact(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


async def count_request(conn: psycopg.AsyncConnection, invoice_id: str, column: str) -> int:
    """Record that a hold or release is about to be sent, before sending it; returns its number (part
    of the request's idempotency key). A request cut short is sent again under the next number: Stripe's
    copy of the invoice, read first by every check, says whether it is still needed."""
    assert column in ("hold_requests", "release_requests")
    cur = await conn.execute(
        f"UPDATE invoices SET {column} = {column} + 1 WHERE invoice_id = %s RETURNING {column}",
        (invoice_id,),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def hours_compared(
    conn: psycopg.AsyncConnection, tenant: str, metric: str, customer: str, start: datetime, end: datetime
) -> int:
    """The counted hours of a stream in a period (each one compared, in total or by hour)."""
    cur = await conn.execute(
        "SELECT count(*) FROM counters WHERE tenant_id = %s AND metric = %s AND customer_ref = %s"
        " AND bucket >= %s AND bucket < %s",
        (tenant, metric, customer, start, end),
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def held_invoices(conn: psycopg.AsyncConnection, limit: int) -> list[dict[str, Any]]:
    """The held invoices, longest held first (the alert's series)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT invoice_id, tenant_id, stripe_customer, period_start, reason_code, held_at FROM invoices"
        " WHERE guard_state = 'held' ORDER BY held_at NULLS LAST, invoice_id LIMIT %s",
        (limit,),
    )
    return await cur.fetchall()


async def counts_by_state(conn: psycopg.AsyncConnection) -> dict[str, int]:
    cur = await conn.execute("SELECT guard_state, count(*) FROM invoices GROUP BY guard_state")
    return {state: int(n) for state, n in await cur.fetchall()}


async def page(
    conn: psycopg.AsyncConnection,
    tenant: str | None,
    state: str | None,
    period_start: datetime | None,
    period_end: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Invoices newest period first, keyset-paged by (period_start, invoice_id)."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        """
        SELECT * FROM invoices
        WHERE (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s)
          AND (%(state)s::text IS NULL OR guard_state = %(state)s)
          AND (%(pstart)s::timestamptz IS NULL OR period_start >= %(pstart)s)
          AND (%(pend)s::timestamptz IS NULL OR period_start < %(pend)s)
          AND (%(after_at)s::timestamptz IS NULL
               OR (coalesce(period_start, 'epoch'::timestamptz), invoice_id) < (%(after_at)s, %(after_id)s))
        ORDER BY coalesce(period_start, 'epoch'::timestamptz) DESC, invoice_id DESC
        LIMIT %(limit)s
        """,
        {
            "tenant": tenant,
            "state": state,
            "pstart": period_start,
            "pend": period_end,
            "after_at": after[0] if after else None,
            "after_id": after[1] if after else None,
            "limit": limit,
        },
    )
    return await cur.fetchall()
