"""The pre-invoice guard's decisions (pure): which counters a Stripe invoice bills, and what to do
with a draft given what reconciliation found.

A metered line bills one meter (its price's ``recurring.meter``) for the invoice's customer over the
line's period. stripemeter's counters that feed that pair are the stream (tenant, metric, customerRef)
whose metric maps to the meter's event name and whose customerRef maps to the Stripe customer. The
line's period must be a period stripemeter reconciles for that customer: the cycle of its billing
anchor (domain/periods.py) that starts and ends where the line does. Hours are attributed as the
writer stamps them, by their start, exactly as Stripe attributes meter events by timestamp.

A draft is released only when every line is proven: Stripe's total for the period equals the local
total, every hour settled, nothing in flight. Otherwise it is held (``auto_advance=false``) while the
guard keeps proving; at the deadline (Stripe's ``automatically_finalizes_at`` minus a margin) an
unproven draft stays held or is released, as the operator chose.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from stripemeter.domain import periods

Kind = Literal["release", "hold", "ignore"]


@dataclass(frozen=True)
class Line:
    """A metered line of a Stripe invoice."""

    line_id: str
    price: str
    start: int  # unix seconds, inclusive
    end: int  # exclusive
    quantity: str | None  # quantity_decimal (or quantity) as Stripe shows it


@dataclass(frozen=True)
class CustomerMapping:
    tenant: str
    customer_ref: str
    anchor: datetime | None


@dataclass(frozen=True)
class Target:
    """The counters one line bills, and the period name reconciliation knows that period by."""

    line: Line
    event_name: str
    tenant: str
    metric: str
    customer_ref: str
    period_name: str


@dataclass(frozen=True)
class Problem:
    """A line the guard cannot prove whatever Stripe holds: a human has to look."""

    line: Line
    code: str  # period_mismatch, shared_pair
    message: str


@dataclass(frozen=True)
class LineCheck:
    """What reconciliation found for one target."""

    target: Target
    local: int
    stripe: int
    status: str  # parity, within_epsilon, drift (core/reconcile_compare.py)
    in_flight: int
    differing_hours: list[dict[str, Any]] = field(default_factory=list)
    corrections: int = 0
    run_id: str = ""

    @property
    def proven(self) -> bool:
        return self.status == "parity" and self.in_flight == 0 and self.local == self.stripe


@dataclass(frozen=True)
class Decision:
    kind: Kind
    code: str  # proven, in_flight, within_epsilon, beyond_epsilon, period_mismatch, deadline, ...
    reason: str


def metered_lines(invoice: Mapping[str, Any]) -> list[Line]:
    """The invoice's lines priced by a price (the guard asks each price for its meter)."""
    lines = []
    for raw in (invoice.get("lines") or {}).get("data") or []:
        price = _line_price(raw)
        period = raw.get("period") or {}
        if price is None or period.get("start") is None or period.get("end") is None:
            continue
        quantity = raw.get("quantity_decimal")
        if quantity is None and raw.get("quantity") is not None:
            quantity = str(raw["quantity"])
        lines.append(Line(str(raw["id"]), price, int(period["start"]), int(period["end"]), quantity))
    return lines


def _line_price(raw: Mapping[str, Any]) -> str | None:
    """The line's price id: ``pricing.price_details.price`` (API 2025-03-31 on), else ``price``."""
    details = ((raw.get("pricing") or {}).get("price_details")) or {}
    price = details.get("price") or raw.get("price")
    if isinstance(price, Mapping):
        price = price.get("id")
    return str(price) if price else None


def period_name_for(start: datetime, end: datetime, anchor: datetime | None) -> str | None:
    """The name of the customer's period that is exactly [start, end) (to the minute, as Stripe's
    summaries take it), or None when the customer's cycle has no such period."""
    start_minute, end_minute = _minute(start), _minute(end)
    for year, month in _months_around(start):
        name = f"{year:04d}-{month:02d}"
        try:
            period = periods.period(name, anchor)
        except periods.PeriodError:
            continue
        if period.start == start_minute and period.end == end_minute:
            return name
    return None


def _minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def _months_around(at: datetime) -> Iterable[tuple[int, int]]:
    index = at.year * 12 + at.month - 1
    for n in (index, index - 1, index + 1):
        yield n // 12, n % 12 + 1


