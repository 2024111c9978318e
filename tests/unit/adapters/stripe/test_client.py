"""What a Stripe answer means for a push, the shared budget, retried reads and sends, and error reports."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
import stripe

from stripemeter.adapters.stripe.budget import StripeBudget
from stripemeter.adapters.stripe.calls import ATTEMPTS, StripeCalls
from stripemeter.adapters.stripe.client import classify
from stripemeter.adapters.stripe.reader import StripeReader
from stripemeter.core.error_reports import meter_changed, reported_requests
from stripemeter.core.push_plan import Request


def error(cls: type[stripe.StripeError], status: int, message: str, **kw: Any) -> stripe.StripeError:
    return cls(message, http_status=status, **kw)


class NoPauseBudget(StripeBudget):
    """A budget whose 429 pauses take no time."""

    def slow_down(self, retry_after: float | None = None) -> float:
        return 0.0


def connection_error(message: str) -> stripe.APIConnectionError:
    return stripe.APIConnectionError(message)  # type: ignore[no-untyped-call]  # stripe: __init__ unannotated


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
        (connection_error("timed out"), "unreachable"),
        (error(stripe.AuthenticationError, 401, "Invalid API Key"), "transient"),
        # refusals that pass later by their code alone: a stamp ahead of Stripe's clock, a lock timeout
        (error(stripe.InvalidRequestError, 400, "Timestamp is too far in the future", param="timestamp",
               code="timestamp_in_future"), "refused_for_now"),
        (error(stripe.RateLimitError, 429, "This object cannot be accessed right now",
               json_body={"error": {"code": "lock_timeout", "type": "invalid_request_error"}}),
         "refused_for_now"),
        (error(stripe.InvalidRequestError, 400, "Timestamp is too far in the past", param="timestamp",
               code="timestamp_too_far_in_past"), "refused"),
        (error(stripe.InvalidRequestError, 400, "No active meter", param="event_name", code="no_meter"),
         "refused"),
    ],
)  # fmt: skip
def test_every_answer_has_one_meaning(err: stripe.StripeError, outcome: str) -> None:
    assert classify(err).outcome == outcome


def test_a_refusal_carries_stripes_code_wherever_stripe_python_keeps_it() -> None:
    from stripemeter.adapters.stripe.client import code_of

    assert code_of(error(stripe.InvalidRequestError, 400, "x", param="p", code="no_meter")) == "no_meter"
    locked = error(stripe.RateLimitError, 429, "x", json_body={"error": {"code": "lock_timeout"}})
    assert code_of(locked) == "lock_timeout"
    assert code_of(error(stripe.RateLimitError, 429, "x")) is None


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
        connection_error("reset"),
        "page",
    ]

    async def read() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    budget = NoPauseBudget(1000)
    calls = StripeCalls(budget)
    assert await asyncio.wait_for(calls(read), 5) == "page"
    assert calls.made == 3
    answers[:] = [error(stripe.InvalidRequestError, 400, "bad", param="x")]
    with pytest.raises(stripe.InvalidRequestError):
        await calls(read)


def test_error_reports_name_requests_by_identifier_or_idempotency_key() -> None:
    data: dict[str, Any] = {
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


class FakeMeterEvents:
    """``client.v1.billing.meter_events``: answers from a script, remembers the idempotency keys."""

    def __init__(self, answers: list[object]):
        self.answers = answers
        self.keys: list[str] = []

    async def create_async(self, params: dict[str, object], options: dict[str, str]) -> object:
        self.keys.append(options["idempotency_key"])
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def reader_with(answers: list[object]) -> tuple[StripeReader, FakeMeterEvents]:
    events = FakeMeterEvents(answers)
    client = SimpleNamespace(v1=SimpleNamespace(billing=SimpleNamespace(meter_events=events)))
    budget = NoPauseBudget(1000)
    return StripeReader(client, budget), events  # type: ignore[arg-type]


CORRECTION = Request("smrec_x_rec_y", "api_requests", {"stripe_customer_id": "cus_1", "value": "2"}, 0, 2, 2)


async def test_the_reconcilers_meter_events_are_retried_like_its_reads() -> None:
    """429s and lost connections: the same request under the same key until Stripe answers; anything
    else is the answer (a 500 is not retried here: it needs a new key)."""
    reader, events = reader_with(
        [error(stripe.RateLimitError, 429, "slow down"), connection_error("reset"), "event"]
    )
    assert (await asyncio.wait_for(reader.send(CORRECTION), 5)).outcome == "delivered"
    assert events.keys == ["smrec_x_rec_y"] * 3 and reader.calls == 3
    reader, events = reader_with([connection_error("reset") for _ in range(ATTEMPTS)])
    assert (await asyncio.wait_for(reader.send(CORRECTION), 5)).outcome == "unreachable"
    assert reader.calls == ATTEMPTS
    reader, events = reader_with([error(stripe.APIError, 500, "An unknown error occurred")])
    assert (await reader.send(CORRECTION)).outcome == "server_error" and reader.calls == 1
    reader, events = reader_with(
        [
            error(
                stripe.InvalidRequestError,
                400,
                "An event already exists with identifier x",
                param="identifier",
            )
        ]
    )
    assert (await reader.send(CORRECTION)).outcome == "delivered"


async def test_a_correction_resent_after_a_5xx_uses_the_next_idempotency_key() -> None:
    """Stripe replays a 500 to every retry with the same key; the identifier stays (it stops a double)."""
    reader, events = reader_with(["event"])
    assert (await reader.send(CORRECTION, 2)).outcome == "delivered"
    assert events.keys == ["smrec_x_rec_y-r2"]
