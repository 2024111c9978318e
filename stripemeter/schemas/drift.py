"""The reconciliation.drift record: one item a reconciliation run found beyond parity.

The contract's fields (``tenantId`` to ``status``), then what the run did about it (``action``), when
it was checked (``at``), the causes and the settled hours that differ. Consumers read the JSON as it
is: the keys, their order and their spelling never change (the wire names are the fields' names in
camelCase, in the order the fields are declared). The format's version (``"v"``) comes last.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import orjson

from stripemeter.domain.timefmt import iso_exact
from stripemeter.schemas import versions


@dataclass(frozen=True)
class Drift:
    tenant_id: str
    metric: str
    customer_ref: str
    period: str  # YYYY-MM, the period's name (a customer's anchored cycle bears its month's name)
    local: int  # whole units Stripe should bill for the period
    stripe: int  # what Stripe's summaries bill
    diff_abs: int
    diff_pct: float  # rounded to 6 places
    status: str  # within_epsilon or drift
    action: str  # what the run did: adjusted, replay (the operator's turn) or wait
    at: datetime  # when the run checked the item
    causes: list[dict[str, Any]]  # {"code", "message", ...} each
    hours: list[dict[str, Any]]  # settled hours that differ: bucket, local, stripe, diff


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


_NAMES = tuple(f.name for f in fields(Drift))
WIRE_NAMES = tuple(map(_camel, _NAMES))
# what a one-line view shows: every field but the causes and hours (which can be long)
SUMMARY_NAMES = WIRE_NAMES[: WIRE_NAMES.index("causes")]


def encode_drift(drift: Drift) -> bytes:
    values = [getattr(drift, name) for name in _NAMES]
    values[WIRE_NAMES.index("at")] = iso_exact(drift.at)
    return orjson.dumps(versions.stamp(dict(zip(WIRE_NAMES, values, strict=True))))


def decode_drift(raw: bytes) -> Drift:
    value: dict[str, Any] = orjson.loads(raw)
    versions.object_version(value, "a reconciliation.drift record")
    values = [value[name] for name in WIRE_NAMES]
    values[WIRE_NAMES.index("at")] = datetime.fromisoformat(value["at"].replace("Z", "+00:00"))
    return Drift(*values)
