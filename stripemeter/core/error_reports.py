"""Stripe's asynchronous error reports (``v1.billing.meter.error_report_triggered``), read (pure).

Stripe validates meter events after accepting them: an event for an unknown customer, an inactive
meter or an invalid value is answered 200 and then dropped, and reported later through an event
destination. The report names sample requests by identifier (or idempotency key); each such request
counted nothing, so its counter holds less in Stripe than recorded and is parked with Stripe's reason
until its cause is fixed (a changed mapping retries it). Codes about the meter itself also mean that
what is known about meters is out of date.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stripemeter.core.push_plan import identifier_of_key

METER_CODES = frozenset({"no_meter", "archived_meter"})


@dataclass(frozen=True)
class ReportedRequest:
    identifier: str
    code: str
    message: str


def reported_requests(data: Any) -> list[ReportedRequest]:
    """The requests a report's ``data`` names: (identifier, Stripe's code, Stripe's message)."""

    def field(obj: Any, name: str, default: Any = None) -> Any:
        value = obj.get(name, default) if isinstance(obj, dict) else getattr(obj, name, default)
        return default if value is None else value

    out = []
    for error_type in field(field(data, "reason", {}), "error_types", []):
        code = str(field(error_type, "code", "unknown"))
        for sample in field(error_type, "sample_errors", []):
            key = field(field(sample, "request", {}), "identifier")
            if key:
                out.append(
                    ReportedRequest(
                        identifier_of_key(str(key)), code, str(field(sample, "error_message", ""))
                    )
                )
    return out


def meter_changed(data: Any) -> bool:
    return any(r.code in METER_CODES for r in reported_requests(data))
