"""The Stripe writer's decisions per counter hour (streams/stripe_writer.py), without Kafka, PostgreSQL or
HTTP: the push rows (a fake of core/push_rows.py's ``PushRows``) and ``client.send`` log what the
writer asked for, and the clock is fixed. test_stripe_client.py covers how a Stripe error becomes an
outcome; these tests cover what the writer does with each outcome, and with each state an hour can be
found in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest
import stripe

from stripemeter.adapters.stripe.client import SendResult
from stripemeter.core.push_plan import (
    IDENTIFIER_WINDOW_S,
    SUMMARY_LAG_S,
    Request,
    Row,
    StripeMeterSpec,
    new_request,
)
from stripemeter.core.push_rows import Delivery, Failure, Fence, PushRows, Stream
from stripemeter.domain.clock import Clock
from stripemeter.domain.kafka_access import KafkaAccess
from stripemeter.streams import stripe_writer as writer_module
from stripemeter.streams.stripe_writer import StripeWriter
from tests.unit.adapters.stripe.test_client import connection_error
from tests.unit.adapters.stripe.test_client import error as stripe_error

NOW = datetime(2026, 11, 20, 15, 30, tzinfo=UTC)
BUCKET = datetime(2026, 11, 20, 14, tzinfo=UTC)
METER = StripeMeterSpec("mtr_1", "api_requests", "sum", "customer", "units", True, None)
LAST_METER = StripeMeterSpec("mtr_2", "api_requests", "last", "customer", "units", True, None)
FENCE = Fence("sm", 7, 0)
Call = tuple[Any, ...]


@dataclass(frozen=True)
class FixedClock(Clock):
    at: float = 0.0

    def __call__(self) -> float:
        return self.at


class FakePushRows:
    """The writer's push rows (core/push_rows.py: ``PushRows``): each change is logged with what
    matters about it."""

    def __init__(self, log: list[Call]):
        self.log = log
        self.streams: list[Stream] = []
        self.recorded = True  # what record_pending answers (False: the row moved on, or the lease did)
        self.fences: set[Fence] = set()
        self.due_partitions: list[list[int]] = []

    async def due(
        self, app_id: str, partitions: list[int], now: datetime, streams: int = 200
    ) -> list[Stream]:
        self.due_partitions.append(partitions)
        return self.streams

    async def parked_count(self) -> int:
        return 0

    async def record_pending(self, row: Row, request: Request, fence: Fence, now: datetime) -> bool:
        self.fences.add(fence)
        self.log.append(("record_pending", request))
        return self.recorded

    async def mark_delivered(self, row: Row, delivery: Delivery, fence: Fence, now: datetime) -> bool:
        self.fences.add(fence)
        d = delivery
        self.log.append(("mark_delivered", d.identifier, d.to_units, d.synced, row.version, d.added))
        return True

    async def mark_attempt(
        self, row: Row, failure: Failure, fence: Fence, now: datetime, *, new_key: bool, refused: bool = False
    ) -> bool:
        self.fences.add(fence)
        refusal = ("refused",) if refused else ()
        self.log.append(("mark_attempt", failure.identifier, failure.reason, new_key, *refusal))
        return True

    async def refuse_pending(self, row: Row, failure: Failure, fence: Fence, now: datetime) -> bool:
        self.fences.add(fence)
        self.log.append(("refuse_pending", failure.identifier, failure.reason))
        return True

    async def forget_pending(self, row: Row, failure: Failure, fence: Fence, now: datetime) -> bool:
        self.fences.add(fence)
        self.log.append(("forget_pending", failure.identifier, failure.reason))
        return True

    async def park(self, row: Row, reason: str, fence: Fence, now: datetime, status: str = "parked") -> bool:
        self.fences.add(fence)
        self.log.append(("park", status, reason))
        return True

    async def mark_synced(self, row: Row, fence: Fence, now: datetime) -> bool:
        self.fences.add(fence)
        self.log.append(("mark_synced",))
        return True


class FakeBudget:
    def __init__(self, log: list[Call]):
        self.log = log

    async def acquire(self) -> None:
        pass

    def slow_down(self, retry_after: float | None = None) -> float:
        self.log.append(("slow_down", retry_after))
        return retry_after or 0.5

    def recovered(self) -> None:
        self.log.append(("recovered",))


class FakeMeters:
    def __init__(self, meter: StripeMeterSpec | None):
        self.meter = meter
        self.errors: dict[str, Exception] = {}  # event name -> what reading its meter raises

    async def get(self, event_name: str) -> StripeMeterSpec | None:
        if event_name in self.errors:
            raise self.errors[event_name]
        return self.meter if self.meter and self.meter.event_name == event_name else None

    async def fresh(self, event_name: str) -> StripeMeterSpec | None:
        return await self.get(event_name)


class Harness:
    """A writer holding usage.deltas partition 0 under epoch 7, at ``NOW``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, meter: StripeMeterSpec | None = METER):
        self.log: list[Call] = []
        self.pushes = FakePushRows(self.log)
        self.results: list[SendResult] = []
        self.summary: list[int] = []  # what Stripe's summary of the hour holds, per page item
        self.corrections = 0  # delivered reconciliation corrections of the hour
        self.uncertain: list[int] = []
        self.summary_params: list[Any] = []
        self.customers: set[str] = {"cus_1"}  # the customers Stripe has when asked
        self.customer_reads: list[str] = []
        client = SimpleNamespace(
            v1=SimpleNamespace(
                billing=SimpleNamespace(
                    meters=SimpleNamespace(event_summaries=SimpleNamespace(list_async=self._summaries))
                ),
                customers=SimpleNamespace(retrieve_async=self._customer),
            )
        )
        self.writer = StripeWriter(
            KafkaAccess("unused:9092"),
            "usage.deltas",
            "group",
            "sm",
            "postgresql://unused",
            client,  # type: ignore[arg-type]
            FakeBudget(self.log),  # type: ignore[arg-type]
            clock=FixedClock(at=NOW.timestamp()),
        )
        self.meters = FakeMeters(meter)
        self.writer.meters = self.meters  # type: ignore[assignment]
        self.writer.calls = self._call  # type: ignore[assignment]
        self.writer.ownership.epochs = {0: FENCE.epoch}
        self.writer.push_rows = self._push_rows
        monkeypatch.setattr(writer_module, "send", self._send)
        monkeypatch.setattr(writer_module, "delivered_corrections", self._corrections)
        monkeypatch.setattr(writer_module, "uncertain_corrections", self._uncertain)

    def _push_rows(self, conn: psycopg.AsyncConnection) -> PushRows:
        return self.pushes

    async def _send(self, client: Any, request: Request, attempt: int = 0) -> SendResult:
        self.log.append(("send", request, attempt))
        return self.results.pop(0)

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await fn(*args)

    async def _summaries(self, meter_id: str, params: dict[str, Any]) -> Any:
        self.summary_params.append((meter_id, params))
        return SimpleNamespace(data=[SimpleNamespace(aggregated_value=value) for value in self.summary])

    async def _customer(self, customer: str) -> Any:
        self.customer_reads.append(customer)
        if customer not in self.customers:
            raise stripe_error(
                stripe.InvalidRequestError, 404, f"No such customer: '{customer}'", param="id",
                code="resource_missing",
            )  # fmt: skip
        return SimpleNamespace(id=customer)

    async def _corrections(self, conn: Any, key: Any) -> int:
        return self.corrections

    async def _uncertain(self, conn: Any, key: Any) -> list[int]:
        return self.uncertain

    async def push(self, *rows: Row, event_name: str | None = "api_requests", customer: str | None = "cus_1",
                   aggregation: str = "sum", anchor: datetime | None = None) -> int:  # fmt: skip
        self.pushes.streams = [Stream(list(rows), event_name, aggregation, customer, anchor)]
        return await self.writer.push_due(conn=None)  # type: ignore[arg-type]

    def calls(self, *names: str) -> list[Call]:
        return [call for call in self.log if call[0] in names]


