"""The OpenAPI document describes exactly the routes the app serves, with the contract's errors."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

from stripemeter.api.app import create_app
from stripemeter.domain.config import load_settings

DOC: dict[str, Any] = json.loads(files("stripemeter.api.contract").joinpath("openapi.json").read_text())


def served_routes() -> set[tuple[str, str]]:
    app = create_app(load_settings())
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"  # aiohttp adds HEAD to every GET
    }


def documented_routes() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in DOC["paths"].items() for method in ops}


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    served, documented = served_routes(), documented_routes()
    assert served - documented == set(), "routes missing from api/openapi.json"
    assert documented - served == set(), "documented routes the app does not serve"


def test_v1_operations_need_a_key_and_document_the_errors_they_can_answer() -> None:
    for path, ops in DOC["paths"].items():
        for method, op in ops.items():
            statuses = set(op["responses"])
            if not path.startswith("/v1/") or path == "/v1/stripe/webhook":  # Stripe signs the webhook
                assert op["security"] == [], path
                continue
            assert "security" not in op, path  # the document's default: bearerAuth
            assert {"401", "403", "429"} <= statuses, (method, path)
            if method in ("post", "put"):
                assert {"400", "413"} <= statuses and "requestBody" in op, (method, path)
            if "{" in path:
                assert "404" in statuses, (method, path)
    assert DOC["security"] == [{"bearerAuth": []}]
    assert DOC["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    retry_after = DOC["components"]["responses"]["TooManyRequests"]["headers"]["Retry-After"]
    assert retry_after["required"] is True


def test_the_event_schema_carries_the_contract_constraints() -> None:
    schemas = DOC["components"]["schemas"]
    batch = schemas["IngestRequest"]["properties"]["events"]
    assert (batch["minItems"], batch["maxItems"]) == (1, 1000)
    event = schemas["UsageEvent"]
    assert set(event["required"]) == {"tenantId", "metric", "customerRef", "quantity", "ts"}
    assert event["properties"]["tenantId"]["pattern"] == "^[A-Za-z0-9._-]{1,64}$"
    assert event["properties"]["quantity"]["minimum"] == 0
    error = schemas["Error"]["properties"]["error"]
    assert error["required"] == ["code", "message"] and "field" in error["properties"]


def test_busy_and_overload_answers_are_documented_with_retry_after() -> None:
    """Heavy routes answer 409 busy; every /v1 route can answer 503 when no database connection is
    free; both say when to come back."""
    responses = DOC["components"]["responses"]
    for name in ("Busy", "DatabaseBusy"):
        assert responses[name]["headers"]["Retry-After"]["required"] is True
    assert "too_many_heavy_requests" in responses["TooManyRequests"]["description"]
    for path in ("/v1/replay", "/v1/reconciliation/run"):
        assert DOC["paths"][path]["post"]["responses"]["409"] == {"$ref": "#/components/responses/Busy"}
    assert "busy" in DOC["paths"]["/v1/adjustments"]["post"]["responses"]["409"]["description"]
    for path, ops in DOC["paths"].items():
        if path.startswith("/v1/"):
            assert all("503" in op["responses"] for op in ops.values()), path
