"""Judging one reconciliation item (pure): local hours against Stripe's, per hour.

An item is one (tenant, metric, customer, period). Every hour bucket is compared on its own, so a
difference is located, not just noticed. An hour whose local total, push or correction changed less
than ``settle_seconds`` ago is *in flight*: Stripe may not show it yet, so it is reported apart and
never counted as drift (the runner gives an hour with a correction Stripe has not answered clearly an
endless settle time: it may have landed).

**Stripe's summaries lag, without a documented bound.** An hour's *steps* are what Stripe took for it,
in delivery order: the writer's delivered requests and the reconciler's applied corrections. A Stripe
value equal to what the hour held after its first k steps (k < all) is explained by lag: the hour is in
flight until its first unseen step is ``lag_cap`` old, and how long that step has been unseen is a
*lag observation*. Once a later read shows the step, the observation is confirmed; the runner's settle
time is the larger of the configured one and a multiple of the longest lag confirmed lately
(``settle_time``), so a value no step sequence explains (a foreign push while one of ours is unseen)
waits that long too. A step still unseen after ``lag_cap`` is drift: lost, or Stripe slower than the
cap (the cause says so).

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

**A shared Stripe pair is not one counter.** Stripe sums (or takes the newest of) every event of a
(meter event name, Stripe customer) pair, whichever counter sent it. An item whose pair more than one
(tenant, metric, customer) maps to is compared as the sum of those counters when they are all
``sum`` or ``count`` (the runner gives it the members' summed hours), is never corrected (a
correction belongs to no one counter), and names the pair and its members as a cause.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from stripemeter.domain.units import micros_to_float

Status = Literal["parity", "within_epsilon", "drift"]
State = Literal["equal", "in_flight", "drift"]


# a step Stripe does not show may be lag this long at most; after it, it is reported as missing
LAG_CAP_S = 3600.0
# the settle time is at least this multiple of the longest lag confirmed lately
LAG_MULTIPLE = 2.0


@dataclass(frozen=True)
class Step:
    """Something Stripe took for an hour: a delivered request of the writer or an applied correction."""

    at: float  # unix seconds it was recorded as delivered (Stripe had it by then)
    value: int  # sum: the units it adds; last: the value the hour holds after it
    # a correction: the value Stripe's summary showed for the hour when it was decided (None: a push)
    seen: int | None = None


@dataclass(frozen=True)
class Hour:
    local: int  # whole units Stripe should hold for this hour (fractions carried within the period)
    pushed: int | None  # whole units the writer recorded as delivered; None: the writer never saw it
    writer_status: str | None  # stripe_pushes.status
    writer_reason: str | None
    changed_at: float  # unix seconds of the newest local change, push or correction of this hour
    exact_micros: int = 0  # the exact local total of the hour
    steps: tuple[Step, ...] = ()  # in delivery order (the runner loads them for hours that differ)
    base: int = 0  # sum: units the hour held before its first step (delivered before requests were logged)
    # the counter's seq plus the writer row's version: both only grow, so any change of either moves it
    revision: int = 0


@dataclass(frozen=True)
class Lag:
    """An hour whose summary does not show a delivered step yet."""

    bucket: int
    unseen_since: float  # when the first step Stripe does not show was delivered
    seconds: float  # how long it has been unseen


Member = tuple[str, str, str]  # tenant, metric, customer ref


@dataclass(frozen=True)
class SharedPair:
    """A (meter event name, Stripe customer) pair that more than one counter stream maps to."""

    event_name: str
    stripe_customer: str
    members: tuple[Member, ...]  # sorted
    aggregations: frozenset[str]

    @property
    def summed(self) -> bool:
        """Compared as the sum of the members' counters: Stripe adds all their events up."""
        return self.aggregations <= {"sum", "count"}

    def cause(self) -> dict[str, Any]:
        names = ", ".join("/".join(m) for m in self.members)
        how = (
            "compared as the sum of their counters"
            if self.summed
            else "Stripe bills the newest event of any of them, which this counter alone may not show"
        )
        return {
            "code": "shared_stripe_pair",
            "message": f"Stripe meter event {self.event_name!r} for customer {self.stripe_customer} is fed by"
            f" {len(self.members)} counters ({names}): {how}; never corrected, map each to its own pair",
            "eventName": self.event_name,
            "stripeCustomer": self.stripe_customer,
            "members": [{"tenantId": t, "metric": m, "customerRef": c} for t, m, c in self.members],
        }


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
    # per corrected hour: (bucket, newest correction's time, unanswered, how many may be in Stripe)
    corrections: tuple[tuple[int, float, bool, int], ...] = ()
    shared: SharedPair | None = None  # its Stripe pair is fed by other counters too

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
    lag: Lag | None = None  # Stripe shows the hour's first steps only
    shown: tuple[float, ...] = ()  # delivery times of the steps Stripe's value proves it shows

    @property
    def diff(self) -> int:
        return (self.local or 0) - (self.stripe or 0)

    def wire(self) -> dict[str, Any]:
        """``diff`` is null when a side has no value (``last``: 0 and "no event" bill differently)."""
        diff = None if self.local is None or self.stripe is None else self.diff
        wire: dict[str, Any] = {"bucket": self.bucket, "local": self.local, "stripe": self.stripe}
        wire["diff"] = diff
        if self.lag is not None:
            wire["unseenSeconds"] = round(self.lag.seconds)
        return wire


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
    lags: list[Lag] = field(default_factory=list)  # hours whose summary lags a step, under the cap
    shown: list[tuple[int, tuple[float, ...]]] = field(default_factory=list)  # (bucket, shown steps)
    settled: bool = True  # no hour was in flight


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


