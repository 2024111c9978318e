"""Which items a scheduled reconciliation pass reads from Stripe (pure).

Reading Stripe costs one call per item or more, under a budget of a few dozen reads a second; most
items do not change between two passes. An item is read when one of these holds, checked in this
order (the first is its *reason*):

- ``new``: Stripe was never read for it;
- ``unproven``: its last read did not prove parity with every hour settled (drift, within epsilon,
  hours in flight, a lag of Stripe's, a missing mapping): it is read every pass until it is proven;
- ``lagging``: an hour of it was seen lagging in Stripe's summaries and is not caught up yet;
- ``changed``: its local state is not the one it was proven on (``digest``): a counter change, a
  correction (replayed or sent to Stripe), a push delivered or dropped (Stripe's asynchronous error
  reports), a mapping change, too-late events;
- ``sweep``: its turn in the rolling sweep came since it was last read (every item once per sweep
  cadence, at a phase of its own, so a pass reads about items x interval / cadence of them): this is
  what finds a change made in Stripe alone (a foreign meter event, an event Stripe lost);
- ``closing``: its period ends within the closing window and it was not read since its turn in that
  window (spread over the window the same way): every item is read in the window before its invoice,
  whatever the sweep did.

Otherwise it is ``unchanged`` and not read: its proof stands.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

from stripemeter.core.reconcile_compare import Item

Reason = Literal["new", "unproven", "lagging", "changed", "sweep", "closing", "unchanged"]
REASONS: tuple[Reason, ...] = ("new", "unproven", "lagging", "changed", "sweep", "closing", "unchanged")


@dataclass(frozen=True)
class Proof:
    """What the last Stripe read of an item established (``reconciliation_proofs``)."""

    read_at: float  # unix seconds, on the application's clock
    digest: str | None  # the local state proven at parity; None: the read proved nothing


@dataclass(frozen=True)
class Sweep:
    """How the rolling sweep and the closing window spread their reads."""

    sweep_seconds: float  # every item is read at least once per this (the passes a day apart at most)
    interval_seconds: float  # between two scheduled passes
    closing_seconds: float  # every item is read in this window before its period ends

    @property
    def cadence(self) -> float:
        """The time between two sweep turns of an item: the sweep period less one interval, so that
        the pass after a turn (an interval later at most) still falls within the sweep period."""
        return max(self.sweep_seconds - self.interval_seconds, self.sweep_seconds / 2)

    @property
    def closing_spread(self) -> float:
        """The part of the closing window the closing turns are spread over: all but its last
        interval, so that the pass after the last turn still falls before the period ends."""
        return max(self.closing_seconds - self.interval_seconds, 0.0)


def phase(tenant: str, metric: str, customer: str) -> float:
    """The item's place in every sweep, in [0, 1): the same in every process and every pass."""
    key = "\x1f".join((tenant, metric, customer)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2**64


def sweep_turn(now: float, item_phase: float, cadence: float) -> float:
    """The item's latest sweep turn at or before ``now``: turns are ``cadence`` apart, at its phase."""
    offset = item_phase * cadence
    return now - ((now - offset) % cadence)


def closing_turn(now: float, period_end: float, item_phase: float, sweep: Sweep) -> float | None:
    """The item's turn in the closing window before ``period_end``, once it has come; None before."""
    if sweep.closing_seconds <= 0:
        return None
    turn = period_end - sweep.closing_seconds + item_phase * sweep.closing_spread
    return turn if turn <= now else None


def reason(
    proof: Proof | None,
    digest: str,
    now: float,
    period_end: float,
    item_phase: float,
    sweep: Sweep,
    lagging: bool,
) -> Reason:
    """Why an item is read in a pass at ``now`` (see the module's docstring), or ``unchanged``."""
    if proof is None:
        return "new"
    if proof.digest is None:
        return "unproven"
    if lagging:
        return "lagging"
    if proof.digest != digest:
        return "changed"
    if proof.read_at < sweep_turn(now, item_phase, sweep.cadence):
        return "sweep"
    turn = closing_turn(now, period_end, item_phase, sweep)
    if turn is not None and proof.read_at < turn:
        return "closing"
    return "unchanged"


def digest(item: Item, mapping: tuple[str, str] | None, period: tuple[float, float]) -> str:
    """A digest of everything an item's verdict depends on locally: its hours (totals, the writer's
    delivered units, state and row revisions, when each last changed; the corrections sent to Stripe
    that may be in it), its mapping (Stripe
    meter event name and customer) and period bounds, its aggregation, missing mappings, a shared
    Stripe pair's members, and the too-late events waiting. Equal digests: nothing local changed."""
    hours = [
        (b, h.local, h.exact_micros, h.pushed, h.writer_status, h.writer_reason, h.changed_at, h.revision)
        for b, h in sorted(item.hours.items())
    ]
    shared = (item.shared.members, sorted(item.shared.aggregations)) if item.shared else None
    state = [
        item.aggregation, mapping, period, sorted(item.missing), item.late_count, item.late_micros, shared,
        hours, item.corrections,
    ]  # fmt: skip
    # changed_at may be infinite (a correction Stripe has not answered): repr keeps it exact
    return hashlib.blake2b(repr(state).encode(), digest_size=16).hexdigest()


def proven(status: str, in_flight: int, settled: bool) -> bool:
    """Whether a verdict proves the item: parity, with no hour in flight."""
    return status == "parity" and in_flight == 0 and settled