def row(
    latest_units: float = 5,
    pushed: int = 0,
    status: str = "waiting",
    version: int = 3,
    bucket: datetime = BUCKET,
    pending: Request | None = None,
    pending_age_s: float = 60.0,
    pending_attempt: int = 0,
    attempts: int = 0,
    updated_ago_s: float = 3600.0,
    partition: int = 0,
    holds: bool = False,
    last_timestamp: int | None = None,
    refused_ago_s: float | None = None,
) -> Row:
    return Row(
        key=("t1", "requests", "acme", bucket),
        latest_micros=round(latest_units * 1_000_000),
        pushed_units=pushed,
        status="pending" if pending and status == "waiting" else status,
        version=version,
        delta_partition=partition,
        pending_raw=pending.wire() if pending else None,
        pending_since=NOW.timestamp() - pending_age_s if pending else None,
        pending_attempt=pending_attempt,
        attempts=attempts,
        updated_at=NOW.timestamp() - updated_ago_s,
        holds=holds,
        last_timestamp=last_timestamp,
        refused_since=None if refused_ago_s is None else NOW.timestamp() - refused_ago_s,
    )


def planned(
    latest_units: int = 5, pushed: int = 2, version: int = 3, meter: StripeMeterSpec = METER
) -> Request:
    """The request the writer plans for ``row(latest_units, pushed, version=version)``."""
    aggregation = "last" if meter.formula == "last" else "sum"
    return new_request(row(latest_units, pushed, version=version), latest_units, aggregation, meter, "cus_1")


