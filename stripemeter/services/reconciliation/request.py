"""What a reconciliation run is asked to do (``RunRequest``) and how it judges (``ReconcileSettings``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from stripemeter.core.reconcile_compare import LAG_CAP_S

Align = Literal["within_epsilon", "all"]  # which drift a run corrects: within epsilon only, or all


@dataclass(frozen=True)
class RunRequest:
    tenant_id: str
    metric: str | None = None
    period: str | None = None  # YYYY-MM; None: the current period
    align: Align = "within_epsilon"
    trigger: str = "api"
    # scheduled runs skip items whose invoice is likely final (their period closed more than the
    # invoice grace ago): they cannot change any more, and checking them again costs Stripe calls
    only_open: bool = False
    customer_ref: str | None = None  # one customer's items only (the invoice guard's runs)
    # read Stripe only for the items core/reconcile_due.py says are due (the scheduled passes); every
    # other run reads every item it covers
    incremental: bool = False


@dataclass(frozen=True)
class ReconcileSettings:
    epsilon: float = 0.005
    settle_seconds: float = 300.0  # Stripe's summaries are eventually consistent
    invoice_grace_seconds: float = 72 * 3600.0  # how long a closed period's invoice can still change
    # a delivered step Stripe's summary does not show is lag for this long at most, then missing
    lag_cap_seconds: float = LAG_CAP_S
    lag_window_seconds: float = 24 * 3600.0  # how long a confirmed lag keeps the settle time up
    app_id: str = "stripemeter"  # lags are learnt per app (one deployment, one Stripe account)
    sweep_seconds: float = 86400.0  # an incremental pass reads every item at least this often
    closing_seconds: float = 21600.0  # ... and once in this window before its period ends
    interval_seconds: float = 900.0  # between scheduled passes (how the sweep is spread)
