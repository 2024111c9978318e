"""Usage history over the counters snapshot."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import psycopg

Granularity = Literal["hour", "day"]

HISTORY_SQL = """
SELECT date_trunc(%(granularity)s, bucket, 'UTC') AS start, sum(total_micros)::bigint AS micros
FROM counters
WHERE tenant_id = %(tenant)s AND metric = %(metric)s AND customer_ref = %(customer)s
  AND bucket >= %(since)s AND bucket < %(until)s
GROUP BY 1
ORDER BY 1
"""


async def usage_history(
    conn: psycopg.AsyncConnection,
    tenant: str,
    metric: str,
    customer: str,
    since: datetime,
    until: datetime,
    granularity: Granularity,
) -> list[tuple[datetime, int]]:
    cur = await conn.execute(
        HISTORY_SQL,
        {
            "granularity": granularity,
            "tenant": tenant,
            "metric": metric,
            "customer": customer,
            "since": since,
            "until": until,
        },
    )
    return [(row[0], int(row[1])) for row in await cur.fetchall()]