# --- a new request ------------------------------------------------------------------------------------


async def test_a_new_request_is_recorded_before_it_is_sent_and_delivered_marks_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness(monkeypatch)
    h.results = [SendResult("delivered")]
    request = planned(5, pushed=2)
    assert (request.value, request.to_units) == (3, 5)

    assert await h.push(row(5, pushed=2)) == 1

    assert h.log == [
        ("record_pending", request),
        ("send", request, 0),  # the first attempt: the identifier is the idempotency key
        ("recovered",),
        # the version record_pending wrote; synced (it reaches the target); a sum adds its value
        ("mark_delivered", request.identifier, 5, True, 4, 3),
    ]
    assert h.pushes.fences == {FENCE}
    assert h.pushes.due_partitions == [[0]]  # only the partitions whose lease is held


async def test_a_last_request_carries_the_value_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, meter=LAST_METER)
    h.results = [SendResult("delivered")]
    await h.push(row(4.6, pushed=9), aggregation="last")  # rounded half up: 5
    (_, request), (_, sent, _) = h.calls("record_pending", "send")
    assert sent == request
    assert (request.value, request.to_units, request.payload["units"]) == (5, 5, "5")
    assert h.calls("mark_delivered") == [("mark_delivered", request.identifier, 5, True, 4, None)]


async def test_nothing_is_sent_when_the_request_could_not_be_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another writer took the partition, or the row changed since it was read: read again next round."""
    h = Harness(monkeypatch)
    h.pushes.recorded = False
    assert await h.push(row(5, pushed=2)) == 0
    assert [call[0] for call in h.log] == ["record_pending"]


async def test_fractions_carry_into_the_next_hour_of_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch)
    h.results = [SendResult("delivered")]
    this_hour = row(0.6)
    hour_before = replace(row(0.6), key=(*this_hour.key[:3], BUCKET - timedelta(hours=1)))
    await h.push(hour_before, this_hour)  # 0.6 + 0.6: the hour before holds 0 units, this one 1
    assert h.calls("mark_synced") == [("mark_synced",)]
    (_, request), *_ = h.calls("record_pending")
    assert (request.timestamp, request.value) == (int(BUCKET.timestamp()), 1)


# --- what each answer of Stripe leads to -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (
            SendResult("refused", "No such customer: 'cus_1'"),
            [("refuse_pending", "ID", "Stripe refused: No such customer: 'cus_1'")],
        ),
        (
            SendResult("idempotency_conflict", "Keys for idempotent requests ..."),
            [("park", "parked", "idempotency_error: Keys for idempotent requests ...")],
        ),
        # 5xx: Stripe replays a 500 to the same key, so the retry takes the next one
        (SendResult("server_error", "APIError 500"), [("mark_attempt", "ID", "APIError 500", True)]),
        # 429 and no answer: everyone slows down; the retry keeps the key (Stripe answers from its record)
        (
            SendResult("rate_limited", "slow down", retry_after=2.0),
            [("slow_down", 2.0), ("mark_attempt", "ID", "slow down", False)],
        ),
        (
            SendResult("unreachable", "timed out"),
            [("slow_down", None), ("mark_attempt", "ID", "timed out", False)],
        ),
        (SendResult("transient", "409 in progress"), [("mark_attempt", "ID", "409 in progress", False)]),
    ],
    ids=["refused", "idempotency_error", "5xx", "429", "timeout", "transient"],
)
async def test_each_failed_answer_has_one_next_step(
    monkeypatch: pytest.MonkeyPatch, result: SendResult, expected: list[Call]
) -> None:
    h = Harness(monkeypatch)
    h.results = [result]
    request = planned(5, pushed=2)
    assert await h.push(row(5, pushed=2)) == 0
    after_send = h.log[h.log.index(("send", request, 0)) + 1 :]
    assert after_send == [tuple(request.identifier if v == "ID" else v for v in call) for call in expected]


async def test_a_pending_request_is_resent_unchanged_under_its_attempts_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The counter moved on (9 units now) but the recorded request goes out as it was; once delivered
    the hour is not synced yet, and the next round plans the rest."""
    h = Harness(monkeypatch)
    h.results = [SendResult("delivered")]
    request = planned(5, pushed=2)
    pending = row(9, pushed=2, version=4, pending=request, pending_attempt=2)

    assert await h.push(pending) == 1

    assert h.log == [
        ("send", request, 2),
        ("recovered",),
        ("mark_delivered", request.identifier, 5, False, 4, 3),
    ]