def differing(item: Item, stripe_hours: dict[int, int]) -> set[int]:
    """The buckets whose local value differs from Stripe's (the hours whose steps judging needs)."""
    last = item.aggregation == "last"
    out = set()
    for bucket in set(item.hours) | set(stripe_hours):
        hour = item.hours.get(bucket)
        local = hour.local if hour else (None if last else 0)
        stripe = stripe_hours.get(bucket) if last else stripe_hours.get(bucket, 0)
        if local != stripe:
            out.add(bucket)
    return out


def shared_pairs(rows: list[tuple[str, str, str, str, str, str]]) -> dict[tuple[str, str], SharedPair]:
    """The pairs more than one counter stream maps to, from mapping rows (event name, Stripe customer,
    tenant, metric, customer ref, aggregation)."""
    members: dict[tuple[str, str], set[Member]] = {}
    aggregations: dict[tuple[str, str], set[str]] = {}
    for event_name, customer, tenant, metric, ref, aggregation in rows:
        members.setdefault((event_name, customer), set()).add((tenant, metric, ref))
        aggregations.setdefault((event_name, customer), set()).add(aggregation)
    return {
        pair: SharedPair(*pair, tuple(sorted(found)), frozenset(aggregations[pair]))
        for pair, found in members.items()
        if len(found) > 1
    }


def combine(hours: list[Hour]) -> Hour:
    """One hour of a shared pair: its counters' hours added up (the writer's state: synced only when
    every counter is)."""
    pending = [h for h in hours if h.writer_status != "synced"]
    pushed = [h.pushed for h in hours if h.pushed is not None]
    return Hour(
        local=sum(h.local for h in hours),
        pushed=sum(pushed) if pushed else None,
        writer_status=pending[0].writer_status if pending else "synced",
        writer_reason="; ".join(sorted({h.writer_reason for h in hours if h.writer_reason})) or None,
        changed_at=max(h.changed_at for h in hours),
        exact_micros=sum(h.exact_micros for h in hours),
        revision=sum(h.revision for h in hours),
    )


def settle_time(configured: float, longest_lag: float | None, cap: float = LAG_CAP_S) -> float:
    """The settle time to use: the configured one, or a multiple of the longest lag of Stripe's
    summaries confirmed lately if that is longer, but never more than the cap."""
    return min(max(cap, configured), max(configured, LAG_MULTIPLE * (longest_lag or 0.0)))


def states(aggregation: str, hour: Hour) -> list[set[int | None]]:
    """Per k = 0..len(steps): the values the hour's summary shows while Stripe shows its first k steps
    only. A correction was decided on what Stripe showed (``seen``), which that state may also show
    (a foreign push the steps do not know of), and it takes the hour from there. ``None``: no event."""
    if aggregation == "last":
        held: list[int | None] = [None, *(step.value for step in hour.steps)]
        return [{value} for value in held]
    value = hour.base
    out: list[set[int | None]] = [{value}]
    for step in hour.steps:
        if step.seen is not None:
            out[-1].add(step.seen)
            value = step.seen + step.value
        else:
            value += step.value
        out.append({value})
    return out


def _explained(aggregation: str, hour: Hour, stripe: int | None) -> int | None:
    """The most steps k whose state shows ``stripe``; None when no state does."""
    found = [k for k, values in enumerate(states(aggregation, hour)) if stripe in values]
    return found[-1] if found else None


def _shown(hour: Hour, k: int) -> tuple[float, ...]:
    """Delivery times of the steps a value explained by k steps proves Stripe shows: the first k, or
    from the newest correction among them on (a correction takes the hour from what Stripe showed, so
    it does not prove the steps before it are there)."""
    steps = hour.steps[:k]
    since = max((i for i, step in enumerate(steps) if step.seen is not None), default=0)
    return tuple(step.at for step in steps[since:])


