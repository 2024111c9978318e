"""Stripe's asynchronous error reports (v1.billing.meter.error_report_triggered): a request it accepted
and then dropped never counted, so the counter hour holds that much less than recorded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from stripemeter.adapters.postgres.drop_covers import cover
from stripemeter.adapters.postgres.push_rows import KEY, row_params
from stripemeter.core.push_plan import Key


@dataclass(frozen=True)
class Dropped:
    """A request Stripe accepted and then dropped (an error report names it)."""

    key: Key
    value: int
    was_delivered: bool
    mapping_fixed: bool = False  # the mapping changed since: due again, not parked
    covered: int = 0  # units of it corrections of the hour made up for already (they stand in for it)


async def drop_request(
    conn: psycopg.AsyncConnection, identifier: str, reason: str, now: datetime, temporary: bool = False
) -> Dropped | None:
    """Stripe reported (asynchronously) that the request never counted: the hour holds that much less
    than recorded, and the counter is parked with Stripe's reason until its cause is fixed - unless
    the mapping changed since the request was sent (the report came after the fix), or the reason
    passes by itself (``temporary``): then the counter is simply due again. Corrections of the hour
    recorded after the request (the reconciler made up for it already) stand in for it up to their
    amount (adapters/postgres/drop_covers.py): the hour keeps those units, so the writer does not push
    them again. Idempotent: a report delivered twice changes nothing the second time."""
    async with conn.transaction():
        cur = conn.cursor(row_factory=dict_row)
        # the counter's row first, then the request's: the order every other change takes them in
        await cur.execute(
            "SELECT 1 FROM stripe_pushes p JOIN stripe_push_requests r"
            " USING (tenant_id, metric, customer_ref, bucket) WHERE r.identifier = %s FOR UPDATE OF p",
            (identifier,),
        )
        await cur.execute(
            "SELECT tenant_id, metric, customer_ref, bucket, request, status, created_at,"
            " coalesce((SELECT aggregation FROM metric_mappings m WHERE m.tenant_id = r.tenant_id"
            "           AND m.metric = r.metric), 'sum') AS aggregation"
            " FROM stripe_push_requests r WHERE identifier = %s FOR UPDATE",
            (identifier,),
        )
        found = await cur.fetchone()
        if found is None or found["status"] in ("dropped", "refused"):
            return None
        key: Key = (found["tenant_id"], found["metric"], found["customer_ref"], found["bucket"])
        request = found["request"]
        value, delivered = int(request.get("value", 0)), found["status"] == "delivered"
        fixed = await _mapping_changed_since(cur, key, request)
        covered = 0
        if delivered and found["aggregation"] != "last":
            covered = await cover(cur, key, identifier, value, found["created_at"], now)
        params = row_params(
            key, None, now, reason=reason[:1000], identifier=identifier, value=value - covered,
            status="waiting" if fixed or temporary else "parked",
        )  # fmt: skip
        if delivered:
            # sum and count hold what was delivered; a last hour holds what the request replaced
            await cur.execute(
                f"""UPDATE stripe_pushes SET status = %(status)s, reason = %(reason)s, version = version + 1,
                       updated_at = %(now)s,
                       pushed_units = CASE WHEN m.aggregation = 'last' THEN coalesce((
                           SELECT (r.request ->> 'toUnits')::bigint FROM stripe_push_requests r
                           WHERE r.tenant_id = %(tenant)s AND r.metric = %(metric)s
                             AND r.customer_ref = %(customer)s AND r.bucket = %(bucket)s
                             AND r.status = 'delivered' AND r.identifier <> %(identifier)s
                           ORDER BY r.created_at DESC LIMIT 1), 0)
                         ELSE pushed_units - %(value)s END
                    FROM (SELECT coalesce((SELECT aggregation FROM metric_mappings
                                           WHERE tenant_id = %(tenant)s AND metric = %(metric)s),
                                          'sum') AS aggregation) m
                    WHERE {KEY}""",
                params,
            )
        else:  # still pending here (its answer was lost): it did not land
            await cur.execute(
                f"UPDATE stripe_pushes SET status = %(status)s, reason = %(reason)s, pending_request = NULL,"
                f" pending_since = NULL, pending_attempt = 0, version = version + 1, updated_at = %(now)s"
                f" WHERE {KEY} AND pending_request ->> 'identifier' = %(identifier)s",
                params,
            )
        await cur.execute(
            "UPDATE stripe_push_requests SET status = 'dropped', reason = %(reason)s, updated_at = %(now)s"
            " WHERE identifier = %(identifier)s",
            params,
        )
    return Dropped(key, value, delivered, fixed, covered)


async def _mapping_changed_since(cur: psycopg.AsyncCursor[Any], key: Key, request: dict[str, Any]) -> bool:
    """Whether the counter's mappings now name another meter event name or Stripe customer than the
    request was sent with."""
    await cur.execute(
        "SELECT (SELECT stripe_meter_event_name FROM metric_mappings WHERE tenant_id = %s AND metric = %s),"
        " (SELECT stripe_customer_id FROM customer_mappings WHERE tenant_id = %s AND customer_ref = %s)",
        (key[0], key[1], key[0], key[2]),
    )
    row = await cur.fetchone()
    if row is None:
        return False
    current = list(row.values()) if isinstance(row, dict) else list(row)
    event_name, customer = current
    if event_name is None or customer is None:
        return False  # no mapping now: nothing was fixed
    sent_to = (request.get("payload") or {}).values()
    return event_name != request.get("event_name") or customer not in sent_to
