"""The demo's last chapter: a billing cycle on a Stripe test clock ends at an invoice that is held until
stripemeter proves it, and finalizes with the exact quantity.

A customer subscribes to a metered price on a test clock that started 33 days ago; its usage of the
period is counted and delivered; Stripe then loses one of its meter events. The clock passes the
period end: Stripe creates the draft and tells the API, and the guard holds it. A late event of the
period arrives inside the grace; reconciliation finds the loss and aligns it; the guard proves the
invoice and finalizes it, and the demo prints the proof.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stripemeter.tools.demo import Demo

CUSTOMER = "umbrella-9"
HOUR = 3600


def invoice_chapter(demo: Demo, send: Callable[[list[Any]], None], wait: Callable[..., None]) -> bool:
    """Chapter 6; True when the invoice finalized with the local total and its proof says so."""
    from stripemeter.tools.demo import EVENT_NAME, usage

    say, api, stripe, tenant = demo.say, demo.api, demo.stripe, demo.tenant
    now = int(demo.settings.clock())
    start = now - now % HOUR - 33 * 24 * HOUR
    say("== 6. a billing cycle on a Stripe test clock: the invoice waits until its usage is proven")
    meter = next(
        m for m in stripe.call("GET", "/v1/billing/meters?limit=100")["data"] if m["event_name"] == EVENT_NAME
    )
    product = stripe.call("POST", "/v1/products", form={"name": "API requests"})
    price = stripe.call(
        "POST",
        "/v1/prices",
        form={"currency": "usd", "product": product["id"], "unit_amount": "2", "recurring[interval]": "month",
              "recurring[usage_type]": "metered", "recurring[meter]": meter["id"]},
    )  # fmt: skip
    clock = stripe.call("POST", "/v1/test_helpers/test_clocks", form={"frozen_time": str(start)})
    customer = stripe.call(
        "POST", "/v1/customers", form={"email": f"{CUSTOMER}@example.com", "test_clock": clock["id"]}
    )
    subscription = stripe.call(
        "POST", "/v1/subscriptions", form={"customer": customer["id"], "items[0][price]": price["id"]}
    )
    end = int(subscription["items"]["data"][0]["current_period_end"])
    anchor = datetime.fromtimestamp(start, tz=UTC)
    api.call(
        "PUT",
        f"/v1/customers/{tenant}/{CUSTOMER}",
        {"stripeCustomerId": customer["id"], "billingAnchor": anchor.isoformat().replace("+00:00", "Z")},
    )
    say(f"  {CUSTOMER} subscribed on a test clock from {_at(start)} to {_at(end)} (2 cents a request)")

    def at(seconds: int) -> datetime:
        return datetime.fromtimestamp(seconds, tz=UTC)

    events = [
        usage(tenant, CUSTOMER, at(end - 6 * HOUR) + timedelta(minutes=i), 50, f"cycle-{i}")
        for i in range(10)
    ]
    events.append(usage(tenant, CUSTOMER, at(end - 20 * HOUR), 1, "cycle-small"))
    send([events])
    wait("the cycle's usage counted and pushed", lambda: _pushed(demo) == 501)
    lost = _lose_one(demo, meter["id"], customer["id"], end - 20 * HOUR - (end - 20 * HOUR) % HOUR)
    say(f"  501 requests counted and delivered; then Stripe loses a meter event ({lost} request)")

    stripe.call(
        "POST", f"/v1/test_helpers/test_clocks/{clock['id']}/advance", form={"frozen_time": str(end + 60)}
    )
    wait("the draft invoice held by the guard", lambda: _state(demo) == "held", timeout=60)
    held = _invoice(demo)
    say(
        f"  the period ended: Stripe created draft {held['invoiceId']};"
        f" the guard holds it ({held['reasonCode']})"
    )
    send([[usage(tenant, CUSTOMER, at(end - 2 * HOUR), 5, "cycle-late")]])
    say("  a late event of the period (5 requests) arrives inside the grace")
    wait("the invoice proven and finalized", lambda: _state(demo) == "finalized", timeout=180)
    proof = _invoice(demo)
    line = proof["lines"][0]
    say(f"  finalized {proof['invoiceId']} ({proof['releaseReason']})")
    say(
        f"  proof: local {line['local']}  Stripe {line['stripe']}  invoice quantity {line['invoiceQuantity']}"
        f"  hours compared {line['hoursCompared']}  corrections {line['corrections']}"
    )
    return bool(line["proven"]) and line["local"] == 506 and float(line["invoiceQuantity"]) == 506


def _at(seconds: int) -> str:
    return f"{datetime.fromtimestamp(seconds, tz=UTC):%Y-%m-%d %H:%M}"


def _pushed(demo: Demo) -> float:
    counters = demo.api.every(f"/v1/stripe/pushes?tenantId={demo.tenant}&limit=1000", "counters")
    mine = [c for c in counters if c["customerRef"] == CUSTOMER]
    return sum(c["pushed"] for c in mine) if all(c["status"] == "synced" for c in mine) else -1


def _lose_one(demo: Demo, meter_id: str, customer: str, bucket: int) -> int:
    """Stripe loses the meter event of one hour: cancelled, as a loss looks from the outside."""
    from stripemeter.tools.demo import EVENT_NAME

    events = demo.stripe.call("GET", f"/_emulator/meters/{meter_id}/events")["data"]
    mine = [e for e in events if e["payload"]["stripe_customer_id"] == customer and not e["cancelled"]]
    event = next(e for e in mine if int(e["timestamp"]) == bucket)
    demo.stripe.call(
        "POST",
        "/v1/billing/meter_event_adjustments",
        form={"event_name": EVENT_NAME, "type": "cancel", "cancel[identifier]": event["identifier"]},
    )
    return int(float(event["payload"]["value"]))


def _invoice(demo: Demo) -> dict[str, Any]:
    query = urllib.parse.urlencode({"tenantId": demo.tenant})
    listed = demo.api.call("GET", f"/v1/invoices?{query}")["items"]
    mine = [i for i in listed if i["customerRef"] == CUSTOMER]
    if not mine:
        return {}
    found: dict[str, Any] = demo.api.call("GET", f"/v1/invoices/{mine[0]['invoiceId']}")
    return found


def _state(demo: Demo) -> str | None:
    return _invoice(demo).get("guardState")
