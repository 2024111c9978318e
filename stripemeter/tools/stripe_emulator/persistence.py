"""The account's customers, meters and meter events kept in one JSON file, so an emulator started again
(`stripemeter stack down`, then `up`) still has them, as Stripe would.

Written whole, atomically (a temporary file renamed over the old one), at most once a second while
the account changes and when the emulator stops; read once when it starts. Billing objects (products,
prices, subscriptions, invoices, test clocks), stored idempotent answers, faults and the event
destination are not kept: the demo and the tests create them for each story, and `stack up` sets the
destination again.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import orjson

from stripemeter.tools.stripe_emulator.meter_events import MeterEvent
from stripemeter.tools.stripe_emulator.state import EmulatorState

FORMAT = 1
EVENT_FIELDS = tuple(f.name for f in fields(MeterEvent))  # an event is a list of them, in this order


def snapshot(state: EmulatorState) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "customers": list(state.customers.values()),
        "meters": list(state.meters.values()),
        "events": [[getattr(e, name) for name in EVENT_FIELDS] for e in state.events],
    }


def save(state: EmulatorState, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(orjson.dumps(snapshot(state)))
    os.replace(partial, path)


def load(state: EmulatorState, path: Path) -> bool:
    """Restore what ``path`` holds into ``state``; False when there is no file yet."""
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return False
    if data.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not an emulator account this release reads (format {data.get('format')!r})"
        )
    state.restore(data["customers"], data["meters"], [MeterEvent(*fields) for fields in data["events"]])
    return True


class Keeper:
    """Saves the account to ``path`` when it may have changed: ``touch()`` after a write, ``flush()``
    on the emulator's tick and when it stops."""

    def __init__(self, state: EmulatorState, path: Path) -> None:
        self.state = state
        self.path = path
        self.touched = False

    def touch(self) -> None:
        self.touched = True

    def flush(self) -> None:
        if self.touched:
            self.touched = False
            save(self.state, self.path)