def look(
    item: Item, bucket: int, stripe: int | None, now: float, settle_seconds: float, lag_cap: float
) -> Look:
    hour = item.hours.get(bucket)
    if item.aggregation == "last":
        local = hour.local if hour else None
    else:
        local, stripe = (hour.local if hour else 0), (stripe or 0)
    if hour is None:
        return Look(bucket, local, stripe, "equal" if local == stripe else "drift")
    k = _explained(item.aggregation, hour, stripe)
    shown = _shown(hour, k) if k else ()
    if local == stripe:
        return Look(bucket, local, stripe, "equal", shown=shown)
    lag = None
    if k is not None and k < len(hour.steps):
        unseen = hour.steps[k].at
        lag = Lag(bucket, unseen, now - unseen)
    if now - hour.changed_at < settle_seconds or (lag is not None and lag.seconds < lag_cap):
        return Look(bucket, local, stripe, "in_flight", lag, shown)
    return Look(bucket, local, stripe, "drift", lag, shown)


def judge(
    item: Item,
    stripe_hours: dict[int, int],
    now: float,
    settle_seconds: float,
    epsilon: float,
    lag_cap: float = LAG_CAP_S,
) -> Verdict:
    lag_cap = max(lag_cap, settle_seconds)
    looks = [
        look(item, bucket, stripe_hours.get(bucket), now, settle_seconds, lag_cap)
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
        causes=causes(item, drifting) if status != "parity" else notes(item),
        hours=[h.wire() for h in drifting],
        corrections=corrections(item, drifting),
        lags=[h.lag for h in looks if h.lag is not None and h.lag.seconds < lag_cap],
        shown=[(h.bucket, h.shown) for h in looks if h.shown],
        settled=all(h.state != "in_flight" for h in looks),
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
    return Verdict(local_total, stripe_total, 0, 0.0, "parity", 0, notes(item), [], [])


def notes(item: Item) -> list[dict[str, Any]]:
    """What is worth knowing about an item even at parity: a shared Stripe pair, too-late events."""
    shared = [item.shared.cause()] if item.shared else []
    if not item.late_count:
        return shared
    return [
        *shared,
        {
            "code": "late_events",
            "message": f"{item.late_count} too-late events are in usage.late and not counted; "
            "replay their window to count them",
            "count": item.late_count,
            "total": micros_to_float(item.late_micros),
        },
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
    lower = [h for h in drifting if not _higher(h) and _delivered_all(item, h)]
    if lower:
        missing: dict[str, Any] = {
            "code": "stripe_missing",
            "message": "pushes recorded as delivered are missing in Stripe (dropped or cancelled)",
            "hours": len(lower),
            "amount": sum(h.diff for h in lower),
        }
        unseen = [h.lag.seconds for h in lower if h.lag is not None]
        if unseen:
            missing["message"] += (
                f"; in {len(unseen)} of them a delivered push or correction is still not in Stripe's"
                f" summaries {max(unseen):.0f} s after delivery: lost, or Stripe is slower than that"
            )
        found.append(missing)
    return found + notes(item)


def corrections(item: Item, drifting: list[Look]) -> list[tuple[int, int]]:
    """Meter events that align Stripe with local, for hours the writer has fully delivered, or never
    had (Stripe holds usage of an hour nobody counted).

    An hour the writer still owes or may still send (waiting, pending, parked, unmapped: local 0
    included, a correction can bring a counter to 0 while the writer still owes the change) is left to
    the writer: correcting it here too would count the change twice. ``last`` meters are not corrected
    by an extra event: the writer sends the hour's value again. Nor is a shared pair: a correction
    would belong to none of its counters.
    """
    if item.aggregation == "last" or item.missing or item.shared:
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
    ``last``, a value its newest delivered request did not send (a 0 included: ``last`` bills the
    newest event, so an unsent 0 leaves the older value billed)."""
    hour = item.hours.get(h.bucket)
    if hour is None or hour.writer_status == "parked":
        return False
    if item.aggregation == "last":
        return not hour.steps or hour.steps[-1].value != hour.local
    if hour.local == 0 and hour.pushed in (None, 0):
        return False
    return not _synced(item, h.bucket)


def _delivered_all(item: Item, h: Look) -> bool:
    """The writer delivered the hour's value (whatever it is doing now)."""
    if _unpushed(item, h) or h.bucket not in item.hours:
        return False
    return item.aggregation == "last" or _synced(item, h.bucket)
