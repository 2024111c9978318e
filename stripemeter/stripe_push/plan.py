"""Deciding a push (pure): from what we hold and what Stripe has, the one meter event to send.

Stripe meter values are whole numbers, so we push whole units: ``floor(total)`` for sum and count
counters; a fractional remainder waits until it adds up. A ``last`` counter pushes its current value
(Stripe's ``last`` formula keeps the newest event), the others push the difference.

The identifier is derived from the counter and the pushed range, so a retried push - after a timeout
or a crash - carries the same identifier and Stripe answers "already exists" instead of counting it
again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from stripemeter.events import MICROS

HOUR_S = 3600


@dataclass(frozen=True)
class CounterState:
    tenant_id: str
    metric: str
    customer_ref: str
    bucket_s: int  # unix seconds of the hour bucket start
    latest_micros: int
    latest_seq: int
    pushed_units: int
    pending_identifier: str | None
    pending_to_units: int | None


@dataclass(frozen=True)
class Mapping:
    event_name: str
    aggregation: str
    stripe_customer_id: str
    customer_key: str = "stripe_customer_id"
    value_key: str = "value"


@dataclass(frozen=True)
class Push:
    identifier: str
    event_name: str
    payload: dict[str, str]
    timestamp: int
    to_units: int


def units(total_micros: int) -> int:
    return total_micros // MICROS


def identifier(state: CounterState, from_units: int, to_units: int) -> str:
    """``sm_`` + 24 hex of sha256(counter) + the pushed range + the counter's seq.

    The seq makes it unique even when a total returns to an earlier value (corrections can be
    negative); at most 100 characters, as Stripe allows.
    """
    counter = "\x1f".join([state.tenant_id, state.metric, state.customer_ref, str(state.bucket_s)])
    digest = hashlib.sha256(counter.encode()).hexdigest()[:24]
    return f"sm_{digest}_{from_units}_{to_units}_{state.latest_seq}"


# Stripe refuses meter events stamped more than 5 minutes ahead of its clock
MAX_AHEAD_S = 4 * 60


def stamp(bucket_s: int) -> int:
    """A meter event's timestamp: the start of the counter's hour, always the same for one hour, so
    a resent request is the same request, Stripe's hour summaries line up with ours, and the hour lands
    in the billing period that holds its start (see reconcile/periods.py)."""
    return bucket_s


def not_begun(state: CounterState, now_s: int) -> bool:
    """An event may be up to an hour ahead of the clock; Stripe takes its stamp 5 minutes ahead."""
    return state.bucket_s > now_s + MAX_AHEAD_S


def next_push(state: CounterState, mapping: Mapping) -> Push | None:
    """The push to make now, or None when Stripe already has this counter's whole units."""
    if state.pending_identifier is not None and state.pending_to_units is not None:
        to_units = state.pending_to_units
        ident = state.pending_identifier
    else:
        to_units = units(state.latest_micros)
        if to_units == state.pushed_units:
            return None
        ident = identifier(state, state.pushed_units, to_units)
    value = to_units if mapping.aggregation == "last" else to_units - state.pushed_units
    return Push(
        identifier=ident,
        event_name=mapping.event_name,
        payload={mapping.customer_key: mapping.stripe_customer_id, mapping.value_key: str(value)},
        timestamp=stamp(state.bucket_s),
        to_units=to_units,
    )
