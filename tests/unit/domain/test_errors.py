"""The error hierarchy (stripemeter.domain.errors) and its one HTTP mapping (api/errors.py and the
error middleware).

The bodies below are the ones the handlers answered when they caught WindowError, UnknownMetric and
PeriodError themselves: the central mapping must give exactly the same."""

from __future__ import annotations

import ast
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from psycopg_pool import PoolTimeout

from stripemeter.adapters.kafka.admin import ReplicationMismatch, TopicConfigRefused
from stripemeter.adapters.kafka.inspect.kafka_tools import UnknownTool, tool_args
from stripemeter.adapters.kafka.inspect.tail import TopicNotFound
from stripemeter.adapters.postgres.migrate import MigrationError, SchemaMismatch
from stripemeter.api import reconciliation
from stripemeter.api.app import error_middleware
from stripemeter.api.errors import ApiError, api_error, bad_request
from stripemeter.api.ingest_body import Unreadable
from stripemeter.api.replay import parse_request
from stripemeter.core.counting import CannotReaggregate
from stripemeter.core.replay_window import WindowError, parse_window
from stripemeter.domain import errors as hierarchy
from stripemeter.domain import periods
from stripemeter.domain.config import ConfigError, load_settings
from stripemeter.domain.errors import (
    Backpressure,
    Busy,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Permanent,
    StripemeterError,
    Transient,
)
from stripemeter.domain.instants import BadInstant, parse_instant_ms
from stripemeter.schemas.events import InvalidEvent, parse_event
from stripemeter.schemas.packing import ItemTooLarge, pack_arrays
from stripemeter.schemas.versions import UnknownRecordVersion
from stripemeter.services.replayer import UnknownMetric
from stripemeter.services.sink_recovery import SinkRunning
from stripemeter.tools.alert_rules import RulesError
from stripemeter.tools.local.kafka import KafkaSetupError
from stripemeter.tools.local.postgres import PostgresSetupError
from stripemeter.tools.local.stack import StackError

NOW_MS = 1_795_000_000_000  # 2026-11-18
KINDS = (Invalid, Transient, Permanent, Backpressure)
KIND_NAMES = tuple(kind.__name__ for kind in KINDS)

# every error class the project defines outside the API's own ApiError and the Stripe emulator's
# model of Stripe's errors: its kind, and the builtin it was before (existing excepts still catch it)
PROJECT_ERRORS: list[tuple[type[Exception], type[StripemeterError], type[Exception]]] = [
    (ConfigError, Invalid, ValueError),
    (BadInstant, Invalid, ValueError),
    (WindowError, Invalid, ValueError),
    (periods.PeriodError, Invalid, ValueError),
    (UnknownMetric, Invalid, ValueError),
    (InvalidEvent, Invalid, ValueError),
    (UnknownTool, Invalid, LookupError),
    (TopicNotFound, Invalid, LookupError),
    (Unreadable, Invalid, ValueError),
    (MigrationError, Permanent, RuntimeError),
    (SchemaMismatch, Permanent, RuntimeError),
    (PostgresSetupError, Permanent, RuntimeError),
    (KafkaSetupError, Permanent, RuntimeError),
    (StackError, Permanent, RuntimeError),
    (ReplicationMismatch, Permanent, RuntimeError),
    (SinkRunning, Permanent, RuntimeError),
    (TopicConfigRefused, Permanent, RuntimeError),
    (RulesError, Invalid, ValueError),
    (ItemTooLarge, Permanent, ValueError),
    (CannotReaggregate, Permanent, ValueError),
    (UnknownRecordVersion, Permanent, Exception),
    (Conflict, Invalid, ValueError),
    (NotFound, Invalid, LookupError),
    (Forbidden, Invalid, PermissionError),
    (Busy, Transient, Exception),
]


