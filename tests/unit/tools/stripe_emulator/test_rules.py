"""Pure parts of the Stripe emulator: form decoding, pagination, value and time rules, summaries, faults."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from stripemeter.tools.stripe_emulator.faults import Faults
from stripemeter.tools.stripe_emulator.meter_events import MeterEvent, parse_timestamp, parse_value
from stripemeter.tools.stripe_emulator.ops_budget import OpsBudget
from stripemeter.tools.stripe_emulator.pagination import paginate
from stripemeter.tools.stripe_emulator.stripe_errors import StripeApiError
from stripemeter.tools.stripe_emulator.summaries import SummaryQuery, aggregate, parse_query, summarize
from stripemeter.tools.stripe_emulator.wire import decode_form

NOW = 1_750_000_000


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([("a", "1")], {"a": "1"}),
        ([("payload[stripe_customer_id]", "cus_x"), ("payload[value]", "3")],
         {"payload": {"stripe_customer_id": "cus_x", "value": "3"}}),
        ([("default_aggregation[formula]", "sum")], {"default_aggregation": {"formula": "sum"}}),
        ([("expand[0]", "a"), ("expand[1]", "b")], {"expand": ["a", "b"]}),
        ([("expand[]", "a"), ("expand[]", "b")], {"expand": ["a", "b"]}),
        ([("a[b][c]", "1")], {"a": {"b": {"c": "1"}}}),
        ([("metadata[k]", "")], {"metadata": {"k": ""}}),
        ([("0", "a"), ("1", "b")], {"0": "a", "1": "b"}),  # the body itself is never a list
        ([], {}),
    ],
)  # fmt: skip
def test_decode_form(pairs: list[tuple[str, str]], expected: dict[str, Any]) -> None:
    assert decode_form(pairs) == expected


def test_decode_form_refuses_conflicting_shapes() -> None:
    with pytest.raises(StripeApiError):
        decode_form([("a", "1"), ("a[b]", "2")])


@pytest.mark.parametrize(
    ("params", "ids", "has_more"),
    [
        ({}, ["o9", "o8", "o7", "o6", "o5", "o4", "o3", "o2", "o1", "o0"], False),
        ({"limit": "3"}, ["o9", "o8", "o7"], True),
        ({"limit": "3", "starting_after": "o7"}, ["o6", "o5", "o4"], True),
        ({"limit": "5", "starting_after": "o4"}, ["o3", "o2", "o1", "o0"], False),
        ({"limit": "2", "ending_before": "o7"}, ["o9", "o8"], False),
        ({"limit": "2", "ending_before": "o4"}, ["o6", "o5"], True),
    ],
)
def test_paginate(params: dict[str, str], ids: list[str], has_more: bool) -> None:
    items = [{"id": f"o{i}"} for i in reversed(range(10))]
    page = paginate(items, params, "/v1/things")
    assert [o["id"] for o in page["data"]] == ids
    assert page["has_more"] is has_more
    assert page["object"] == "list" and page["url"] == "/v1/things"


@pytest.mark.parametrize(
    "params", [{"limit": "0"}, {"limit": "101"}, {"limit": "x"}, {"starting_after": "nope"}]
)
def test_paginate_refuses_bad_cursors(params: dict[str, str]) -> None:
    with pytest.raises(StripeApiError) as caught:
        paginate([{"id": "a"}], params, "/v1/x")
    assert caught.value.status == 400
    assert caught.value.param in ("limit", "starting_after")


@pytest.mark.parametrize(
    ("raw", "value"), [("0", 0), ("25", 25), ("-7", -7), ("999999999999999", 10**15 - 1)]
)
def test_parse_value_accepts_whole_numbers(raw: str, value: int) -> None:
    assert parse_value(raw, "payload[value]") == value


@pytest.mark.parametrize("raw", ["1.5", "abc", "", "1e3", "1000000000000000", "--1"])
def test_parse_value_refuses(raw: str) -> None:
    with pytest.raises(StripeApiError) as caught:
        parse_value(raw, "payload[value]")
    assert caught.value.param == "payload[value]"


@pytest.mark.parametrize(
    ("offset", "ok"),
    [(0, True), (-35 * 86400, True), (-35 * 86400 - 1, False), (300, True), (301, False)],
)
def test_parse_timestamp_window(offset: int, ok: bool) -> None:
    if ok:
        assert parse_timestamp(str(NOW + offset), NOW) == NOW + offset
    else:
        with pytest.raises(StripeApiError) as caught:
            parse_timestamp(str(NOW + offset), NOW)
        assert caught.value.param == "timestamp"


def _event(ts: int, value: int, customer: str = "cus_a") -> MeterEvent:
    return MeterEvent("mtr_1", "calls", f"id{ts}-{value}", customer, value, {}, ts, ts)


@pytest.mark.parametrize(("formula", "expected"), [("sum", 6.0), ("count", 3.0), ("last", 2.0)])
def test_aggregate(formula: str, expected: float) -> None:
    events = [_event(100, 1), _event(300, 2), _event(200, 3)]
    assert aggregate(formula, events) == expected


def test_last_breaks_a_timestamp_tie_against_the_sender() -> None:
    """Stripe does not say how it breaks a tie; the emulator keeps the earlier received, so only a
    later timestamp makes a value the newest."""
    assert aggregate("last", [_event(100, 1), _event(100, 9)]) == 1.0
    assert aggregate("last", [_event(100, 1), _event(101, 9), _event(101, 4)]) == 9.0


def test_summarize_groups_by_hour_newest_first() -> None:
    day = 1_749_945_600
    meter = {"id": "mtr_1", "default_aggregation": {"formula": "sum"}}
    events = [
        _event(day + 10, 1),
        _event(day + 3600 + 5, 2),
        _event(day + 3600 + 50, 3),
        _event(day + 20, 4, "cus_b"),
    ]
    query = SummaryQuery("cus_a", day, day + 86400, "hour")
    result = summarize(meter, events, query)
    assert [(s["start_time"], s["end_time"], s["aggregated_value"]) for s in result] == [
        (day + 3600, day + 7200, 5.0),
        (day, day + 3600, 1.0),
    ]
    assert all(s["id"].startswith("mtrusg_") for s in result)
    assert summarize(meter, events, query)[0]["id"] == result[0]["id"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"start_time": "60", "end_time": "120"}, "customer"),
        ({"customer": "c", "end_time": "120"}, "start_time"),
        ({"customer": "c", "start_time": "61", "end_time": "120"}, "start_time"),
        ({"customer": "c", "start_time": "60", "end_time": "121"}, "end_time"),
        ({"customer": "c", "start_time": "120", "end_time": "60"}, "end_time"),
        ({"customer": "c", "start_time": "60", "end_time": "7200", "value_grouping_window": "hour"},
         "start_time"),
        ({"customer": "c", "start_time": "0", "end_time": "7260", "value_grouping_window": "hour"},
         "end_time"),
        ({"customer": "c", "start_time": "3600", "end_time": "86400", "value_grouping_window": "day"},
         "start_time"),
        ({"customer": "c", "start_time": "0", "end_time": "60", "value_grouping_window": "week"},
         "value_grouping_window"),
    ],
)  # fmt: skip
def test_parse_query_names_the_bad_param(params: dict[str, str], param: str) -> None:
    with pytest.raises(StripeApiError) as caught:
        parse_query(params)
    assert caught.value.param == param


def test_faults_are_taken_per_stage_and_scope() -> None:
    faults = Faults()
    faults.update(
        {"drop_connections": 1, "rate_limit": 1, "server_errors": 1, "landed_server_errors": 1,
         "lost_responses": 1, "path_prefix": "/v1/billing"}
    )  # fmt: skip
    takes = [
        faults.take_drop,
        faults.take_rate_limit,
        faults.take_server_error,
        faults.take_landed_server_error,
        faults.take_lost_response,
    ]
    assert not any(take("/v1/customers") for take in takes)
    assert not any(take("/_emulator/faults") for take in takes)
    assert all(take("/v1/billing/meter_events") for take in takes)
    assert not any(take("/v1/billing/meter_events") for take in takes)


def test_fault_rates_and_reset_to_the_settings_given() -> None:
    faults = Faults(ops_per_second=1000)
    faults.update({"server_error_rate": 1.0, "lost_response_rate": 1.0, "ops_per_second": 5})
    assert all(faults.take_server_error("/v1/x") and faults.take_lost_response("/v1/x") for _ in range(5))
    assert faults.server_errors == 0 and faults.ops_per_second == 5
    faults.update({"async_validation": True})
    faults.reset()
    assert faults.as_dict() == {**Faults().as_dict(), "ops_per_second": 1000}
    assert faults.async_validation is False


@pytest.mark.parametrize(
    "changes",
    [{"async_validation": 1}, {"lost_response_rate": 2}, {"lost_responses": 0.5}, {"ops_per_second": -1}],
)
def test_faults_update_refuses_bad_settings(changes: dict[str, Any]) -> None:
    faults = Faults()
    with pytest.raises(ValueError):
        faults.update({"latency": 1, **changes})
    assert faults.latency == 0  # nothing applied


def test_ops_budget_is_a_one_second_bucket() -> None:
    now = [100.0]
    budget = OpsBudget(clock=lambda: now[0])
    assert all(budget.take(25) for _ in range(25))
    assert not budget.take(25)
    now[0] += 0.2  # 5 more operations
    assert sum(budget.take(25) for _ in range(10)) == 5
    now[0] += 10  # it holds at most one second
    assert sum(budget.take(25) for _ in range(30)) == 25
    assert all(budget.take(0) for _ in range(1000))  # 0: unlimited


class OldOpsBudget:
    """The emulator's budget before it was built on ``domain.rates.TokenBucket``, as it was."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._tokens: float | None = None
        self._updated = 0.0

    def take(self, rate: float) -> bool:
        if rate <= 0:
            return True
        now = self.clock()
        if self._tokens is None:
            self._tokens = float(rate)
        else:
            self._tokens = min(float(rate), self._tokens + (now - self._updated) * rate)
        self._updated = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def test_ops_budget_decides_as_before_also_when_the_rate_changes() -> None:
    now = [100.0]
    old, new = OldOpsBudget(lambda: now[0]), OpsBudget(clock=lambda: now[0])
    rng = random.Random(25)
    rate = 25.0
    for i in range(20_000):
        if i % 500 == 0:  # the ops_per_second fault, set while requests arrive
            rate = rng.choice([25.0, 100.0, 5.0, 0.0, 0.5, 1000.0])
        now[0] += rng.expovariate(rate * 1.5 if rate > 0 else 10.0) if rng.random() < 0.8 else 0.0
        assert new.take(rate) == old.take(rate), (i, rate, now[0])


