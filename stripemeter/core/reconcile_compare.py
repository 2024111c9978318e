"""Judging one reconciliation item (pure): local hours against Stripe's, per hour.

An item is one (tenant, metric, customer, period). Every hour bucket is compared on its own, so a
difference is located, not just noticed. An hour whose local total, push or correction changed less
than ``settle_seconds`` ago is *in flight*: Stripe may not show it yet, so it is reported apart and
never counted as drift (the runner gives an hour with a correction Stripe has not answered clearly an
endless settle time: it may have landed).

``local`` is what Stripe should hold: whole units per hour, as the writer pushes them (Stripe meter
values are whole numbers; within a period a fraction carries into the next hour, see
core/push_plan.targets), computed here from the exact local totals. For ``sum`` and ``count`` an hour
Stripe holds no event for holds 0; ``diffAbs`` sums the absolute differences of the settled hours (a
surplus in one hour does not hide a loss in another); ``diffPct`` divides it by the larger of the two
totals, as the contract's epsilon does.

``last`` is judged by what Stripe's ``last`` formula bills: the value of the period's newest event. An
hour Stripe holds no event for is absent, not 0 (a drop to 0 that never reached Stripe leaves the
older value billed). The period verdict compares what each side bills (local: the newest hour's value;
Stripe: the value of its newest hour); the newest hour of either side decides, so the difference is in
flight when that hour is, and the settled hours that differ are listed to locate it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from stripemeter.domain.units import micros_to_float

Status = Literal["parity", "within_epsilon", "drift"]
State = Literal["equal", "in_flight", "drift"]


@dataclass(frozen=True)
class Hour:
    local: int  # whole units Stripe should hold for this hour (fractions carried within the period)
    pushed: int | None  # whole units the writer recorded as delivered; None: the writer never saw it
    writer_status: str | None  # stripe_pushes.status
    writer_reason: str | None
    changed_at: float  # unix seconds of the newest local change, push or correction of this hour
    exact_micros: int = 0  # the exact local total of the hour


@dataclass
class Item:
    tenant_id: str
    metric: str
    customer_ref: str
    aggregation: str
    hours: dict[int, Hour] = field(default_factory=dict)  # bucket start (unix s) -> hour
    missing: list[str] = field(default_factory=list)  # what mapping is missing, if any
    late_count: int = 0  # too-late events of this item's period waiting in usage.late
    late_micros: int = 0

    def local_total(self) -> int:
        return total(self.aggregation, {b: h.local for b, h in self.hours.items()})

    def exact_total_micros(self) -> int:
        return total(self.aggregation, {b: h.exact_micros for b, h in self.hours.items()})


@dataclass(frozen=True)
class Look:
    """One hour compared. ``None`` is no value: no local counter, or no event in Stripe's summary
    (for ``sum`` and ``count`` both read as 0)."""

    bucket: int
    local: int | None
    stripe: int | None
    state: State

    @property
    def diff(self) -> int:
        return (self.local or 0) - (self.stripe or 0)

    def wire(self) -> dict[str, Any]:
        """``diff`` is null when a side has no value (``last``: 0 and "no event" bill differently)."""
        diff = None if self.local is None or self.stripe is None else self.diff
        return {"bucket": self.bucket, "local": self.local, "stripe": self.stripe, "diff": diff}


@dataclass
class Verdict:
    local: int
    stripe: int
    diff_abs: int
    diff_pct: float
    status: Status
    in_flight: int  # local minus Stripe over hours still in flight
    causes: list[dict[str, Any]]
    hours: list[dict[str, Any]]  # settled hours that differ: bucket, local, stripe, diff
    corrections: list[tuple[int, int]]  # (bucket, value) that would align Stripe with local


def total(aggregation: str, per_hour: dict[int, int]) -> int:
    """A period total from hour values: a sum, or the newest hour's value for ``last``."""
    if not per_hour:
        return 0
    if aggregation == "last":
        return per_hour[max(per_hour)]
    return sum(per_hour.values())


def status_of(diff_abs: int, diff_pct: float, epsilon: float) -> Status:
    if diff_abs == 0:
        return "parity"
    return "within_epsilon" if diff_pct <= epsilon else "drift"


def relative(diff_abs: int, local: int, stripe: int) -> float:
    scale = max(abs(local), abs(stripe))
    if diff_abs == 0:
        return 0.0
    return 1.0 if scale == 0 else diff_abs / scale


def look(item: Item, bucket: int, stripe: int | None, now: float, settle_seconds: float) -> Look:
    hour = item.hours.get(bucket)
    if item.aggregation == "last":
        local = hour.local if hour else None
    else:
        local, stripe = (hour.local if hour else 0), (stripe or 0)
    if local == stripe:
        return Look(bucket, local, stripe, "equal")
    if hour is not None and now - hour.changed_at < settle_seconds:
        return Look(bucket, local, stripe, "in_flight")
    return Look(bucket, local, stripe, "drift")


def judge(
    item: Item, stripe_hours: dict[int, int], now: float, settle_seconds: float, epsilon: float
) -> Verdict:
    looks = [
        look(item, bucket, stripe_hours.get(bucket), now, settle_seconds)
        for bucket in sorted(set(item.hours) | set(stripe_hours))
    ]
    local_total = item.local_total()
    stripe_total = total(item.aggregation, stripe_hours)
    drifting = [h for h in looks if h.state == "drift"]
    if item.aggregation == "last":
        in_flight, diff_abs = _last_difference(looks, local_total, stripe_total)
        if diff_abs == 0:
            drifting = []
    else:
        in_flight = sum(h.diff for h in looks if h.state == "in_flight")
        diff_abs = sum(abs(h.diff) for h in drifting)
    diff_pct = relative(diff_abs, local_total, stripe_total)
    status = status_of(diff_abs, diff_pct, epsilon)
    return Verdict(
        local=local_total,
        stripe=stripe_total,
        diff_abs=diff_abs,
        diff_pct=diff_pct,
        status=status,
        in_flight=in_flight,
        causes=causes(item, drifting) if status != "parity" else late_note(item),
        hours=[h.wire() for h in drifting],
        corrections=corrections(item, drifting),
    )