@pytest.mark.parametrize(("cls", "kind", "builtin"), PROJECT_ERRORS, ids=lambda v: getattr(v, "__name__", ""))
def test_every_project_error_has_one_kind_and_keeps_its_builtin_base(
    cls: type[Exception], kind: type[StripemeterError], builtin: type[Exception]
) -> None:
    assert issubclass(cls, kind) and issubclass(cls, builtin)
    assert [k for k in KINDS if issubclass(cls, k)] == [kind]


def test_no_error_class_is_left_outside_the_hierarchy() -> None:
    """Every exception class in the source derives from a kind, but the API's ApiError (an HTTP answer)
    and the Stripe emulator's StripeApiError (Stripe's wire errors, one class for every status)."""
    root = Path(__file__).resolve().parents[3]  # the repository
    defined = set()
    for folder in ("stripemeter", "api", "streams", "schemas"):
        for path in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef) and any(
                    isinstance(base, ast.Name) and base.id.endswith(("Error", "Exception", *KIND_NAMES))
                    for base in node.bases
                ):
                    defined.add(node.name)
    assert defined == {cls.__name__ for cls, _, _ in PROJECT_ERRORS} | {
        "StripemeterError",
        *KIND_NAMES,
        "ApiError",
        "StripeApiError",
    }