async def test_a_resent_request_is_not_synced_when_a_drop_report_lowered_the_hour_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The request was planned to bring the hour from 2 to 5 (value 3); before it was answered, Stripe
    reported an earlier request of 2 units dropped and the hour went back to 0. Delivered now, it
    leaves the hour at 3 of its target 5: not synced, so the next round sends the 2 units left."""
    h = Harness(monkeypatch)
    h.results = [SendResult("delivered")]
    request = planned(5, pushed=2)
    pending = row(5, pushed=0, version=6, pending=request, pending_attempt=1)

    assert await h.push(pending) == 1

    assert h.calls("mark_delivered") == [("mark_delivered", request.identifier, 5, False, 6, 3)]


async def test_a_pending_request_is_resent_even_when_its_mapping_went_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whether it landed is unknown: it is sent again rather than parked or replanned."""
    h = Harness(monkeypatch, meter=None)
    h.results = [SendResult("server_error", "APIError 502")]
    request = planned(5, pushed=2)
    await h.push(row(5, pushed=2, version=4, pending=request), event_name=None, customer=None)
    assert h.log == [("send", request, 0), ("mark_attempt", request.identifier, "APIError 502", True)]


# --- hours that are not sent -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hour", "stream", "expected"),
    [
        (row(5, status="parked"), {}, []),
        (row(5, status="parked", pending=planned(5, 0)), {}, []),  # parked: not resent either
        (row(5, attempts=3, updated_ago_s=0.5), {}, []),  # its last attempt failed moments ago
        (row(5, pushed=5), {}, [("mark_synced",)]),  # Stripe holds the target already
        (row(5, pushed=5, status="synced"), {}, []),
        (row(5, bucket=BUCKET + timedelta(hours=2)), {}, []),  # not begun: Stripe takes 5 min ahead
        (
            row(5, bucket=NOW - timedelta(days=36)),
            {},
            [("park", "parked", "the hour is older than the 35 days Stripe accepts")],
        ),
        (row(5), {"event_name": None}, [("park", "unmapped", "no metric or customer mapping yet")]),
        (row(5), {"customer": None}, [("park", "unmapped", "no metric or customer mapping yet")]),
        (
            row(5),
            {"event_name": "other_event"},
            [("park", "parked", "no Stripe meter has event_name 'other_event'")],
        ),
    ],
    ids=[
        "parked",
        "parked-pending",
        "backing-off",
        "reached",
        "synced",
        "not-begun",
        "too-old",
        "no-metric-mapping",
        "no-customer-mapping",
        "no-meter",
    ],
)
async def test_hours_that_cannot_or_need_not_be_sent(
    monkeypatch: pytest.MonkeyPatch, hour: Row, stream: dict[str, Any], expected: list[Call]
) -> None:
    h = Harness(monkeypatch)
    assert await h.push(hour, **stream) == 0
    assert h.log == expected


