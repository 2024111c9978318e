"""Events as Stripe's event destinations deliver them, signed, in the background: error reports as v2
"thin" events, billing changes (invoices) as v1 snapshot events.

Stripe reports meter events that fail its asynchronous validation as the v2 event
`v1.billing.meter.error_report_triggered` (related object: the meter); an event whose name has no
meter has no meter to relate to, and Stripe reports it as `v1.billing.meter.no_meter_found` (stripe
16.x has both classes). The destination receives the thin notification (id, type, created,
related_object) and fetches the full event, `data` included, from `GET /v2/core/events/{id}`.

Billing changes are v1 snapshot events (`snapshot_event`): `{"id": "evt_...", "object": "event",
"type": "invoice.created", "created", "api_version", "data": {"object": <the invoice then>}, ...}`,
delivered whole, so `stripe.StripeClient.construct_event(body, header, secret)` accepts them.

Signing is Stripe's: header `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, f"{t}.{body}")>`,
so `stripe.StripeClient.parse_event_notification(body, header, secret)` accepts it. `t` is wall-clock
time, since receivers check it against theirs (stripe-python: 5 minutes' tolerance), whatever the
emulated clock says; `created` and the validation window follow the emulated clock.

Delivery: one POST per event, retried on a non-2xx answer or a connection failure after
`RETRY_DELAYS` seconds; each attempt is recorded on the state (`deliveries`) for tests to read.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson

from stripemeter.domain.timefmt import iso_millis

log = logging.getLogger(__name__)

ERROR_REPORT = "v1.billing.meter.error_report_triggered"
API_VERSION = "2026-10-28.endive"  # the version stripe-python 16.1 pins (stripe.api_version)
NO_METER = "v1.billing.meter.no_meter_found"
# Stripe retries a failed delivery for up to three days; a few minutes, doubling, stand in for it
RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0, 30.0)
TIMEOUT_SECONDS = 10.0
USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"


@dataclass(frozen=True)
class Destination:
    url: str
    secret: str


@dataclass
class Delivery:
    """What happened to one event's notification."""

    event_id: str
    url: str
    attempts: list[str] = field(default_factory=list)  # "200", "500", "ConnectionError: ..."
    delivered: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": self.event_id,
            "url": self.url,
            "attempts": self.attempts,
            "delivered": self.delivered,
        }


def rfc3339(unix: float) -> str:
    return iso_millis(datetime.fromtimestamp(unix, UTC))


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The `Stripe-Signature` header Stripe sends with `body`."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def error_event(
    event_id: str,
    meter_id: str | None,
    code: str,
    message: str,
    request_identifier: str,
    started: float,
    ended: float,
) -> dict[str, Any]:
    """The full v2 event for one failed meter event (`GET /v2/core/events/{id}`)."""
    event: dict[str, Any] = {
        "id": event_id,
        "object": "v2.core.event",
        "type": ERROR_REPORT if meter_id else NO_METER,
        "created": rfc3339(ended),
        "livemode": False,
        "context": None,
        "reason": None,
        "data": {
            "developer_message_summary": f"1 meter event failed validation: {code}.",
            "reason": {
                "error_count": 1,
                "error_types": [
                    {
                        "code": code,
                        "error_count": 1,
                        "sample_errors": [
                            {"error_message": message, "request": {"identifier": request_identifier}}
                        ],
                    }
                ],
            },
            "validation_start": rfc3339(started),
            "validation_end": rfc3339(ended),
        },
    }
    if meter_id:
        event["related_object"] = {
            "id": meter_id,
            "type": "billing.meter",
            "url": f"/v1/billing/meters/{meter_id}",
        }
    return event


def snapshot_event(
    event_id: str,
    type_: str,
    obj: dict[str, Any],
    created: int,
    previous: dict[str, Any] | None = None,
    request: tuple[str | None, str | None] = (None, None),
    pending_webhooks: int = 0,
) -> dict[str, Any]:
    """A v1 snapshot event: `obj` as it is at `created`; `previous` the changed attributes' old values
    (`*.updated`); `request` the API request (id, idempotency key) that caused it, none if automatic."""
    data: dict[str, Any] = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {
        "id": event_id,
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": data,
        "livemode": False,
        "pending_webhooks": pending_webhooks,
        "request": {"id": request[0], "idempotency_key": request[1]},
        "type": type_,
    }


def body(event: dict[str, Any]) -> dict[str, Any]:
    """What a destination receives: a v1 snapshot event whole, a v2 event as its thin notification."""
    return event if event["object"] == "event" else notification(event)


def notification(event: dict[str, Any]) -> dict[str, Any]:
    """The thin payload a destination receives: the event without `data`, `context` or `reason`."""
    keys = ("id", "object", "type", "created", "livemode", "related_object")
    return {k: event[k] for k in keys if k in event}


async def deliver(
    session: aiohttp.ClientSession, destination: Destination, event: dict[str, Any], delivery: Delivery
) -> None:
    payload = orjson.dumps(body(event))
    for attempt, delay in enumerate((0.0, *RETRY_DELAYS)):
        if delay:
            await asyncio.sleep(delay)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            "Stripe-Signature": sign(payload, destination.secret, int(time.time())),
        }
        try:
            timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
            async with session.post(
                destination.url, data=payload, headers=headers, timeout=timeout
            ) as answer:
                await answer.read()
                delivery.attempts.append(str(answer.status))
                if 200 <= answer.status < 300:
                    delivery.delivered = True
                    return
        except (aiohttp.ClientError, TimeoutError) as exc:
            delivery.attempts.append(f"{type(exc).__name__}: {exc}")
        log.info("webhook %s to %s: attempt %d failed", event["id"], destination.url, attempt + 1)
    log.warning("webhook %s to %s: gave up after %d attempts", event["id"], destination.url, attempt + 1)


class Sender:
    """Runs deliveries as background tasks of the server's loop, over one client session."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, destination: Destination, event: dict[str, Any], delivery: Delivery) -> None:
        task = asyncio.get_running_loop().create_task(self._run(destination, event, delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, destination: Destination, event: dict[str, Any], delivery: Delivery) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        await deliver(self._session, destination, event, delivery)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