def _last_difference(looks: list[Look], local_bill: int, stripe_bill: int) -> tuple[int, int]:
    """(in flight, settled difference) of what the two sides bill for a ``last`` item: the newest hour
    of either side decides, so the difference is in flight exactly when that hour is."""
    if local_bill == stripe_bill or not looks:
        return 0, 0
    if looks[-1].state == "in_flight":
        return local_bill - stripe_bill, 0
    return 0, abs(local_bill - stripe_bill)


def judge_totals(item: Item, stripe_total: int) -> Verdict | None:
    """Parity from the period totals alone (one Stripe call), or None when hours must be compared."""
    local_total = item.local_total()
    if local_total != stripe_total:
        return None
    return Verdict(local_total, stripe_total, 0, 0.0, "parity", 0, late_note(item), [], [])


def late_note(item: Item) -> list[dict[str, Any]]:
    if not item.late_count:
        return []
    return [
        {
            "code": "late_events",
            "message": f"{item.late_count} too-late events are in usage.late and not counted; "
            "replay their window to count them",
            "count": item.late_count,
            "total": micros_to_float(item.late_micros),
        }
    ]


def causes(item: Item, drifting: list[Look]) -> list[dict[str, Any]]:
    """The likely reasons the settled hours differ, most actionable first."""
    found: list[dict[str, Any]] = []
    if item.missing:
        found.append(
            {
                "code": "missing_mapping",
                "message": "no " + " and no ".join(item.missing) + "; counted usage waits for it",
            }
        )
    parked = [item.hours[h.bucket] for h in drifting if _status(item, h.bucket) == "parked"]
    if parked:
        reasons = sorted({h.writer_reason or "unknown" for h in parked})
        found.append({"code": "push_parked", "message": "; ".join(reasons), "hours": len(parked)})
    unpushed = [h for h in drifting if _unpushed(item, h)]
    if unpushed and not item.missing:
        found.append(
            {
                "code": "not_yet_pushed",
                "message": "the writer has not delivered these hours yet (is it running, or behind?)",
                "hours": len(unpushed),
                "amount": sum(h.diff for h in unpushed),
            }
        )
    higher = [h for h in drifting if _higher(h) and not _unpushed(item, h)]
    if higher:
        found.append(
            {
                "code": "stripe_higher",
                "message": "Stripe holds more than was counted: a foreign or duplicated push",
                "hours": len(higher),
                "amount": sum(-h.diff for h in higher),
            }
        )
    lower = [h for h in drifting if not _higher(h) and _synced(item, h.bucket) and not _unpushed(item, h)]
    if lower:
        found.append(
            {
                "code": "stripe_missing",
                "message": "pushes recorded as delivered are missing in Stripe (dropped or cancelled)",
                "hours": len(lower),
                "amount": sum(h.diff for h in lower),
            }
        )
    return found + late_note(item)


def corrections(item: Item, drifting: list[Look]) -> list[tuple[int, int]]:
    """Meter events that align Stripe with local, for hours the writer has fully delivered, or never
    had (Stripe holds usage of an hour nobody counted).

    An hour the writer still owes or may still send (waiting, pending, parked, unmapped: local 0
    included, a correction can bring a counter to 0 while the writer still owes the change) is left to
    the writer: correcting it here too would count the change twice. ``last`` meters are not corrected
    by an extra event: the writer sends the hour's value again.
    """
    if item.aggregation == "last" or item.missing:
        return []
    return [(h.bucket, h.diff) for h in drifting if _delivered(item, h.bucket) or _never_counted(item, h)]


def _higher(h: Look) -> bool:
    """Stripe holds more than local, or (``last``) a value where local has none."""
    if h.local is None or h.stripe is None:
        return h.local is None
    return h.stripe > h.local


def _status(item: Item, bucket: int) -> str | None:
    hour = item.hours.get(bucket)
    return hour.writer_status if hour else None


def _synced(item: Item, bucket: int) -> bool:
    hour = item.hours.get(bucket)
    return hour is not None and hour.pushed is not None and hour.pushed == hour.local


def _delivered(item: Item, bucket: int) -> bool:
    """The writer delivered the hour's target and has nothing in flight for it."""
    hour = item.hours.get(bucket)
    return _synced(item, bucket) and hour is not None and hour.writer_status == "synced"


def _never_counted(item: Item, h: Look) -> bool:
    hour = item.hours.get(h.bucket)
    return hour is None or (hour.local == 0 and hour.pushed is None and hour.writer_status is None)


def _unpushed(item: Item, h: Look) -> bool:
    """Local holds a value the writer has not delivered: for ``sum``, a target it has not reached; for
    ``last``, also a value Stripe holds no event for (a 0 included: ``last`` bills the newest event)."""
    hour = item.hours.get(h.bucket)
    if hour is None or hour.writer_status == "parked":
        return False
    if item.aggregation == "last" and h.stripe is None:
        return True
    if hour.local == 0 and hour.pushed in (None, 0):
        return False
    return not _synced(item, h.bucket)
