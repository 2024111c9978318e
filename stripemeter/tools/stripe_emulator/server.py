"""The HTTP face of the emulator: Stripe's v1 routes for customers, billing meters, products, prices,
test clocks, subscriptions, invoices, invoice items and events on aiohttp,
`GET /v2/core/events/{id}` for the events that carry error reports, and the v2 meter event stream
(`POST /v2/billing/meter_event_session`, `POST /v2/billing/meter_event_stream`: meter_stream.py).

Before every Stripe request, and once a second (`TICK_SECONDS`), what has come due happens
(`Billing.run_due`: test clocks finish advancing, invoices are made and finalized on the emulator's
clock); a test clock's advance finishes right after its answer.

Every Stripe request passes, in this order (each step as Stripe places it):
1. Request-Id; injected latency; dropped connection (nothing processed, nothing stored);
2. API key check (401);
3. the shared operations budget and injected 429s (`rate_limit`, `lock_timeout`; never stored for
   idempotency);
4. idempotency (POST with a key): replay the stored answer, 400 on other parameters, 409 while the
   first is running - or run it;
5. the shape checks of the route's parameters (400; not stored: the endpoint never executed);
6. execution: injected 500 (stored), the operation itself (its errors are stored), injected "landed"
   500 (after the state changed; stored); then the answer is stored for the key;
7. an injected lost response: the connection is aborted after all of the above.
Errors anywhere become Stripe's error envelope; unknown routes become 404 "Unrecognized request URL".
The meter event stream passes steps 1 and 7 as well, with its session token instead of the API key,
its own rate limit instead of the operations budget, and no idempotency (its identifiers dedupe).
Every Stripe request is counted in its second of real time (`EmulatorState.calls_by_second`).
Events queued by the state (error reports, invoice events) are handed to the webhook sender after
each request and each tick.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from stripemeter.tools.stripe_emulator import (
    billing,
    catalog,
    control,
    invoices,
    meter_events,
    meter_stream,
    meters,
    test_clocks,
)
from stripemeter.tools.stripe_emulator.faults import (
    TEST_MODE_OPS_PER_SECOND,
    lock_timed_out,
    rate_limited,
    server_error,
)
from stripemeter.tools.stripe_emulator.idempotency import StoredResponse, fingerprint
from stripemeter.tools.stripe_emulator.persistence import Keeper, load
from stripemeter.tools.stripe_emulator.state import EmulatorState, check_customer
from stripemeter.tools.stripe_emulator.stripe_errors import StripeApiError, reject_unknown
from stripemeter.tools.stripe_emulator.webhooks import Sender
from stripemeter.tools.stripe_emulator.wire import decode_form, error_response, json_response, new_id

log = logging.getLogger(__name__)

STATE: web.AppKey[EmulatorState] = web.AppKey("state", EmulatorState)
SENDER: web.AppKey[Sender] = web.AppKey("webhook_sender", Sender)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
EXECUTED: web.RequestKey[bool] = web.RequestKey("executed", bool)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Operation = Callable[[EmulatorState, dict[str, Any], web.Request], dict[str, Any]]
Check = Callable[[dict[str, Any]], object]
STORED_HEADERS = ("Stripe-Should-Retry",)
TICK_SECONDS = 1.0
TICKER: web.AppKey[asyncio.Task[None]] = web.AppKey("ticker", asyncio.Task)
KEEPER: web.AppKey[Keeper] = web.AppKey("keeper", Keeper)


def _api_key(request: web.Request) -> str:
    """The secret key from `Authorization: Bearer <key>`, or Basic auth with the key as user name
    (`curl -u sk_test_...:`), as Stripe takes it."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            key = base64.b64decode(key.strip(), validate=True).decode().partition(":")[0]
        scheme = "bearer"
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


def _abort(request: web.Request) -> NoReturn:
    """Close the connection without an answer (the client sees a connection error)."""
    if request.transport is not None:
        request.transport.abort()
    raise asyncio.CancelledError


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except StripeApiError as error:
        return error_response(error)


def _replay(stored: StoredResponse) -> web.Response:
    headers = {**stored.headers, "Idempotent-Replayed": "true", "Original-Request": stored.request_id}
    return web.Response(
        body=stored.body, status=stored.status, content_type="application/json", headers=headers
    )


