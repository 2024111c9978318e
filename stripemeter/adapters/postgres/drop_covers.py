"""Corrections that stand in for a dropped request (``stripe_drop_covers``).

Stripe validates meter events after answering 200 and reports the ones it dropped later. By then the
reconciler may have made up for the missing units (it saw ``stripe_missing`` and sent a correction of
the hour). Such a correction, recorded after the dropped request was and not covering something else
already, stands in for it up to its amount: the hour's pushed units keep that much, so the writer does
not push it again (Stripe would hold it twice). Each cover is recorded once, so a correction is not
counted twice: the corrections that ``delivered_corrections`` and ``uncertain_corrections`` report
(adapters/postgres/reconciliation.py) are net of what they cover. A correction that turns out not to have
landed (refused, or reported dropped itself) gives its covers back: another correction may take them over, and
what is left the hour holds less, so the writer pushes it again.

The callers hold the hour's push row (``FOR UPDATE``) in a transaction, taken before any adjustment
row, the order every change of these rows takes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from stripemeter.core.push_plan import Key

# the hour's corrections in the dropped request's direction recorded after it that may have landed,
# oldest first, with the units they do not cover yet
FREE_CORRECTIONS = """
SELECT a.adjustment_id,
       abs(floor(a.delta_micros / 1000000))::bigint
       - coalesce((SELECT sum(c.units) FROM stripe_drop_covers c WHERE c.adjustment_id = a.adjustment_id), 0)
       AS free
FROM adjustments a
WHERE a.target = 'stripe' AND a.status IN ('applied', 'pending') AND sign(a.delta_micros) = %(sign)s
  AND a.tenant_id = %(tenant)s AND a.metric = %(metric)s AND a.customer_ref = %(customer)s
  AND a.bucket = %(bucket)s AND a.created_at >= %(sent_at)s
  AND NOT EXISTS (SELECT 1 FROM stripe_drop_covers c
                  WHERE c.identifier = %(identifier)s AND c.adjustment_id = a.adjustment_id)
ORDER BY a.created_at, a.adjustment_id
FOR UPDATE OF a
"""


async def cover(
    cur: psycopg.AsyncCursor[Any], key: Key, identifier: str, value: int, sent_at: datetime, now: datetime
) -> int:
    """Cover up to ``value`` units (signed: a dropped negative request is made up for by a negative
    correction) of the dropped request ``identifier``, recorded at ``sent_at``, with the hour's
    corrections recorded after it that may have landed (applied, or pending: not answered yet; a
    refusal gives the cover back); returns the units covered, signed like ``value``."""
    tenant, metric, customer, bucket = key
    sign = (value > 0) - (value < 0)
    if not sign:
        return 0
    await cur.execute(
        FREE_CORRECTIONS,
        {"tenant": tenant, "metric": metric, "customer": customer, "bucket": bucket, "sent_at": sent_at,
         "identifier": identifier, "sign": sign},
    )  # fmt: skip
    free = [(_value(row, 0), int(_value(row, 1))) for row in await cur.fetchall()]
    covered = 0
    for adjustment_id, available in free:
        take = min(abs(value) - covered, available)
        if take <= 0:
            continue
        await cur.execute(
            "INSERT INTO stripe_drop_covers (identifier, adjustment_id, units, created_at)"
            " VALUES (%s, %s, %s, %s)",
            (identifier, adjustment_id, take, now),
        )
        covered += take
    return sign * covered


async def give_back(cur: psycopg.AsyncCursor[Any], adjustment_id: str, now: datetime) -> int:
    """The correction did not land: what it covered is covered by other corrections if they can, and
    the rest is taken off its hour's pushed units (the writer pushes it again). Returns the units
    taken off (signed)."""
    await cur.execute(
        "SELECT c.identifier, sign((r.request ->> 'value')::bigint) * c.units, r.tenant_id, r.metric,"
        " r.customer_ref, r.bucket, r.created_at"
        " FROM stripe_drop_covers c JOIN stripe_push_requests r USING (identifier)"
        " WHERE c.adjustment_id = %s ORDER BY r.created_at",
        (adjustment_id,),
    )
    covers = [tuple(row.values()) if isinstance(row, dict) else tuple(row) for row in await cur.fetchall()]
    await cur.execute("DELETE FROM stripe_drop_covers WHERE adjustment_id = %s", (adjustment_id,))
    taken_off = 0
    for identifier, units, tenant, metric, customer, bucket, sent_at in covers:
        key: Key = (tenant, metric, customer, bucket)
        lowered = int(units) - await cover(cur, key, identifier, int(units), sent_at, now)
        if lowered:
            await cur.execute(
                "UPDATE stripe_pushes SET pushed_units = pushed_units - %s, version = version + 1,"
                " updated_at = %s, status = CASE WHEN status = 'synced' THEN 'waiting' ELSE status END"
                " WHERE tenant_id = %s AND metric = %s AND customer_ref = %s AND bucket = %s",
                (lowered, now, tenant, metric, customer, bucket),
            )
            taken_off += lowered
    return taken_off


async def lock_hour_of_correction(cur: psycopg.AsyncCursor[Any], adjustment_id: str) -> None:
    """Hold the push row of the correction's hour (if the writer has one) before the correction's row."""
    await cur.execute(
        "SELECT 1 FROM stripe_pushes p JOIN adjustments a USING (tenant_id, metric, customer_ref, bucket)"
        " WHERE a.adjustment_id = %s FOR UPDATE OF p",
        (adjustment_id,),
    )


def _value(row: Any, index: int) -> Any:
    """A column of a row read with either row factory."""
    return list(row.values())[index] if isinstance(row, dict) else row[index]