def targets(
    lines: list[Line],
    meter_of_price: Mapping[str, str | None],
    event_name_of_meter: Mapping[str, str],
    customers: list[CustomerMapping],
    metrics_by_event: Mapping[tuple[str, str], list[str]],
) -> tuple[list[Target], list[Problem]]:
    """Each line's counters: the lines whose meter no stream of the invoice's customer feeds are not
    stripemeter's and are left out; a line fed by several streams, or billed over a period the
    customer's mapping does not give, is a problem."""
    found: list[Target] = []
    problems: list[Problem] = []
    for line in lines:
        meter = meter_of_price.get(line.price)
        event_name = event_name_of_meter.get(meter) if meter else None
        if event_name is None:
            continue
        streams = [
            (c, metric) for c in customers for metric in metrics_by_event.get((c.tenant, event_name), [])
        ]
        if not streams:
            continue
        if len(streams) > 1:
            names = ", ".join(f"{c.tenant}/{m}/{c.customer_ref}" for c, m in streams)
            problems.append(
                Problem(line, "shared_pair", f"line {line.line_id}: several counters feed it ({names})")
            )
            continue
        customer, metric = streams[0]
        start = datetime.fromtimestamp(line.start, tz=UTC)
        end = datetime.fromtimestamp(line.end, tz=UTC)
        name = period_name_for(start, end, customer.anchor)
        if name is None:
            anchor = customer.anchor.isoformat() if customer.anchor else "none (calendar months)"
            problems.append(
                Problem(
                    line,
                    "period_mismatch",
                    f"line {line.line_id} bills {start.isoformat()} to {end.isoformat()}, which is not a"
                    f" period of {customer.tenant}/{customer.customer_ref} (billing anchor {anchor}):"
                    " set the customer mapping's billingAnchor to the subscription's",
                )
            )
            continue
        found.append(Target(line, event_name, customer.tenant, metric, customer.customer_ref, name))
    return found, problems


def decide(
    checks: list[LineCheck],
    problems: list[Problem],
    *,
    stripe_now: float,
    deadline: float | None,
    unproven: str,
) -> Decision:
    """What to do with a draft now. ``stripe_now`` is Stripe's clock for the invoice (its test clock's
    time, if it has one), never the application's."""
    if not checks and not problems:
        return Decision("ignore", "unguarded", "no line bills stripemeter's counters")
    if not problems and all(c.proven for c in checks):
        return Decision("release", "proven", f"{len(checks)} line(s) at parity, nothing in flight")
    code, reason = _why_not(checks, problems)
    if deadline is not None and stripe_now >= deadline:
        if unproven == "release":
            return Decision("release", "deadline", f"released unproven at the deadline: {reason}")
        return Decision("hold", "deadline", f"the deadline passed unproven; held: {reason}")
    return Decision("hold", code, reason)


def _why_not(checks: list[LineCheck], problems: list[Problem]) -> tuple[str, str]:
    """The gravest reason the draft is not proven: a problem, drift beyond epsilon, or still proving."""
    if problems:
        return problems[0].code, "; ".join(p.message for p in problems)
    unproven = [c for c in checks if not c.proven]
    worst = next((c for c in unproven if c.status == "drift"), None)
    if worst is not None:
        return "beyond_epsilon", (
            f"{_name(worst)}: local {worst.local}, Stripe {worst.stripe}, beyond epsilon: a replay or an"
            " adjustment has to bring it to parity"
        )
    pending = unproven[0]
    if pending.in_flight:
        return "in_flight", f"{_name(pending)}: {pending.in_flight} units still in flight to Stripe"
    return "proving", f"{_name(pending)}: local {pending.local}, Stripe {pending.stripe}; aligning"


def _name(check: LineCheck) -> str:
    t = check.target
    return f"{t.tenant}/{t.metric}/{t.customer_ref} {t.period_name}"


def proof_line(check: LineCheck, hours_compared: int) -> dict[str, Any]:
    """One line of an invoice's proof, as kept and served."""
    t = check.target
    return {
        "lineId": t.line.line_id,
        "price": t.line.price,
        "eventName": t.event_name,
        "tenantId": t.tenant,
        "metric": t.metric,
        "customerRef": t.customer_ref,
        "period": t.period_name,
        "periodStart": _iso(t.line.start),
        "periodEnd": _iso(t.line.end),
        "local": check.local,
        "stripe": check.stripe,
        "status": check.status,
        "inFlight": check.in_flight,
        "proven": check.proven,
        "hoursCompared": hours_compared,
        "differingHours": check.differing_hours,
        "corrections": check.corrections,
        "reconciliationRun": check.run_id,
        "invoiceQuantity": t.line.quantity,
    }


def problem_line(problem: Problem) -> dict[str, Any]:
    line = problem.line
    return {
        "lineId": line.line_id,
        "price": line.price,
        "periodStart": _iso(line.start),
        "periodEnd": _iso(line.end),
        "proven": False,
        "problem": problem.code,
        "message": problem.message,
        "invoiceQuantity": line.quantity,
    }


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Unbilled:
    """Usage of a finalized line counted beyond the line's quantity, and how much of it was carried to
    a later invoice already."""

    line_id: str
    units: int
    carried: int

    @property
    def to_carry(self) -> int:
        return self.units - self.carried


def unbilled(
    proof: list[dict[str, Any]], local: Mapping[str, int], before: list[dict[str, Any]]
) -> list[Unbilled]:
    """Per proven line of a finalized invoice, the units counted beyond what the invoice billed (its
    final quantity); ``local``: the line's local total now; ``before``: what was recorded earlier
    (the units carried so far are kept)."""
    carried = {u["lineId"]: int(u.get("carried", 0)) for u in before}
    out = []
    for line in proof:
        billed = line.get("invoiceQuantity")
        if line.get("problem") or billed is None or line["lineId"] not in local:
            continue
        extra = local[line["lineId"]] - int(float(billed))
        if extra > 0 or carried.get(line["lineId"]):
            out.append(Unbilled(line["lineId"], max(extra, 0), carried.get(line["lineId"], 0)))
    return out