@pytest.mark.parametrize(
    ("meter", "aggregation"),
    [
        (replace(METER, active=False), "sum"),
        (replace(METER, event_time_window="hour"), "sum"),
        (replace(METER, formula="count"), "count"),
        (METER, "last"),
    ],
    ids=["inactive", "pre-aggregating", "count-formula", "last-on-sum"],
)
async def test_a_meter_that_cannot_carry_the_metric_parks_the_hour(
    monkeypatch: pytest.MonkeyPatch, meter: StripeMeterSpec, aggregation: str
) -> None:
    h = Harness(monkeypatch, meter=meter)
    await h.push(row(5), aggregation=aggregation)
    [(name, status, reason)] = h.log
    assert (name, status) == ("park", "parked") and meter.id in reason


async def test_an_hour_of_a_partition_no_longer_held_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch)
    h.writer.ownership.epochs = {1: 3}  # partition 0 went to another writer after due() read it
    assert await h.push(row(5)) == 0
    assert h.log == []


async def test_a_stream_that_fails_waits_and_the_round_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading Stripe's meters failing, or PostgreSQL contention, costs one stream one round."""
    h = Harness(monkeypatch)
    for error in (connection_error("down"), psycopg.errors.DeadlockDetected()):
        h.log.clear()
        h.meters.errors["broken_event"] = error
        h.results = [SendResult("delivered")]
        h.pushes.streams = [
            Stream([row(5)], "broken_event", "sum", "cus_1"),
            Stream([row(5)], "api_requests", "sum", "cus_1"),
        ]
        assert await h.writer.push_due(conn=None) == 1  # type: ignore[arg-type]
        assert [call[0] for call in h.log] == ["record_pending", "send", "recovered", "mark_delivered"]


# --- a pending request older than Stripe keeps identifiers -----------------------------------------------


OLD = IDENTIFIER_WINDOW_S + 60


@pytest.mark.parametrize(
    ("holds", "verdict"),
    # pushed 2 + corrections 1 = 3 without the request; 3 + its 3 units = 6 with it
    [(6, "landed"), (3, "not landed"), (4, "unknown")],
)
async def test_an_old_pending_request_is_judged_by_stripes_summary_never_resent(
    monkeypatch: pytest.MonkeyPatch, holds: int, verdict: str
) -> None:
    h = Harness(monkeypatch)
    h.summary, h.corrections = [holds - 1, 1], 1  # the summary's items add up
    request = planned(5, pushed=2)
    await h.push(row(5, pushed=2, version=4, pending=request, pending_age_s=OLD))

    assert not h.calls("send")
    start = int(BUCKET.timestamp())
    assert h.summary_params == [
        ("mtr_1", {"customer": "cus_1", "start_time": start, "end_time": start + 3600})
    ]
    if verdict == "landed":  # delivered, not synced: the next round checks the target again
        assert h.log == [("mark_delivered", request.identifier, 5, False, 4, 3)]
    elif verdict == "not landed":  # dropped: a new request (new identifier) is planned
        assert h.log == [("forget_pending", request.identifier, "not in Stripe's summary after 24 h")]
    else:
        [(name, status, reason)] = h.log
        assert (name, status) == ("park", "parked")
        assert reason.startswith(f"cannot tell whether {request.identifier} landed")


async def test_an_old_pending_request_may_include_uncertain_corrections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A correction whose answer was lost may be in Stripe's hour or not: 6 + 2 still means landed."""
    h = Harness(monkeypatch)
    h.summary, h.corrections, h.uncertain = [8], 1, [2]
    request = planned(5, pushed=2)
    await h.push(row(5, pushed=2, version=4, pending=request, pending_age_s=OLD))
    assert h.log == [("mark_delivered", request.identifier, 5, False, 4, 3)]