def _stored(
    request: web.Request, response: web.StreamResponse, print_: str, now: float
) -> StoredResponse | None:
    """The answer to keep for the idempotency key: any answer of a request that started executing."""
    if not request.get(EXECUTED) or not isinstance(response, web.Response):
        return None
    body = bytes(response.body) if isinstance(response.body, bytes | bytearray) else b""
    headers = {k: response.headers[k] for k in STORED_HEADERS if k in response.headers}
    return StoredResponse(print_, response.status, body, headers, request[REQUEST_ID], now)


async def _stripe_api(request: web.Request, handler: Handler, state: EmulatorState) -> web.StreamResponse:
    faults, path = state.faults, request.path
    state.requests[f"{request.method} {path}"] += 1
    second = state.count_call()
    if faults.applies_to(path) and faults.latency > 0:
        await asyncio.sleep(faults.latency)
    if faults.take_drop(path):
        _abort(request)
    api_key = _api_key(request)
    if not state.budget.take(faults.ops_per_second) or faults.take_rate_limit(path):
        state.throttled_by_second[second] += 1
        raise rate_limited()
    if faults.take_lock_timeout(path):
        raise lock_timed_out()
    idempotency_key = request.headers.get("Idempotency-Key")
    if request.method != "POST" or not idempotency_key:
        lost = faults.take_lost_response(path)
        response = await _answer(request, handler)
    else:
        scope = (api_key, idempotency_key)
        print_ = fingerprint(request.method, path, await _form_pairs(request))
        stored = state.idempotency.begin(scope, print_, state.now())
        lost = faults.take_lost_response(path)
        if stored is not None:
            response = _replay(stored)
        else:
            saved = None
            try:
                response = await _answer(request, handler)
                saved = _stored(request, response, print_, state.now())
            finally:
                state.idempotency.finish(scope, saved)
    if lost:
        _abort(request)
    return response


async def _meter_stream(request: web.Request, state: EmulatorState) -> web.StreamResponse:
    """`POST /v2/billing/meter_event_stream` (meter_stream.py): answered `{}` once the request's shape
    passed; its events are processed right after, as Stripe processes them asynchronously."""
    faults, path = state.faults, request.path
    state.requests[f"{request.method} {path}"] += 1
    second = state.count_call()
    if faults.applies_to(path) and faults.latency > 0:
        await asyncio.sleep(faults.latency)
    if faults.take_drop(path):
        _abort(request)
    state.sessions.check(request.headers.get("Authorization", ""), state.now())
    try:
        body = orjson.loads(await request.read() or b"null")
    except orjson.JSONDecodeError:
        body = None
    events = meter_stream.check_body(body)
    limits = faults.stream_requests_per_second, faults.stream_events_per_second
    if not state.stream_limit.take(second, len(events), *limits) or faults.take_rate_limit(path):
        state.throttled_by_second[second] += 1
        raise rate_limited()
    lost = faults.take_lost_response(path)
    if faults.take_server_error(path):
        raise server_error()
    state.record_stream_events(events, request[REQUEST_ID])
    if faults.take_landed_server_error(path):
        raise server_error()
    if lost:
        _abort(request)
    return json_response({})


async def _create_session(request: web.Request) -> web.StreamResponse:
    """`POST /v2/billing/meter_event_session`: a JSON body with no parameters (or none at all)."""
    state = request.app[STATE]
    raw = await request.read()
    try:
        params = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise StripeApiError(400, "invalid_request_error", "The request body must be JSON.") from None
    if not isinstance(params, dict):
        raise StripeApiError(400, "invalid_request_error", "The request body must be a JSON object.")
    reject_unknown(params, set())
    request[EXECUTED] = True
    return json_response(state.sessions.create(state.now()))


def _send_outbox(app: web.Application) -> None:
    state, sender = app[STATE], app[SENDER]
    while state.outbox:
        sender.send(*state.outbox.pop(0))


def run_due(app: web.Application) -> None:
    """What is due happens (billing.py), and its events are sent; a changed account is saved."""
    try:
        app[STATE].billing.run_due()
    finally:
        _send_outbox(app)
        if KEEPER in app:
            app[KEEPER].flush()


async def _tick(app: web.Application) -> None:
    while True:
        await asyncio.sleep(TICK_SECONDS)
        try:
            run_due(app)
        except Exception:  # a bug here must not stop the clock; the next request shows it
            log.exception("stripe emulator: billing tick failed")


