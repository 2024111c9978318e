"""Deciding pushes (pure): what Stripe should hold per hour, and the one request to send for it.

**Whole units, nothing lost.** Stripe takes whole meter values only ("decimal values" are a private
option). Within a billing period, the units an hour should hold are the whole units its exact running
total reaches, minus those the hours before reached: ``floor(C(h)) - floor(C(h - 1))``, where ``C``
sums the exact totals of the stream's hours of the period up to ``h``. A fraction therefore carries
into the next hour instead of being dropped; over the period Stripe holds ``floor(C(end))``, the exact
total less under one unit. Only a fractional change moves later hours' targets (by one unit each, at
most); whole-number usage never does. ``last`` metrics hold the hour's value, rounded half up.

**``last`` is Stripe's ``last``.** Stripe bills a ``last`` meter the value of the period's event with
the newest timestamp, and does not say how it breaks a tie. So every change of a ``last`` hour is sent,
down to 0 (an hour Stripe holds nothing for differs from one it holds 0 for), and each request of an
hour is stamped one second after the previous one (the first at the hour's start): the newest value
always has the newest timestamp. A stamp stays inside the hour and its billing period, and at most
``MAX_AHEAD_S`` ahead of the clock (the request waits until it is not).

**A resend is the recorded request.** A request (identifier, event name, payload with the meter's
own keys, timestamp, value) is recorded before the call and sent unchanged by every retry. Its
identifier is unique per counter and row version, so Stripe recognises a retry that already landed.
The idempotency key is the identifier, with a suffix after each 5xx answer: Stripe replays a 500 to
every retry with the same key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from stripemeter.domain.units import floor_units, round_units

if TYPE_CHECKING:
    from stripe.params.billing import MeterEventCreateParams

HOUR_S = 3600
# Stripe refuses meter events stamped more than 5 minutes ahead of its clock ...
MAX_AHEAD_S = 4 * 60
# ... or older than 35 days (a margin for the time a push waits)
MAX_AGE_S = 35 * 24 * HOUR_S - 2 * HOUR_S
# Stripe keeps identifiers and idempotency keys at least 24 h: a pending request older than this is
# not resent blindly (see streams/stripe_writer.py: whether it landed is read from Stripe's summaries)
IDENTIFIER_WINDOW_S = 23 * HOUR_S
# how long Stripe's summaries may take to show a meter event that landed
SUMMARY_LAG_S = 600
# a request Stripe refuses for now (see refusal_is_temporary) is retried this long, then parked
TEMPORARY_REFUSAL_LIMIT_S = HOUR_S

Key = tuple[str, str, str, datetime]  # tenant, metric, customer, hour bucket


@dataclass(frozen=True)
class Request:
    """One meter event request, exactly as sent; ``to_units`` is what the hour holds once it lands."""

    identifier: str
    event_name: str
    payload: dict[str, str]
    timestamp: int
    value: int
    to_units: int

    def params(self) -> MeterEventCreateParams:
        return {
            "event_name": self.event_name,
            "payload": self.payload,
            "identifier": self.identifier,
            "timestamp": self.timestamp,
        }

    def wire(self) -> dict[str, Any]:
        return {**self.params(), "value": self.value, "toUnits": self.to_units, "recorded": True}

    @property
    def customer(self) -> str | None:
        """The Stripe customer the request is for: the payload's entry that is not the value."""
        others = [v for v in self.payload.values() if v != str(self.value)]
        return others[0] if len(others) == 1 else None

    @staticmethod
    def from_wire(raw: dict[str, Any]) -> Request | None:
        """None for a pending push recorded before requests were (its identifier and target only)."""
        if not raw.get("recorded"):
            return None
        return Request(
            raw["identifier"], raw["event_name"], dict(raw["payload"]), int(raw["timestamp"]),
            int(raw["value"]), int(raw["toUnits"]),
        )  # fmt: skip


@dataclass(frozen=True)
class StripeMeterSpec:
    """What a Stripe meter says about sending to it."""

    id: str
    event_name: str
    formula: str
    customer_key: str
    value_key: str
    active: bool
    event_time_window: str | None


