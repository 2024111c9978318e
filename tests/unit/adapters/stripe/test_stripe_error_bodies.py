"""Stripe's error bodies as Stripe documents them (the error object: type, code, message, param,
doc_url), read by stripe-python as it reads a real answer, and what the writer makes of each; the
emulator answers in the same shape."""

from __future__ import annotations

import json
from typing import Any

import pytest
import stripe
from stripe._api_requestor import _APIRequestor

from stripemeter.adapters.stripe.client import classify
from stripemeter.tools.stripe_emulator.faults import lock_timed_out, rate_limited, server_error
from stripemeter.tools.stripe_emulator.idempotency import IdempotencyStore, StoredResponse
from stripemeter.tools.stripe_emulator.meter_events import duplicate_identifier
from stripemeter.tools.stripe_emulator.stripe_errors import StripeApiError

# the error object's attributes (Stripe's API reference, "Errors") and its documented types
DOCUMENTED_FIELDS = {"type", "code", "decline_code", "doc_url", "message", "param", "request_log_url"}
DOCUMENTED_TYPES = {"api_error", "card_error", "idempotency_error", "invalid_request_error"}


def raised(status: int, body: str, headers: dict[str, str] | None = None) -> stripe.StripeError:
    """The exception stripe-python raises for this HTTP answer."""
    requestor = _APIRequestor._global_instance()  # type: ignore[no-untyped-call]  # stripe: unannotated
    with pytest.raises(stripe.StripeError) as caught:
        requestor.handle_error_response(body, status, json.loads(body), headers or {}, "V1")
    return caught.value


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        # a meter event identifier Stripe has: its documented code for an object that already exists
        (400, '{"error": {"type": "invalid_request_error", "code": "resource_already_exists",'
              ' "doc_url": "https://stripe.com/docs/error-codes/resource-already-exists",'
              ' "message": "An event already exists with identifier sm_t_0_5_1.", "param": "identifier"}}',
         "delivered"),
        # the same answer as Stripe gives it with no code: its message is the documented fallback
        (400, '{"error": {"type": "invalid_request_error",'
              ' "message": "An event already exists with identifier sm_t_0_5_1."}}', "delivered"),
        # about the identifier, but not a duplicate: too long, never landed
        (400, '{"error": {"type": "invalid_request_error", "code": "parameter_invalid_string_too_long",'
              ' "message": "An event already exists with identifier x: it is too long.",'
              ' "param": "identifier"}}', "refused"),
        # "already exists" said of another parameter (a meter's event name) is no duplicate event
        (400, '{"error": {"type": "invalid_request_error", "code": "resource_already_exists",'
              ' "message": "A meter with event_name \'api\' already exists.", "param": "event_name"}}',
         "refused"),
        (400, '{"error": {"type": "invalid_request_error", "code": "resource_missing",'
              ' "doc_url": "https://stripe.com/docs/error-codes/resource-missing",'
              ' "message": "No such customer: \'cus_x\'", "param": "payload[stripe_customer_id]"}}',
         "refused"),
        # an idempotency key reused with other parameters: type idempotency_error, no code
        (400, '{"error": {"type": "idempotency_error", "message": "Keys for idempotent requests can only'
              ' be used with the same parameters they were first used with. Try using a key other than'
              ' \'k1\' if you meant to execute a different request."}}', "idempotency_conflict"),
        # the key in use by a request still running: 409, retried later
        (409, '{"error": {"type": "idempotency_error", "code": "idempotency_key_in_use", "message":'
              ' "There is currently another in-progress request using this Stripe-Idempotency-Key."}}',
         "transient"),
        (429, '{"error": {"type": "invalid_request_error", "code": "rate_limit",'
              ' "doc_url": "https://stripe.com/docs/error-codes/rate-limit",'
              ' "message": "Request rate limit exceeded."}}', "rate_limited"),
        (429, '{"error": {"type": "invalid_request_error", "code": "lock_timeout",'
              ' "doc_url": "https://stripe.com/docs/error-codes/lock-timeout",'
              ' "message": "This object cannot be accessed right now because another API request or'
              ' Stripe process is currently accessing it."}}', "refused_for_now"),
        (500, '{"error": {"type": "api_error", "message": "An unknown error occurred"}}', "server_error"),
    ],
)  # fmt: skip
def test_a_documented_error_body_has_one_meaning(status: int, body: str, outcome: str) -> None:
    assert classify(raised(status, body)).outcome == outcome


def test_a_rate_limit_keeps_stripes_code_and_its_retry_after() -> None:
    body = (
        '{"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "Request rate limit"}}'
    )
    result = classify(raised(429, body, {"Retry-After": "2"}))
    assert (result.outcome, result.code, result.retry_after) == ("rate_limited", "rate_limit", 2.0)


def idempotency_errors() -> list[StripeApiError]:
    """The emulator's answers to a key still in use, then to the key reused with other parameters."""
    store = IdempotencyStore()
    scope = ("sk_test_x", "k1")
    store.begin(scope, "first", 0.0)
    errors = []
    with pytest.raises(StripeApiError) as in_use:
        store.begin(scope, "first", 1.0)
    errors.append(in_use.value)
    store.finish(scope, StoredResponse("first", 200, b"{}", {}, "req_1", 1.0))
    with pytest.raises(StripeApiError) as mismatch:
        store.begin(scope, "second", 2.0)
    errors.append(mismatch.value)
    return errors


def emulator_errors() -> list[StripeApiError]:
    answers = [duplicate_identifier("sm_t_0_5_1"), rate_limited(), lock_timed_out(), server_error()]
    return [*answers, *idempotency_errors()]


def envelope_of(error: StripeApiError) -> dict[str, Any]:
    envelope = error.envelope()
    assert set(envelope) == {"error"}
    fields: dict[str, Any] = envelope["error"]
    return fields


def test_the_emulators_error_bodies_have_stripes_documented_shape() -> None:
    for error in emulator_errors():
        fields = envelope_of(error)
        assert set(fields) <= DOCUMENTED_FIELDS, fields
        assert fields["type"] in DOCUMENTED_TYPES and fields["message"]
        if "code" in fields:
            assert fields["doc_url"] == "https://stripe.com/docs/error-codes/" + fields["code"].replace(
                "_", "-"
            )


def test_the_emulators_duplicate_identifier_is_stripes_already_exists_and_the_writer_takes_it_as_landed() -> (
    None
):
    error = duplicate_identifier("sm_t_0_5_1")
    assert (error.status, envelope_of(error)) == (
        400,
        {
            "type": "invalid_request_error",
            "code": "resource_already_exists",
            "doc_url": "https://stripe.com/docs/error-codes/resource-already-exists",
            "message": "An event already exists with identifier sm_t_0_5_1.",
            "param": "identifier",
        },
    )
    assert error.headers() == {"Stripe-Should-Retry": "false"}
    answer = raised(error.status, json.dumps(error.envelope()), error.headers())
    assert classify(answer).outcome == "delivered"


def test_every_emulator_error_means_to_the_writer_what_its_status_and_code_say() -> None:
    outcomes = [
        classify(raised(e.status, json.dumps(e.envelope()), e.headers())).outcome for e in emulator_errors()
    ]
    assert outcomes == [
        "delivered",
        "rate_limited",
        "refused_for_now",
        "server_error",
        "transient",
        "idempotency_conflict",
    ]
