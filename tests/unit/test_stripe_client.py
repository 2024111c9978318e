"""What a Stripe answer means for a push, the shared budget, retried reads, and error reports."""

from __future__ import annotations

import asyncio

import pytest
import stripe

from stripemeter.stripe_push.budget import StripeBudget
from stripemeter.stripe_push.calls import StripeCalls
from stripemeter.stripe_push.client import classify
from stripemeter.stripe_push.error_reports import meter_changed, reported_requests


def error(cls: type[stripe.StripeError], status: int, message: str, **kw: object) -> stripe.StripeError:
    return cls(message, http_status=status, **kw)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("err", "outcome"),
    [
        (error(stripe.InvalidRequestError, 400, "An event already exists with identifier sm_x.",
               param="identifier"), "delivered"),
        (error(stripe.InvalidRequestError, 400, "No such customer: 'cus_x'", param="payload"), "refused"),
        (error(stripe.IdempotencyError, 400, "Keys for idempotent requests can only be used with the same"),
         "idempotency_conflict"),
        (error(stripe.IdempotencyError, 409, "There is currently another in-progress request"), "transient"),
        (error(stripe.RateLimitError, 429, "Request rate limit exceeded"), "rate_limited"),
        (error(stripe.APIError, 500, "An unknown error occurred"), "server_error"),
        (stripe.APIConnectionError("timed out"), "unreachable"),
        (error(stripe.AuthenticationError, 401, "Invalid API Key"), "transient"),
    ],
)  # fmt: skip
def test_every_answer_has_one_meaning(err: stripe.StripeError, outcome: str) -> None:
    assert classify(err).outcome == outcome


async def test_the_budget_spreads_calls_and_a_429_pauses_everyone() -> None:
    clock = [0.0]
    budget = StripeBudget(10, monotonic=lambda: clock[0])
    await budget.acquire()
    assert budget._next == pytest.approx(0.1)
    pause = budget.slow_down()
    assert 0.25 <= pause <= 0.5 and budget.paused()
    assert 0.5 <= budget.slow_down() <= 1.0  # doubling while it lasts
    budget.slow_down(retry_after=3)
    assert budget._paused_until == pytest.approx(3)
    budget.recovered()
    clock[0] = 3.0
    assert not budget.paused()


async def test_reads_are_retried_through_429s_and_lost_connections() -> None:
    answers: list[object] = [
        error(stripe.RateLimitError, 429, "slow down"),
        stripe.APIConnectionError("reset"),
        "page",
    ]

    async def read() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    budget = StripeBudget(1000)
    budget.slow_down = lambda retry_after=None: 0.0  # type: ignore[method-assign]
    calls = StripeCalls(budget)
    assert await asyncio.wait_for(calls(read), 5) == "page"
    assert calls.made == 3
    answers[:] = [error(stripe.InvalidRequestError, 400, "bad", param="x")]
    with pytest.raises(stripe.InvalidRequestError):
        await calls(read)


def test_error_reports_name_requests_by_identifier_or_idempotency_key() -> None:
    data = {
        "reason": {
            "error_count": 3,
            "error_types": [
                {
                    "code": "meter_event_customer_not_found",
                    "error_count": 2,
                    "sample_errors": [
                        {"error_message": "No such customer", "request": {"identifier": "sm_abc_7"}},
                        {"error_message": "No such customer", "request": {"identifier": "sm_abc_9-r2"}},
                    ],
                },
                {"code": "no_meter", "error_count": 1, "sample_errors": []},
            ],
        }
    }
    assert [(r.identifier, r.code) for r in reported_requests(data)] == [
        ("sm_abc_7", "meter_event_customer_not_found"),
        ("sm_abc_9", "meter_event_customer_not_found"),
    ]
    assert not meter_changed(data)
    data["reason"]["error_types"][1]["sample_errors"] = [
        {"error_message": "x", "request": {"identifier": "i"}}
    ]
    assert meter_changed(data)