@dataclass(frozen=True)
class Row:
    """One counter hour as the writer reads it from ``stripe_pushes``."""

    key: Key
    latest_micros: int
    pushed_units: int
    status: str
    version: int
    delta_partition: int
    pending_raw: dict[str, Any] | None
    pending_since: float | None  # unix seconds the pending request was first sent
    pending_attempt: int
    attempts: int
    updated_at: float = 0.0  # unix seconds of the row's last change
    holds: bool = False  # Stripe holds an event of the hour: a request was delivered to it
    last_timestamp: int | None = None  # the newest timestamp a request of the hour was recorded with
    refused_since: float | None = None  # unix seconds of the pending request's first temporary refusal

    def retry_wait(self, now_s: float) -> bool:
        """Whether the hour's last failed attempt is too recent to try again (0.25 s doubling to 30 s;
        the lower edge of the jitter adapters/postgres/push_rows.DUE picks streams with)."""
        return self.attempts > 0 and now_s < self.updated_at + min(0.25 * 2**self.attempts, 30.0) * 0.5

    @property
    def bucket_s(self) -> int:
        return int(self.key[3].timestamp())

    @property
    def stripe_holds(self) -> bool:
        """Whether Stripe holds an event of the hour (units delivered to it count as one)."""
        return self.holds or self.pushed_units != 0

    @property
    def pending(self) -> Request | None:
        return Request.from_wire(self.pending_raw) if self.pending_raw else None


def targets(aggregation: str, hours: Sequence[int]) -> list[int]:
    """Whole units each hour should hold in Stripe, from the exact totals of a stream's hours of one
    billing period in bucket order (see the module's docstring)."""
    if aggregation == "last":
        return [round_units(micros) for micros in hours]
    out, running, reached = [], 0, 0
    for micros in hours:
        running += micros
        whole = floor_units(running)  # towards minus infinity: negative corrections carry too
        out.append(whole - reached)
        reached = whole
    return out


def identifier(key: Key, version: int) -> str:
    """``sm_`` + 24 hex of sha256(counter) + the row version: unique for every request of a counter
    (the version only grows), at most 100 characters as Stripe allows."""
    counter = "\x1f".join([key[0], key[1], key[2], str(int(key[3].timestamp()))])
    return f"sm_{hashlib.sha256(counter.encode()).hexdigest()[:24]}_{version}"


def idempotency_key(request: Request, attempt: int) -> str:
    return request.identifier if attempt == 0 else f"{request.identifier}-r{attempt}"


def identifier_of_key(key: str) -> str:
    """The identifier an idempotency key was made from (Stripe's error reports may name either)."""
    head, _, tail = key.rpartition("-r")
    return head if head and tail.isdigit() else key


def reached(row: Row, target_units: int, aggregation: str) -> bool:
    """Whether Stripe holds the hour's target already. A ``last`` hour Stripe holds nothing for has not
    reached 0: the period's newest event would be an earlier hour's."""
    return target_units == row.pushed_units and (aggregation != "last" or row.stripe_holds)


Stamp = int | Literal["wait", "exhausted"]


def next_timestamp(row: Row, aggregation: str, end_s: int, now_s: float) -> Stamp:
    """The timestamp of the hour's next request: the hour's start, or for ``last`` one second after the
    hour's previous request. ``end_s``: where the hour stops holding events (its end, or its billing
    period's end when that comes first). ``wait`` while the stamp is further ahead of the clock than
    Stripe takes; ``exhausted`` when the hour has no second left for a ``last`` request."""
    if aggregation != "last" or row.last_timestamp is None:
        stamp = row.bucket_s
    else:
        stamp = max(row.bucket_s, row.last_timestamp + 1)
    if stamp >= end_s:
        return "exhausted"
    if stamp > now_s + MAX_AHEAD_S:
        return "wait"
    return stamp


def new_request(
    row: Row,
    target_units: int,
    aggregation: str,
    meter: StripeMeterSpec,
    stripe_customer: str,
    timestamp: int | None = None,
) -> Request:
    """The request that brings the hour from what it holds to ``target_units``: a difference, or for
    ``last`` the value itself. Stamped with ``timestamp`` (``next_timestamp``), by default the hour's
    start (see domain/periods.py)."""
    value = target_units if aggregation == "last" else target_units - row.pushed_units
    return Request(
        identifier=identifier(row.key, row.version + 1),  # the version the recording writes
        event_name=meter.event_name,
        payload={meter.customer_key: stripe_customer, meter.value_key: str(value)},
        timestamp=row.bucket_s if timestamp is None else timestamp,
        value=value,
        to_units=target_units,
    )


def held_once_landed(row: Row, request: Request, aggregation: str) -> int:
    """What the hour holds once ``request`` lands, from ``row`` as read just before: a ``last`` request
    sets it; a sum or count request adds its value to what the hour holds now. That can be less than
    the ``to_units`` it was planned for: a report that an earlier request was dropped (push_drops)
    lowers the hour while a request sent after it is still pending, and the rest is then still due."""
    return request.to_units if aggregation == "last" else row.pushed_units + request.value


