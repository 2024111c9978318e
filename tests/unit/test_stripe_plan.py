from __future__ import annotations

from stripemeter.stripe_push.plan import CounterState, Mapping, next_push, not_begun

BUCKET = 1_795_485_600  # an hour boundary
M = Mapping("api_requests", "sum", "cus_1")


def state(
    latest_micros: int, pushed: int = 0, seq: int = 1, pending: tuple[str, int] | None = None
) -> CounterState:
    return CounterState(
        "t",
        "requests",
        "acme",
        BUCKET,
        latest_micros,
        seq,
        pushed,
        pending[0] if pending else None,
        pending[1] if pending else None,
    )


def test_pushes_the_whole_unit_difference_inside_the_bucket() -> None:
    push = next_push(state(7_500_000, pushed=3), M)
    assert push is not None
    assert push.payload == {"stripe_customer_id": "cus_1", "value": "4"}
    assert push.timestamp == BUCKET  # the hour's start: one stamp for every resend
    assert push.to_units == 7
    assert push.identifier.endswith("_3_7_1") and len(push.identifier) <= 100


def test_nothing_to_push_until_a_whole_unit_accumulates() -> None:
    assert next_push(state(3_900_000, pushed=3), M) is None


def test_a_pending_push_is_retried_with_the_same_identifier_and_range() -> None:
    first = next_push(state(5_000_000), M)
    assert first is not None
    retry = next_push(state(9_000_000, seq=2, pending=(first.identifier, first.to_units)), M)
    assert retry is not None
    assert (retry.identifier, retry.payload["value"], retry.to_units) == (first.identifier, "5", 5)


def test_identifier_is_new_when_a_total_comes_back_to_an_earlier_value() -> None:
    a = next_push(state(5_000_000, pushed=3, seq=4), M)
    b = next_push(state(5_000_000, pushed=3, seq=9), M)
    assert a is not None and b is not None and a.identifier != b.identifier


def test_an_hour_that_has_not_begun_waits_and_last_pushes_the_value() -> None:
    # an event may be up to an hour ahead; Stripe refuses stamps more than 5 minutes ahead
    assert not_begun(state(1), now_s=BUCKET - 3000)
    assert not not_begun(state(1), now_s=BUCKET - 200)
    push = next_push(state(2_000_000), Mapping("seats", "last", "cus_1"))
    assert push is not None
    assert push.timestamp == BUCKET
    assert push.payload["value"] == "2"