async def test_an_old_pending_request_is_judged_from_what_the_hour_holds_now(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Planned from 2 to 5 (value 3); a drop report took the hour back to 0 since. Stripe's 3 is the
    request landed: delivered with its value, not parked as neither 0 nor 5."""
    h = Harness(monkeypatch)
    h.summary = [3]
    request = planned(5, pushed=2)
    await h.push(row(5, pushed=0, version=6, pending=request, pending_age_s=OLD))
    assert h.log == [("mark_delivered", request.identifier, 5, False, 6, 3)]


async def test_an_old_last_request_ignores_corrections(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``last`` hour holds the newest value: corrections do not add to it."""
    h = Harness(monkeypatch, meter=LAST_METER)
    h.summary, h.corrections, h.uncertain = [5], 4, [1]
    request = planned(5, pushed=2, meter=LAST_METER)
    await h.push(row(5, pushed=2, version=4, pending=request, pending_age_s=OLD), aggregation="last")
    assert h.log == [("mark_delivered", request.identifier, 5, False, 4, None)]


@pytest.mark.parametrize(
    ("meter", "customer", "reason"),
    [(None, "cus_1", "its meter is unknown"), (METER, None, "no customer mapping")],
)
async def test_an_old_pending_request_that_cannot_be_checked_is_parked(
    monkeypatch: pytest.MonkeyPatch, meter: StripeMeterSpec | None, customer: str | None, reason: str
) -> None:
    h = Harness(monkeypatch, meter=meter)
    request = planned(5, pushed=2)
    await h.push(row(5, pushed=2, version=4, pending=request, pending_age_s=OLD), customer=customer)
    [(name, status, why)] = h.log
    assert (name, status) == ("park", "parked") and request.identifier in why and reason in why
    assert h.summary_params == []


async def test_a_pending_push_from_before_recorded_requests_waits_for_stripes_summary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Recorded by a writer before migration 0010 (identifier and target only): it cannot be resent, so
    Stripe's summary decides, once it can show the push (after ``SUMMARY_LAG_S``)."""
    h = Harness(monkeypatch)
    legacy = {"identifier": "sm_legacy_4", "toUnits": 5}
    recent = replace(row(5, pushed=2, version=4), pending_raw=legacy, pending_since=NOW.timestamp() - 60)
    await h.push(replace(recent, updated_at=NOW.timestamp() - SUMMARY_LAG_S + 1))
    assert h.log == [] and h.summary_params == []

    h.summary = [5]  # pushed 2 + the legacy push's 3
    await h.push(replace(recent, updated_at=NOW.timestamp() - SUMMARY_LAG_S - 1))
    assert h.log == [("mark_delivered", "sm_legacy_4", 5, False, 4, 3)]


# --- last is Stripe's last ------------------------------------------------------------------------------


async def test_a_last_value_that_drops_to_0_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seats 10 in one hour, 0 in the next: Stripe bills the period's newest event, so the new hour's 0
    has to reach it as an event, although its target equals what the row says it holds."""
    h = Harness(monkeypatch, meter=LAST_METER)
    h.results = [SendResult("delivered")]
    await h.push(row(0), aggregation="last")
    [(_, request)] = h.calls("record_pending")
    assert (request.value, request.to_units, request.payload["units"]) == (0, 0, "0")
    assert h.calls("mark_delivered") == [("mark_delivered", request.identifier, 0, True, 4, None)]
    h.log.clear()
    await h.push(row(0, holds=True), aggregation="last")  # once Stripe holds the 0: synced
    assert h.log == [("mark_synced",)]


async def test_each_last_request_of_an_hour_is_stamped_after_the_previous_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness(monkeypatch, meter=LAST_METER)
    h.results = [SendResult("delivered")]
    start = int(BUCKET.timestamp())
    await h.push(row(3, pushed=7, holds=True, last_timestamp=start + 4), aggregation="last")
    [(_, request)] = h.calls("record_pending")
    assert (request.timestamp, request.value) == (start + 5, 3)


async def test_a_last_request_waits_while_its_stamp_is_further_ahead_than_stripe_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness(monkeypatch, meter=LAST_METER)
    this_hour = NOW.replace(minute=0)
    ahead = int(NOW.timestamp()) + 240  # the previous request took the last second Stripe takes now
    await h.push(row(3, pushed=7, holds=True, bucket=this_hour, last_timestamp=ahead), aggregation="last")
    assert h.log == []  # still due: a later round sends it


@pytest.mark.parametrize(
    ("anchor", "used"),
    [(None, 3599), (datetime(2026, 1, 20, 14, 17, tzinfo=UTC), 17 * 60 - 1)],
    ids=["hour's end", "period's end"],
)
async def test_an_hour_out_of_seconds_parks_and_shows(
    monkeypatch: pytest.MonkeyPatch, anchor: datetime | None, used: int
) -> None:
    """A newer value stamped at a second already used could lose to the older one at Stripe; it is
    logged, counted and parked. With a 14:17 billing anchor the 14:00 hour of the anchor day ends at
    14:17 in Stripe (the next period begins)."""
    from prometheus_client import REGISTRY

    def full() -> float:
        return REGISTRY.get_sample_value("stripemeter_stripe_last_hours_out_of_seconds_total") or 0.0

    h = Harness(monkeypatch, meter=LAST_METER)
    start, before = int(BUCKET.timestamp()), full()
    await h.push(row(3, pushed=7, holds=True, last_timestamp=start + used), aggregation="last", anchor=anchor)
    [(name, status, reason)] = h.log
    assert (name, status) == ("park", "parked") and "every second of the hour" in reason
    assert full() == before + 1
    if anchor is not None:  # one second earlier still fits
        h.log.clear()
        h.results = [SendResult("delivered")]
        hour = row(3, pushed=7, holds=True, last_timestamp=start + used - 1)
        await h.push(hour, aggregation="last", anchor=anchor)
        [(_, request)] = h.calls("record_pending")
        assert request.timestamp == start + used


@pytest.mark.parametrize(("summary", "verdict"), [([], "not landed"), ([0], "landed")])
async def test_an_old_last_request_of_0_is_judged_by_whether_the_hour_has_an_event(
    monkeypatch: pytest.MonkeyPatch, summary: list[int], verdict: str
) -> None:
    h = Harness(monkeypatch, meter=LAST_METER)
    h.summary = summary
    request = planned(0, pushed=0, meter=LAST_METER)
    await h.push(row(0, version=4, pending=request, pending_age_s=OLD), aggregation="last")
    if verdict == "landed":
        assert h.log == [("mark_delivered", request.identifier, 0, False, 4, None)]
    else:
        assert h.log == [("forget_pending", request.identifier, "not in Stripe's summary after 24 h")]


# --- the writer sees a mapping change at once ---------------------------------------------------------


def listed(status: str) -> dict[str, Any]:
    return {
        "id": "mtr_1", "event_name": "api_requests", "status": status,
        "default_aggregation": {"formula": "sum"}, "customer_mapping": {"event_payload_key": "customer"},
        "value_settings": {"event_payload_key": "units"},
    }  # fmt: skip


async def test_a_meter_fixed_a_moment_ago_is_read_again_before_a_counter_is_parked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The catalog is kept a minute; the operator reactivates the meter and saves the mapping again:
    the writer reads Stripe's meters again (at most once a second) instead of parking from its copy."""
    from stripemeter.adapters.stripe.meters import MeterCatalog

    stripe_meters, reads, clock = [listed("inactive")], [0], [100.0]

    async def call(fn: Any, params: dict[str, Any]) -> Any:
        reads[0] += 1
        return SimpleNamespace(data=list(stripe_meters), has_more=False)

    h = Harness(monkeypatch)
    client = SimpleNamespace(
        v1=SimpleNamespace(billing=SimpleNamespace(meters=SimpleNamespace(list_async=None)))
    )
    h.writer.meters = MeterCatalog(client, call, monotonic=lambda: clock[0])  # type: ignore[arg-type]
    await h.push(row(5))
    assert [call[:2] for call in h.log] == [("park", "parked")] and reads == [1]

    stripe_meters[:] = [listed("active")]  # fixed in Stripe; the mapping is saved again
    clock[0] += 2.0  # within the catalog's minute
    h.log.clear()
    h.results = [SendResult("delivered")]
    assert await h.push(row(5)) == 1
    assert reads == [2]

    # deactivated again: read when the catalog's minute is over; then many streams with a problem in
    # the same second cost one read
    stripe_meters[:] = [listed("inactive")]
    clock[0] += 61.0
    await h.push(row(5))
    assert reads == [3]
    clock[0] += 2.0
    h.log.clear()
    h.pushes.streams = [Stream([row(5)], "api_requests", "sum", "cus_1") for _ in range(5)]
    await h.writer.push_due(conn=None)  # type: ignore[arg-type]
    assert [call[:2] for call in h.log] == [("park", "parked")] * 5 and reads == [4]


# --- no stream stalls on a row owned by another writer --------------------------------------------------


async def test_an_hour_in_a_partition_held_by_another_writer_does_not_stall_the_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """usage.deltas gained partitions: the stream's older hour is in partition 1 (another writer's), its
    newer hour in partition 0 (this writer's). The newer hour is pushed; the older one left alone."""
    h = Harness(monkeypatch)
    h.results = [SendResult("delivered")]
    older = row(2, bucket=BUCKET - timedelta(hours=1), partition=1)
    newer = row(5)
    assert await h.push(older, newer) == 1
    [(_, request)] = h.calls("record_pending")
    assert request.timestamp == int(BUCKET.timestamp()) and request.value == 5
    assert h.pushes.fences == {FENCE}


# --- only permanent refusals park -------------------------------------------------------------------------


def refusals(kind: str, code: str) -> float:
    from prometheus_client import REGISTRY

    labels = {"kind": kind, "code": code}
    return REGISTRY.get_sample_value("stripemeter_stripe_refusals_total", labels) or 0.0


async def test_a_temporary_refusal_is_sent_again_unchanged_under_a_new_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A timestamp ahead of Stripe's clock (this one runs fast): not parked; the same request again,
    under a new idempotency key (Stripe may keep the refusal for the key), with backoff."""
    h = Harness(monkeypatch)
    before = refusals("temporary", "timestamp_in_future")
    h.results = [SendResult("refused_for_now", "Timestamp is too far in the future", "timestamp_in_future")]
    request = planned(5, pushed=2)
    await h.push(row(5, pushed=2))
    assert h.calls("mark_attempt", "refuse_pending", "park") == [
        ("mark_attempt", request.identifier, "Stripe refused it for now: Timestamp is too far in the future",
         True, "refused"),
    ]  # fmt: skip
    assert refusals("temporary", "timestamp_in_future") == before + 1


async def test_a_temporary_refusal_parks_after_an_hour(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch)
    before = refusals("expired", "lock_timeout")
    h.results = [SendResult("refused_for_now", "This object cannot be accessed right now", "lock_timeout")]
    request = planned(5, pushed=2)
    await h.push(row(5, pushed=2, version=4, pending=request, refused_ago_s=3601))
    [(name, identifier, reason)] = h.calls("mark_attempt", "refuse_pending", "park")
    assert (name, identifier) == ("refuse_pending", request.identifier)
    assert reason.startswith("Stripe refused it for over an hour") and "cannot be accessed" in reason
    assert refusals("expired", "lock_timeout") == before + 1


@pytest.mark.parametrize(
    ("code", "meter", "customers", "temporary"),
    [
        ("no_meter", METER, set(), True),  # Stripe's meters, read again, have it: created a moment ago
        ("no_meter", None, set(), False),
        ("archived_meter", replace(METER, active=False), set(), False),
        ("meter_event_customer_not_found", METER, {"cus_1"}, True),  # Stripe has it when asked: new
        ("meter_event_customer_not_found", METER, set(), False),  # it has not: a wrong customer id
        ("resource_missing", METER, set(), False),
        ("timestamp_too_far_in_past", METER, {"cus_1"}, False),
    ],
)
async def test_a_refusal_for_a_missing_object_is_temporary_only_while_stripe_has_it(
    monkeypatch: pytest.MonkeyPatch,
    code: str,
    meter: StripeMeterSpec | None,
    customers: set[str],
    temporary: bool,
) -> None:
    h = Harness(monkeypatch)
    before = refusals("temporary" if temporary else "permanent", code)
    h.results = [SendResult("refused", "refused", code)]
    request = planned(5, pushed=2)
    h.meters.meter, h.customers = meter, customers  # what Stripe says when asked again
    await h.push(row(5, pushed=2, version=4, pending=request))
    [(name, *_)] = h.calls("mark_attempt", "refuse_pending", "park")
    assert name == ("mark_attempt" if temporary else "refuse_pending")
    assert refusals("temporary" if temporary else "permanent", code) == before + 1
    assert h.customer_reads == (["cus_1"] if "customer" in code or code == "resource_missing" else [])