@web.middleware
async def stripe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[REQUEST_ID] = new_id("req")
    state = request.app[STATE]
    try:
        if request.path.startswith(control.PREFIX):
            response = await handler(request)
        elif request.path == meter_stream.STREAM_PATH and request.method == "POST":
            state.billing.run_due()
            response = await _meter_stream(request, state)
        else:
            state.billing.run_due()
            response = await _stripe_api(request, handler, state)
    except StripeApiError as error:
        response = error_response(error)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed):
        message = f"Unrecognized request URL ({request.method}: {request.path})."
        response = error_response(StripeApiError(404, "invalid_request_error", message))
    finally:
        _send_outbox(request.app)
        if request.method != "GET" and KEEPER in request.app:
            request.app[KEEPER].touch()
        if state.billing.advancing:  # the answer said "advancing": finish right after it
            asyncio.get_running_loop().call_soon(run_due, request.app)
    response.headers["Request-Id"] = request[REQUEST_ID]
    return response


def endpoint(operation: Operation, check: Check | None = None) -> Handler:
    """Adapt `operation(state, params, request) -> object` into an aiohttp handler. `check(params)`
    holds the route's shape checks: the endpoint starts executing once they pass."""

    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        params = decode_form(await _form_pairs(request))
        if check is not None:
            check(params)
        request[EXECUTED] = True
        if state.faults.take_server_error(request.path):
            raise server_error()
        result = operation(state, params, request)
        if state.faults.take_landed_server_error(request.path):
            raise server_error()
        return json_response(result)

    return handle


async def _unreachable(request: web.Request) -> web.StreamResponse:
    """The stream's route exists for aiohttp; the middleware answers it (`_meter_stream`)."""
    raise web.HTTPNotFound


def _id(request: web.Request) -> str:
    return request.match_info["id"]


def _no_params(params: dict[str, Any]) -> None:
    reject_unknown(params, set())


def _origin(request: web.Request) -> billing.Origin:
    """The request an event reports as its cause."""
    return request[REQUEST_ID], request.headers.get("Idempotency-Key")


def _record_meter_event(state: EmulatorState, params: dict[str, Any], request: web.Request) -> dict[str, Any]:
    return state.record_meter_event(params, request.headers.get("Idempotency-Key"))


ROUTES: list[tuple[str, str, Operation, Check | None]] = [
    ("POST", "/v1/customers", lambda s, p, r: s.create_customer(p), check_customer),
    ("GET", "/v1/customers", lambda s, p, r: s.list_customers(p, r.path), None),
    ("GET", "/v1/customers/{id}", lambda s, p, r: s.get_customer(_id(r)), None),
    ("POST", "/v1/billing/meters", lambda s, p, r: s.create_meter(p), meters.check_create),
    ("GET", "/v1/billing/meters", lambda s, p, r: s.list_meters(p, r.path), None),
    ("GET", "/v1/billing/meters/{id}", lambda s, p, r: s.get_meter(_id(r)), _no_params),
    ("POST", "/v1/billing/meters/{id}", lambda s, p, r: s.update_meter(_id(r), p), meters.check_update),
    (
        "POST",
        "/v1/billing/meters/{id}/deactivate",
        lambda s, p, r: s.set_meter_status(_id(r), "inactive"),
        _no_params,
    ),
    (
        "POST",
        "/v1/billing/meters/{id}/reactivate",
        lambda s, p, r: s.set_meter_status(_id(r), "active"),
        _no_params,
    ),
    (
        "GET",
        "/v1/billing/meters/{id}/event_summaries",
        lambda s, p, r: s.event_summaries(_id(r), p, r.path),
        None,
    ),
    ("POST", "/v1/billing/meter_events", _record_meter_event, meter_events.check_event_params),
    (
        "POST",
        "/v1/billing/meter_event_adjustments",
        lambda s, p, r: s.cancel_meter_event(p),
        meter_events.check_cancel_params,
    ),
    # no parameter check: stripe-python 16's fetch_event_async() sends its `usage` list along
    ("GET", "/v2/core/events/{id}", lambda s, p, r: s.get_v2_event(_id(r)), None),
    ("POST", "/v1/products", lambda s, p, r: s.billing.create_product(p), catalog.check_product),
    ("GET", "/v1/products/{id}", lambda s, p, r: s.billing.get_product(_id(r)), _no_params),
    ("POST", "/v1/prices", lambda s, p, r: s.billing.create_price(p), catalog.check_price),
    ("GET", "/v1/prices", lambda s, p, r: s.billing.list_prices(p, r.path), catalog.check_price_list),
    ("GET", "/v1/prices/{id}", lambda s, p, r: s.billing.get_price(_id(r)), _no_params),
    (
        "POST",
        "/v1/test_helpers/test_clocks",
        lambda s, p, r: s.billing.create_test_clock(p),
        test_clocks.check_create,
    ),
    (
        "GET",
        "/v1/test_helpers/test_clocks/{id}",
        lambda s, p, r: s.billing.get_test_clock(_id(r)),
        _no_params,
    ),
    (
        "POST",
        "/v1/test_helpers/test_clocks/{id}/advance",
        lambda s, p, r: s.billing.advance_test_clock(_id(r), p),
        test_clocks.check_advance,
    ),
    (
        "POST",
        "/v1/subscriptions",
        lambda s, p, r: s.billing.create_subscription(p, _origin(r)),
        billing.check_subscription,
    ),
    ("GET", "/v1/subscriptions/{id}", lambda s, p, r: s.billing.get_subscription(_id(r)), _no_params),
    ("GET", "/v1/invoices", lambda s, p, r: s.billing.list_invoices(p, r.path), invoices.check_list),
    ("GET", "/v1/invoices/{id}", lambda s, p, r: s.billing.get_invoice(_id(r)), _no_params),
    (
        "POST",
        "/v1/invoices/{id}",
        lambda s, p, r: s.billing.update_invoice(_id(r), p, _origin(r)),
        invoices.check_update,
    ),
    (
        "POST",
        "/v1/invoices/{id}/finalize",
        lambda s, p, r: s.billing.finalize_invoice(_id(r), p, _origin(r)),
        invoices.check_finalize,
    ),
    (
        "GET",
        "/v1/invoices/{id}/lines",
        lambda s, p, r: s.billing.invoice_lines(_id(r), p, r.path),
        invoices.check_lines_list,
    ),
    (
        "POST",
        "/v1/invoiceitems",
        lambda s, p, r: s.billing.create_invoice_item(p),
        invoices.check_invoice_item,
    ),
    (
        "GET",
        "/v1/invoiceitems",
        lambda s, p, r: s.billing.list_invoice_items(p, r.path),
        invoices.check_invoice_item_list,
    ),
    ("GET", "/v1/invoiceitems/{id}", lambda s, p, r: s.billing.get_invoice_item(_id(r)), _no_params),
    ("GET", "/v1/events", lambda s, p, r: s.list_v1_events(p, r.path), None),
    ("GET", "/v1/events/{id}", lambda s, p, r: s.get_v1_event(_id(r)), _no_params),
]