def did_it_land(holds: int, without: int, landed: int, uncertain: Sequence[int]) -> str:
    """Whether a request pending for longer than Stripe keeps identifiers landed, from what Stripe's
    summary of the hour ``holds``: ``without`` it, or ``landed`` with it. Reconciliation corrections
    of the hour whose answer was lost (``uncertain``) may each be in the summary or not, so every subset
    of them is allowed on both sides; a value both sides can explain is ``unknown`` (so is one neither
    can, and more than 8 uncertain corrections)."""
    if len(uncertain) > 8:
        return "unknown"
    extras = {0}
    for units in uncertain:
        extras |= {e + units for e in extras}
    is_landed = any(holds == landed + e for e in extras)
    is_without = any(holds == without + e for e in extras)
    if is_landed != is_without:
        return "landed" if is_landed else "not_landed"
    return "unknown"


def did_last_land(summary: int | None, held: int | None, sent: int) -> str:
    """``did_it_land`` for a ``last`` hour, whose summary is the value of its newest event, or None when
    Stripe holds no event of the hour. ``held``: what the hour held before the request (None: nothing);
    the request, stamped after every earlier one of the hour, is the newest if it landed."""
    if summary is None:
        return "not_landed" if held is None else "unknown"
    if summary == sent:
        return "landed"
    return "not_landed" if summary == held else "unknown"


# Stripe's error codes for a meter event it refuses for now: the request, sent again unchanged, can land
TEMPORARY_CODES = frozenset(
    {
        "timestamp_in_future",  # our clock runs ahead of Stripe's: the stamp is fine a moment later
        "lock_timeout",  # another request held the object: retry
    }
)
# refused for a meter Stripe does not know, or knows as inactive: temporary only while the meter as
# Stripe lists it now can carry the metric (one created or reactivated a moment ago)
METER_CODES = frozenset({"no_meter", "archived_meter"})
# refused for a customer Stripe does not know: temporary only while Stripe, asked for the customer
# now, has it (one created a moment ago)
CUSTOMER_CODES = frozenset({"meter_event_customer_not_found", "resource_missing"})


def refusal_is_temporary(code: str | None, meter_fits_now: bool, customer_exists_now: bool) -> bool:
    """Whether Stripe's refusal (a 4xx with ``code``) may pass when the same request is sent again.
    Everything not named here is permanent: a timestamp too far in the past, a value Stripe cannot take,
    a payload without the meter's customer key, a parameter Stripe does not know, no code at all."""
    if code in TEMPORARY_CODES:
        return True
    if code in METER_CODES:
        return meter_fits_now
    if code in CUSTOMER_CODES:
        return customer_exists_now
    return False


def refused_too_long(row: Row, now_s: float) -> bool:
    """Whether Stripe has refused the pending request for now for ``TEMPORARY_REFUSAL_LIMIT_S``."""
    return row.refused_since is not None and now_s - row.refused_since >= TEMPORARY_REFUSAL_LIMIT_S


def not_begun(row: Row, now_s: float) -> bool:
    """An event may be up to an hour ahead of the clock; Stripe takes a stamp 5 minutes ahead."""
    return row.bucket_s > now_s + MAX_AHEAD_S


def too_old(row: Row, now_s: float) -> bool:
    return row.bucket_s < now_s - MAX_AGE_S


def meter_problem(meter: StripeMeterSpec | None, event_name: str, aggregation: str) -> tuple[str, str] | None:
    """Why a Stripe meter cannot carry a metric, as (mapping field, reason); None when it can.

    ``sum`` and ``count`` metrics need the ``sum`` formula: stripemeter sends each change of a count
    as a value, which Stripe's ``count`` formula would ignore (it counts the change events). ``last``
    needs ``last``. Pre-aggregation (``event_time_window``) keeps only the newest event per window,
    which loses every change but the last.
    """
    if meter is None:
        return "stripeMeterEventName", f"no Stripe meter has event_name {event_name!r}"
    if not meter.active:
        return "stripeMeterEventName", f"Stripe meter {meter.id} ({event_name!r}) is inactive"
    if meter.event_time_window:
        return "stripeMeterEventName", (
            f"Stripe meter {meter.id} pre-aggregates (event_time_window={meter.event_time_window}):"
            " it would keep only the newest change per window; create a meter without it"
        )
    wanted = "last" if aggregation == "last" else "sum"
    if meter.formula != wanted:
        why = (
            " (stripemeter sends each change of a count as a value; Stripe's count formula would count"
            " the changes instead)"
            if aggregation == "count"
            else ""
        )
        return "aggregation", (
            f"a {aggregation} metric needs a Stripe meter with formula {wanted}; {meter.id} has"
            f" {meter.formula}{why}"
        )
    return None
