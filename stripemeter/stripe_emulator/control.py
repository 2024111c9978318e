"""Test controls under `/_emulator` (not a Stripe API; no API key, no faults, no idempotency).

- `GET|POST /_emulator/faults`: read or partially update the faults (JSON body, see `faults.Faults`).
- `POST /_emulator/reset`: forget all objects and faults.
- `GET /_emulator/clock`: `{"now"}`, the emulator's unix time; `POST /_emulator/clock` with
  `{"advance": seconds}` moves it forward and answers the same.
- `GET /_emulator/meters/{id}/events`: the accepted, non-cancelled meter events of one meter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from stripemeter.stripe_emulator.wire import json_response

if TYPE_CHECKING:
    from stripemeter.stripe_emulator.state import EmulatorState

PREFIX = "/_emulator/"


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(text=f"invalid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body


def add_routes(app: web.Application, key: web.AppKey[EmulatorState]) -> None:
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
        return json_response({"now": state.now()})

    async def read_clock(request: web.Request) -> web.Response:
        return json_response({"now": request.app[key].now()})

    async def events(request: web.Request) -> web.Response:
        state = request.app[key]
        found = state.meter_events(request.match_info["id"])
        return json_response({"data": [{**e.wire(), "cancelled": e.cancelled} for e in found]})

    app.router.add_get(PREFIX + "faults", get_faults)
    app.router.add_post(PREFIX + "faults", set_faults)
    app.router.add_post(PREFIX + "reset", reset)
    app.router.add_post(PREFIX + "clock", clock)
    app.router.add_get(PREFIX + "clock", read_clock)
    app.router.add_get(PREFIX + "meters/{id}/events", events)
