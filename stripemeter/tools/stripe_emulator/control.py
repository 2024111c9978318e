"""Test controls under `/_emulator` (not a Stripe API; no API key, no faults, no idempotency).

- `GET|POST /_emulator/faults`: read or partially update the faults (JSON body, see `faults.Faults`).
- `POST /_emulator/reset`: forget all objects and faults.
- `GET /_emulator/clock`: `{"now"}`, the emulator's unix time; `POST /_emulator/clock` with
  `{"advance": seconds}` moves it forward, lets what has come due happen (invoices of customers
  without a test clock, see billing.py) and answers the same.
- `GET /_emulator/meters/{id}/events`: the accepted, non-cancelled meter events of one meter.
- `POST /_emulator/webhook` with `{"url": "...", "secret": "whsec_..."}`: the event destination that
  error reports (v2 thin events) and invoice events (v1 snapshot events) are sent to, signed with
  `secret` (`{"url": null}` removes it); with `"snapshot_url"` and `"snapshot_secret"` the v1
  snapshot events go there instead, as to a second Stripe endpoint. `GET` shows the URLs (without
  the secrets) and every delivery so far (attempts and outcome).
- `GET /_emulator/error_reports`: the error reports of events dropped by async validation, oldest
  first: `{code, message, meter, event_name, identifier, received, event, delivery}`.
- `GET /_emulator/calls`: per second of real time (unix seconds as keys), the Stripe API requests received
  (`calls`, any answer), those answered 429 (`throttled`) and the events the v2 stream took
  (`streamEvents`): how fast a client really called, whatever its own counters say.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from stripemeter.tools.stripe_emulator.wire import json_response

if TYPE_CHECKING:
    from stripemeter.tools.stripe_emulator.state import EmulatorState

PREFIX = "/_emulator/"


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(text=f"invalid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body


def _url(body: dict[str, Any], url_key: str, secret_key: str) -> tuple[str | None, str | None]:
    url, secret = body.get(url_key), body.get(secret_key)
    if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
        raise web.HTTPBadRequest(text=f"{url_key} must be an http(s) URL or null")
    if url is not None and (not isinstance(secret, str) or not secret):
        raise web.HTTPBadRequest(
            text=f"{secret_key} must be a non-empty string (Stripe's look like whsec_...)"
        )
    return url, secret


def add_routes(
    app: web.Application,
    key: web.AppKey[EmulatorState],
    run_due: Callable[[web.Application], None] = lambda app: None,
) -> None:
    async def get_faults(request: web.Request) -> web.Response:
        return json_response(request.app[key].faults.as_dict())

    async def set_faults(request: web.Request) -> web.Response:
        faults = request.app[key].faults
        try:
            faults.update(await _json_body(request))
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        return json_response(faults.as_dict())

    async def reset(request: web.Request) -> web.Response:
        request.app[key].reset()
        return json_response({"reset": True})

    async def clock(request: web.Request) -> web.Response:
        state = request.app[key]
        advance = (await _json_body(request)).get("advance", 0)
        if not isinstance(advance, int | float) or isinstance(advance, bool):
            raise web.HTTPBadRequest(text="advance must be a number of seconds")
        state.clock_offset += advance
        run_due(request.app)
        return json_response({"now": state.now()})

    async def read_clock(request: web.Request) -> web.Response:
        return json_response({"now": request.app[key].now()})

    async def events(request: web.Request) -> web.Response:
        state = request.app[key]
        found = state.meter_events(request.match_info["id"])
        return json_response({"data": [{**e.wire(), "cancelled": e.cancelled} for e in found]})

    def deliveries(state: EmulatorState) -> dict[str, dict[str, Any]]:
        return {d.event_id: d.as_dict() for d in state.deliveries}

    async def set_webhook(request: web.Request) -> web.Response:
        state = request.app[key]
        body = await _json_body(request)
        url, secret = _url(body, "url", "secret")
        snapshot_url, snapshot_secret = _url(body, "snapshot_url", "snapshot_secret")
        state.set_webhook(url, secret, snapshot_url, snapshot_secret)
        return await get_webhook(request)

    async def get_webhook(request: web.Request) -> web.Response:
        state = request.app[key]
        url = state.webhook.url if state.webhook else None
        snapshot_url = state.snapshot_webhook.url if state.snapshot_webhook else None
        return json_response(
            {"url": url, "snapshot_url": snapshot_url, "deliveries": list(deliveries(state).values())}
        )

    async def error_reports(request: web.Request) -> web.Response:
        state = request.app[key]
        sent = deliveries(state)
        return json_response({"data": [{**r, "delivery": sent.get(r["event"])} for r in state.error_reports]})

    async def calls(request: web.Request) -> web.Response:
        state = request.app[key]
        return json_response(
            {
                "calls": {str(k): v for k, v in sorted(state.calls_by_second.items())},
                "throttled": {str(k): v for k, v in sorted(state.throttled_by_second.items())},
                "streamEvents": {str(k): v for k, v in sorted(state.stream_limit.events.items())},
            }
        )

    app.router.add_get(PREFIX + "calls", calls)
    app.router.add_post(PREFIX + "webhook", set_webhook)
    app.router.add_get(PREFIX + "webhook", get_webhook)
    app.router.add_get(PREFIX + "error_reports", error_reports)
    app.router.add_get(PREFIX + "faults", get_faults)
    app.router.add_post(PREFIX + "faults", set_faults)
    app.router.add_post(PREFIX + "reset", reset)
    app.router.add_post(PREFIX + "clock", clock)
    app.router.add_get(PREFIX + "clock", read_clock)
    app.router.add_get(PREFIX + "meters/{id}/events", events)
