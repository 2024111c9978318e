"""`stripemeter stripe-emulator seed`: a meter and a customer in the local Stripe emulator, so the first
mapping has something to point at. Idempotent: the meter is found by its event name and the customer by
its email before either is made. Talks to the emulator over Stripe's own API, as a user would."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

METER_EVENT_NAME = "api_requests"
CUSTOMER_EMAIL = "alice@example.com"
EMULATOR_KEY = "sk_test_local_emulator"  # the emulator takes any test-mode key


@dataclass(frozen=True)
class Seeded:
    meter_id: str
    event_name: str
    customer_id: str
    email: str
    meter_created: bool
    customer_created: bool

    def shell(self) -> list[str]:
        """Shell assignments (``eval "$(... seed)"`` keeps them), each saying what it is."""
        made = {True: "created", False: "already there"}
        return [
            f"STRIPE_METER={self.meter_id}  # meter {self.event_name!r} ({made[self.meter_created]})",
            f"STRIPE_METER_EVENT={self.event_name}",
            f"STRIPE_CUSTOMER={self.customer_id}  # customer {self.email} ({made[self.customer_created]})",
        ]


def _call(base: str, method: str, path: str, form: dict[str, str] | None = None) -> Any:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(
        base.rstrip("/") + path, data=data, method=method, headers={"Authorization": f"Bearer {EMULATOR_KEY}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError:
        raise
    except urllib.error.URLError as exc:
        raise ConnectionError(
            f"cannot reach the Stripe emulator at {base} ({exc.reason}); is the stack up?"
            " (./dev stripemeter stack up)"
        ) from None


def _all(base: str, path: str) -> list[dict[str, Any]]:
    """Every object of a Stripe list endpoint, page after page."""
    found: list[dict[str, Any]] = []
    after = ""
    while True:
        joint = "&" if "?" in path else "?"
        page = _call(base, "GET", f"{path}{joint}limit=100" + (f"&starting_after={after}" if after else ""))
        found.extend(page["data"])
        if not page["has_more"]:
            return found
        after = page["data"][-1]["id"]


def seed(base: str, event_name: str = METER_EVENT_NAME, email: str = CUSTOMER_EMAIL) -> Seeded:
    meter = next((m for m in _all(base, "/v1/billing/meters") if m["event_name"] == event_name), None)
    meter_created = meter is None
    if meter is None:
        meter = _call(
            base,
            "POST",
            "/v1/billing/meters",
            {
                "display_name": event_name.replace("_", " "),
                "event_name": event_name,
                "default_aggregation[formula]": "sum",
                "customer_mapping[type]": "by_id",
                "customer_mapping[event_payload_key]": "stripe_customer_id",
                "value_settings[event_payload_key]": "value",
            },
        )
    query = urllib.parse.urlencode({"email": email})
    customers = _all(base, f"/v1/customers?{query}")
    customer = customers[-1] if customers else None  # the oldest (newest first)
    customer_created = customer is None
    if customer is None:
        customer = _call(base, "POST", "/v1/customers", {"email": email})
    return Seeded(meter["id"], event_name, customer["id"], email, meter_created, customer_created)
