"""Which Stripe API carries a round's meter events (pure): v1 (one request an event, validated before
the answer) or the v2 meter event stream (up to 100 events a request, validated after it).

``STRIPEMETER_STRIPE_API`` says ``v1``, ``v2`` or ``auto``. With ``auto`` the writer sends on v1
while the rate it needs stays well inside the calls budget, and on the stream when it does not: the
projected rate is the meter events the round has recorded so far, spread over one flush interval (the
time before the next round brings more), and v1 is used while that is at most ``V1_SHARE`` of
``STRIPEMETER_STRIPE_CALLS_PER_SECOND``; the rest of the budget stays for reconciliation's reads. A
quiet hour thus goes out on v1, and the top of the hour or a catch-up after an outage on the stream.
"""

from __future__ import annotations

from typing import Literal

Api = Literal["v1", "v2"]
SETTINGS = ("v1", "v2", "auto")
V1_SHARE = 0.5


def projected_rate(events_this_round: int, flush_interval: float) -> float:
    """Meter events a second the round needs: what it recorded so far, over one flush interval."""
    return events_this_round / max(flush_interval, 1e-3)


def choose_api(setting: str, projected_per_second: float, calls_per_second: float) -> Api:
    if setting == "v1":
        return "v1"
    if setting == "v2":
        return "v2"
    if setting != "auto":
        raise ValueError(f"STRIPEMETER_STRIPE_API must be one of {', '.join(SETTINGS)}, not {setting!r}")
    return "v1" if projected_per_second <= V1_SHARE * calls_per_second else "v2"