def test_the_hierarchy_imports_nothing_of_the_project() -> None:
    tree = ast.parse(Path(hierarchy.__file__).read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert imported == ["__future__"]


def test_the_kinds_carry_their_context_as_attributes() -> None:
    invalid = Invalid("since", "must be before until")
    assert (invalid.field, invalid.detail, invalid.code, str(invalid)) == (
        "since", "must be before until", "invalid_parameter", "since: must be before until"
    )  # fmt: skip
    whole = Invalid(None, "not an object", code="invalid_body")
    assert (whole.field, str(whole), whole.code) == (None, "not an object", "invalid_body")
    assert Backpressure("slow down", retry_after=2.5).retry_after == 2.5
    assert Backpressure("slow down").code == "rate_limited"
    assert Transient("later", code="kafka_unavailable").code == "kafka_unavailable"
    assert Transient("later").retry_after is None
    assert isinstance(Permanent("never"), StripemeterError) and str(Permanent("never")) == "never"


def test_domain_errors_name_their_field_and_keep_their_messages() -> None:
    with pytest.raises(WindowError) as window:
        parse_window("-PT24X", "now", NOW_MS, 86_400 * 31)
    assert window.value.field == "since" and window.value.detail.startswith("'-PT24X' is not an ISO 8601")
    assert str(window.value) == f"since: {window.value.detail}"
    with pytest.raises(BadInstant) as instant:
        parse_instant_ms("2026-11-20T00:00:00", NOW_MS)
    assert instant.value.field is None and str(instant.value) == instant.value.detail
    with pytest.raises(periods.PeriodError) as period:
        periods.parse_name("2026-13")
    assert (period.value.field, period.value.name, str(period.value)) == (
        "period", "2026-13", "period '2026-13' is not YYYY-MM"
    )  # fmt: skip
    unknown = UnknownMetric("nope", "t")
    assert (unknown.field, unknown.code, unknown.metric, unknown.tenant) == (
        "metrics",
        "unknown_metric",
        "nope",
        "t",
    )
    assert str(unknown) == "unknown metric 'nope' for tenant 't': no mapping and no usage"
    with pytest.raises(ConfigError) as config:
        load_settings({"STRIPEMETER_PARTITIONS": "0"})
    assert (config.value.field, config.value.detail) == ("STRIPEMETER_PARTITIONS", "must be at least 1")
    assert str(config.value) == "STRIPEMETER_PARTITIONS must be at least 1"
    with pytest.raises(ConfigError) as config:
        load_settings({"STRIPEMETER_PARTITIONS": "two"})
    assert str(config.value) == "STRIPEMETER_PARTITIONS='two' is not a valid int"
    with pytest.raises(InvalidEvent) as event:
        parse_event({"tenantId": "t", "metric": "m", "customerRef": "c", "quantity": -1, "ts": "now"}, NOW_MS)
    assert (event.value.code, event.value.field, event.value.detail) == (
        "invalid_value", "quantity", "quantity must be >= 0"
    )  # fmt: skip
    assert event.value.message == str(event.value) == "quantity must be >= 0"
    with pytest.raises(UnknownTool) as tool:
        tool_args("kafka-nope", [], "127.0.0.1:9092")
    assert (tool.value.field, tool.value.name) == ("tool", "kafka-nope")
    assert str(tool.value).startswith("unknown Kafka tool 'kafka-nope'; known: ")
    assert (TopicNotFound("x").field, TopicNotFound("x").topic) == ("topic", "x")
    with pytest.raises(ItemTooLarge) as large:
        pack_arrays([b"x" * 100], 50)
    assert (large.value.index, large.value.size, large.value.limit) == (0, 100, 50)


# --- the one HTTP mapping -------------------------------------------------------------------------


def _raising(make: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        make(request)
        return web.Response(text="not reached")

    return handler


def _window(_request: web.Request) -> None:
    parse_window("now", "-PT1H", NOW_MS, 86_400 * 31)


def _period(request: web.Request) -> None:
    reconciliation._period(request, "2026-13")


def _replay(request: web.Request) -> None:
    body = {
        "tenantId": "t",
        "metrics": ["m"],
        "since": "0999-01-01T00:00:00Z",
        "until": "1000-01-01T00:00:00Z",
    }
    parse_request(request, body, 86_400 * 31, NOW_MS)


def _raise(exc: Exception) -> Callable[[web.Request], None]:
    def make(_request: web.Request) -> None:
        raise exc

    return make


ROUTES: dict[str, Callable[[web.Request], None]] = {
    "window": _window,
    "period": _period,
    "replay": _replay,
    "unknown-metric": _raise(UnknownMetric("nope", "t")),
    "invalid-whole": _raise(Invalid(None, "must be a JSON object", code="invalid_body")),
    "backpressure": _raise(Backpressure("slow down", retry_after=0.2)),
    "backpressure-long": _raise(Backpressure("slow down", retry_after=2.5)),
    "backpressure-unknown": _raise(Backpressure("slow down")),
    "transient": _raise(Transient("could not write; retry the same body", code="kafka_unavailable")),
    "busy": _raise(Busy("a replay of tenant 't' is running", retry_after=2)),
    "pool-timeout": _raise(PoolTimeout("couldn't get a connection after 5.00 sec")),
    "statement-timeout": _raise(psycopg.errors.QueryCanceled("canceling statement due to statement timeout")),
    "permanent": _raise(ItemTooLarge(0, 100, 50)),
    "base": _raise(StripemeterError("of no kind")),
    "api-error": _raise(ApiError("not_found", "no replay 'x'", field="replayId", status=404)),
    "bug": _raise(KeyError("x")),
}


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    app = web.Application(middlewares=[error_middleware])
    for name, make in ROUTES.items():
        app.router.add_get(f"/{name}", _raising(make))
    test_client = TestClient(TestServer(app))
    await test_client.start_server()
    yield test_client
    await test_client.close()


async def _answer(client: TestClient[web.Request, web.Application], name: str) -> tuple[int, Any, str | None]:
    response = await client.get(f"/{name}")
    return response.status, await response.json(), response.headers.get("Retry-After")


@pytest.mark.parametrize(
    ("route", "before"),
    [
        # what api/replay.py answered: bad_request(exc.field, exc.detail)
        ("window", bad_request("since", "must be before until")),
        ("replay", bad_request("since", "is before 1970")),
        # api/replay.py: bad_request("metrics", str(exc), code="unknown_metric")
        (
            "unknown-metric",
            bad_request(
                "metrics",
                "unknown metric 'nope' for tenant 't': no mapping and no usage",
                code="unknown_metric",
            ),
        ),
        # api/reconciliation.py: a fixed rule naming the period
        ("period", bad_request("period", "must be YYYY-MM from 1970-01 to 9998-12, e.g. 2026-11")),
    ],
)
async def test_invalid_is_answered_as_the_handlers_answered_it(
    client: TestClient[web.Request, web.Application], route: str, before: ApiError
) -> None:
    assert await _answer(client, route) == (400, before.body(), None)


async def test_the_exact_bodies(client: TestClient[web.Request, web.Application]) -> None:
    assert await _answer(client, "window") == (
        400,
        {"error": {"code": "invalid_parameter", "message": "since: must be before until", "field": "since"}},
        None,
    )
    assert await _answer(client, "unknown-metric") == (
        400,
        {
            "error": {
                "code": "unknown_metric",
                "message": "metrics: unknown metric 'nope' for tenant 't': no mapping and no usage",
                "field": "metrics",
            }
        },
        None,
    )
    assert await _answer(client, "invalid-whole") == (
        400,
        {"error": {"code": "invalid_body", "message": "must be a JSON object"}},
        None,
    )


async def test_backpressure_is_429_with_retry_after_in_whole_seconds(
    client: TestClient[web.Request, web.Application],
) -> None:
    body = {"error": {"code": "rate_limited", "message": "slow down"}}
    assert await _answer(client, "backpressure") == (429, body, "1")
    assert await _answer(client, "backpressure-long") == (429, body, "3")
    assert await _answer(client, "backpressure-unknown") == (429, body, None)


async def test_transient_is_503(client: TestClient[web.Request, web.Application]) -> None:
    body = {"error": {"code": "kafka_unavailable", "message": "could not write; retry the same body"}}
    assert await _answer(client, "transient") == (503, body, None)


async def test_busy_is_409_with_retry_after(client: TestClient[web.Request, web.Application]) -> None:
    body = {"error": {"code": "busy", "message": "a replay of tenant 't' is running"}}
    assert await _answer(client, "busy") == (409, body, "2")


async def test_postgres_refusals_are_503_with_retry_after_not_500(
    client: TestClient[web.Request, web.Application],
) -> None:
    """No pool connection within the wait limit, or a statement over the statement timeout."""
    status, body, retry = await _answer(client, "pool-timeout")
    assert (status, body["error"]["code"], retry) == (503, "database_busy", "1")
    status, body, retry = await _answer(client, "statement-timeout")
    assert (status, body["error"]["code"], retry) == (503, "statement_timeout", "1")


@pytest.mark.parametrize("route", ["permanent", "base", "bug"])
async def test_permanent_and_unknown_failures_are_a_logged_500(
    client: TestClient[web.Request, web.Application], route: str, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"error": {"code": "internal_error", "message": "internal error; see the API log"}}
    assert await _answer(client, route) == (500, body, None)
    assert "unhandled error on GET" in caplog.text


async def test_api_errors_pass_unchanged(client: TestClient[web.Request, web.Application]) -> None:
    body = {"error": {"code": "not_found", "message": "no replay 'x'", "field": "replayId"}}
    assert await _answer(client, "api-error") == (404, body, None)


def test_api_error_maps_each_kind() -> None:
    invalid = api_error(Invalid("tenantId", "must match x"))
    assert invalid is not None and (invalid.status, invalid.body()) == (
        400,
        {"error": {"code": "invalid_parameter", "message": "tenantId: must match x", "field": "tenantId"}},
    )
    slow = api_error(Backpressure("slow down", retry_after=1.01))
    assert slow is not None and (slow.status, slow.headers) == (429, {"Retry-After": "2"})
    later = api_error(Transient("later", retry_after=4))
    assert later is not None and (later.status, later.headers) == (503, {"Retry-After": "4"})
    assert api_error(Permanent("never")) is None
    assert api_error(StripemeterError("of no kind")) is None


def test_retry_after_is_whole_seconds_from_one_to_an_hour() -> None:
    """A rate limit of 0 per second waits forever: the header still has to be a number."""
    from stripemeter.api.errors import retry_after

    assert retry_after(None) == {}
    assert retry_after(0.2) == {"Retry-After": "1"}
    assert retry_after(2.5) == {"Retry-After": "3"}
    assert retry_after(float("inf")) == {"Retry-After": "3600"}
