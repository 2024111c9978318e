"""The HTTP face of the emulator: Stripe's v1 routes for customers and billing meters on aiohttp.

Every request passes, in this order: Request-Id -> injected latency / dropped connection / 429 / 500
(faults) -> API key check (401) -> idempotency (POST only: replay, conflict or run) -> handler.
Errors anywhere become Stripe's error envelope; unknown routes become 404 "Unrecognized request URL".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from stripemeter.stripe_emulator import control
from stripemeter.stripe_emulator.errors import StripeApiError
from stripemeter.stripe_emulator.faults import fault_error
from stripemeter.stripe_emulator.idempotency import StoredResponse, fingerprint
from stripemeter.stripe_emulator.state import EmulatorState
from stripemeter.stripe_emulator.wire import decode_form, error_response, json_response, new_id

log = logging.getLogger(__name__)

STATE: web.AppKey[EmulatorState] = web.AppKey("state", EmulatorState)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Operation = Callable[[EmulatorState, dict[str, Any], web.Request], dict[str, Any]]


def _api_key(request: web.Request) -> str:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise StripeApiError(
            401,
            "invalid_request_error",
            "You did not provide an API key. You need to provide your API key in the Authorization header, "
            "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
        )
    if not key.startswith(("sk_test_", "rk_test_")):
        masked = key[:8] + "*" * max(len(key) - 12, 0) + key[-4:]
        raise StripeApiError(401, "invalid_request_error", f"Invalid API Key provided: {masked}")
    return key


async def _form_pairs(request: web.Request) -> list[tuple[str, str]]:
    if request.method == "POST":
        return parse_qsl(await request.text(), keep_blank_values=True)
    return list(request.query.items())


async def _stripe_api(request: web.Request, handler: Handler, state: EmulatorState) -> web.StreamResponse:
    faults = state.faults
    if faults.applies_to(request.path) and faults.latency > 0:
        await asyncio.sleep(faults.latency)
    fault = faults.take(request.path)
    if fault == "drop":
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError
    if fault is not None:
        raise fault_error(fault)
    api_key = _api_key(request)
    idempotency_key = request.headers.get("Idempotency-Key")
    if request.method != "POST" or not idempotency_key:
        return await handler(request)
    scope = (api_key, idempotency_key)
    print_ = fingerprint(request.method, request.path, await _form_pairs(request))
    stored = state.idempotency.begin(scope, print_, state.now())
    if stored is not None:
        headers = {"Idempotent-Replayed": "true", "Original-Request": stored.request_id}
        return web.Response(
            body=stored.body, status=stored.status, content_type="application/json", headers=headers
        )
    saved = None
    try:
        response = await handler(request)
        if isinstance(response, web.Response) and 200 <= response.status < 300 and response.body is not None:
            body = bytes(response.body) if isinstance(response.body, bytes | bytearray) else b""
            saved = StoredResponse(print_, response.status, body, request[REQUEST_ID], state.now())
        return response
    finally:
        state.idempotency.finish(scope, saved)


@web.middleware
async def stripe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[REQUEST_ID] = new_id("req")
    state = request.app[STATE]
    try:
        if request.path.startswith(control.PREFIX):
            response = await handler(request)
        else:
            response = await _stripe_api(request, handler, state)
    except StripeApiError as error:
        response = error_response(error)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        message = f"Unrecognized request URL ({request.method}: {request.path})."
        response = error_response(StripeApiError(404, "invalid_request_error", message))
    response.headers["Request-Id"] = request[REQUEST_ID]
    return response


def endpoint(operation: Operation) -> Handler:
    """Adapt `operation(state, params, request) -> object` into an aiohttp handler."""

    async def handle(request: web.Request) -> web.StreamResponse:
        params = decode_form(await _form_pairs(request))
        return json_response(operation(request.app[STATE], params, request))

    return handle


def _id(request: web.Request) -> str:
    return request.match_info["id"]


ROUTES: list[tuple[str, str, Operation]] = [
    ("POST", "/v1/customers", lambda s, p, r: s.create_customer(p)),
    ("GET", "/v1/customers", lambda s, p, r: s.list_customers(p, r.path)),
    ("GET", "/v1/customers/{id}", lambda s, p, r: s.get_customer(_id(r))),
    ("POST", "/v1/billing/meters", lambda s, p, r: s.create_meter(p)),
    ("GET", "/v1/billing/meters", lambda s, p, r: s.list_meters(p, r.path)),
    ("GET", "/v1/billing/meters/{id}", lambda s, p, r: s.get_meter(_id(r))),
    ("POST", "/v1/billing/meters/{id}", lambda s, p, r: s.update_meter(_id(r), p)),
    ("POST", "/v1/billing/meters/{id}/deactivate", lambda s, p, r: s.set_meter_status(_id(r), "inactive")),
    ("POST", "/v1/billing/meters/{id}/reactivate", lambda s, p, r: s.set_meter_status(_id(r), "active")),
    ("GET", "/v1/billing/meters/{id}/event_summaries", lambda s, p, r: s.event_summaries(_id(r), p, r.path)),
    ("POST", "/v1/billing/meter_events", lambda s, p, r: s.record_meter_event(p)),
    ("POST", "/v1/billing/meter_event_adjustments", lambda s, p, r: s.cancel_meter_event(p)),
]


def create_app(state: EmulatorState | None = None) -> web.Application:
    app = web.Application(middlewares=[stripe_middleware])
    app[STATE] = state or EmulatorState()
    for method, path, operation in ROUTES:
        app.router.add_route(method, path, endpoint(operation))
    control.add_routes(app, STATE)
    return app


async def serve(host: str = "127.0.0.1", port: int = 12111, state: EmulatorState | None = None) -> None:
    """Serve until cancelled."""
    runner = web.AppRunner(create_app(state), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("stripe emulator listening on http://%s:%d", host, port)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def run(host: str = "127.0.0.1", port: int = 12111, clock: Callable[[], float] = time.time) -> None:
    """Blocking entry point for the CLI; stops on Ctrl-C. ``clock``: the deployment's (see clock.py)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host, port, EmulatorState(clock)))