def _pre(ts: int, value: int, customer: str = "cus_a") -> MeterEvent:
    return MeterEvent("mtr_1", "calls", f"id{ts}-{value}", customer, value, {}, ts, 0)


@pytest.mark.parametrize(
    ("window", "events", "expected"),
    [
        # hour: the newest per customer and hour counts; a tie keeps the earlier received
        ("hour", [_pre(10, 1), _pre(3000, 2), _pre(20, 4), _pre(3700, 8)], [(0, 2.0), (3600, 8.0)]),
        ("hour", [_pre(10, 1), _pre(10, 5)], [(0, 1.0)]),
        ("hour", [_pre(50, 3), _pre(10, 5)], [(0, 3.0)]),
        ("hour", [_pre(10, 3), _pre(20, 5, "cus_b")], [(0, 3.0)]),
        # day: one value for the whole UTC day
        ("day", [_pre(10, 1), _pre(3000, 2), _pre(7300, 4)], [(7200, 4.0), (0, 0.0)]),
    ],
)
def test_event_time_window_keeps_the_newest_event(
    window: str, events: list[MeterEvent], expected: list[tuple[int, float]]
) -> None:
    meter = {"id": "mtr_1", "default_aggregation": {"formula": "sum"}, "event_time_window": window}
    query = SummaryQuery("cus_a", 0, 86400, "hour")
    found = {s["start_time"]: s["aggregated_value"] for s in summarize(meter, events, query)}
    assert [(start, found.get(start, 0.0)) for start, _ in expected] == expected


@pytest.mark.parametrize("changes", [{"nope": 1}, {"rate_limit": -1}, {"rate_limit": 1.5}, {"latency": "x"}])
def test_faults_update_refuses_nonsense(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Faults().update(changes)