def create_app(state: EmulatorState | None = None, state_file: Path | None = None) -> web.Application:
    """The emulator's app; with ``state_file`` its customers, meters and meter events are loaded from
    that file and kept in it (persistence.py)."""
    app = web.Application(middlewares=[stripe_middleware])
    app[STATE] = state or EmulatorState()
    if state_file is not None:
        load(app[STATE], state_file)
        app[KEEPER] = Keeper(app[STATE], state_file)
    app[SENDER] = Sender()
    for method, path, operation, check in ROUTES:
        app.router.add_route(method, path, endpoint(operation, check))
    app.router.add_route("POST", meter_stream.SESSION_PATH, _create_session)
    app.router.add_route("POST", meter_stream.STREAM_PATH, _unreachable)
    control.add_routes(app, STATE, run_due)

    async def start_ticker(app: web.Application) -> None:
        app[TICKER] = asyncio.get_running_loop().create_task(_tick(app))

    async def close(app: web.Application) -> None:
        app[TICKER].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await app[TICKER]
        await app[SENDER].close()
        if KEEPER in app:
            app[KEEPER].flush()

    app.on_startup.append(start_ticker)
    app.on_cleanup.append(close)
    return app


async def serve(
    host: str = "127.0.0.1",
    port: int = 12111,
    state: EmulatorState | None = None,
    state_file: Path | None = None,
) -> None:
    """Serve until cancelled or sent SIGTERM (what `stack down` sends): the account is saved either way."""
    runner = web.AppRunner(create_app(state, state_file), access_log=None)
    await runner.setup()
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("stripe emulator listening on http://%s:%d", host, port)
        await stopped.wait()
    finally:
        await runner.cleanup()


def run(
    host: str = "127.0.0.1",
    port: int = 12111,
    clock: Callable[[], float] = time.time,
    ops_per_second: float = TEST_MODE_OPS_PER_SECOND,
    state_file: Path | None = None,
) -> None:
    """Blocking entry point for the CLI; stops on Ctrl-C or SIGTERM. ``clock``: the deployment's (see
    domain/clock.py); ``ops_per_second``: the account's shared budget (0: unlimited); ``state_file``: where
    the account is kept between runs (None: in memory only)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(host, port, EmulatorState(clock, ops_per_second=ops_per_second), state_file))
