"""Property-based tests (Hypothesis): event validation, and metering streams against an oracle."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stripemeter.core.metering import Metering
from stripemeter.domain.policy import MetricPolicy, Policies
from stripemeter.schemas.dead_letters import dead_letter
from stripemeter.schemas.events import (
    InvalidEvent,
    UsageEvent,
    decode_message,
    derive_idempotency_key,
    parse_event,
)
from stripemeter.schemas.records import Source, encode_keyed
from tests.unit.core.test_metering import DictKV, total

NOW_MS = 1_794_988_800_000  # 2026-11-18T00:00:00Z
HOUR = 3_600_000
LATENESS = 48 * HOUR
SETTINGS = settings(
    max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)

# --- event validation ---------------------------------------------------------------------------

tenants = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
metrics = st.from_regex(r"[A-Za-z0-9._:-]{1,100}", fullmatch=True)
texts = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]), min_size=1, max_size=255
)
micros_values = st.integers(0, 10**14 - 1)  # up to 10^8 units: every spelling survives a float
offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
instants_ms = st.integers(0, NOW_MS + HOUR)


def quantity_json(micros: int, as_float: bool) -> bytes:
    whole, frac = divmod(micros, 1_000_000)
    if frac == 0 and not as_float:
        return str(whole).encode()
    return f"{whole}.{frac:06d}".rstrip("0").rstrip(".").encode() + (b".0" if frac == 0 else b"")


def rfc3339(ts_ms: int, tz: timezone, zulu: bool) -> str:
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC).astimezone(tz)
    text = moment.isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z") if zulu else text


@st.composite
def valid_events(draw: st.DrawFn) -> tuple[dict[str, Any], UsageEvent]:
    tenant, metric, customer = draw(tenants), draw(metrics), draw(texts)
    micros, ts_ms = draw(micros_values), draw(instants_ms)
    key = draw(st.none() | texts)
    resource = draw(st.none() | texts)
    # no lone surrogates: JSON from the wire cannot hold them (the decoder refuses them as not_json)
    small_text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]), max_size=8)
    meta = draw(
        st.none() | st.dictionaries(small_text, st.integers(-(2**63), 2**63 - 1) | small_text, max_size=4)
    )
    quantity = orjson.loads(quantity_json(micros, draw(st.booleans())))
    obj: dict[str, Any] = {
        "tenantId": tenant,
        "metric": metric,
        "customerRef": customer,
        "quantity": quantity,
        "ts": rfc3339(ts_ms, draw(offsets), draw(st.booleans())),
    }
    for name, value in (("idempotencyKey", key), ("resourceId", resource), ("meta", meta)):
        if value is not None:
            obj[name] = value
    expected_key = key or derive_idempotency_key(tenant, metric, customer, resource, ts_ms, micros)
    expected = UsageEvent(tenant, metric, customer, micros, ts_ms, expected_key, key is None, resource, meta)
    return obj, expected


@SETTINGS
@given(valid_events())
def test_valid_events_are_accepted_with_exact_micros(case: tuple[dict[str, Any], UsageEvent]) -> None:
    obj, expected = case
    assert parse_event(obj, NOW_MS) == expected
    # the same event as a Kafka message, alone or in an array, decodes the same
    assert decode_message(orjson.dumps(obj), NOW_MS) == [expected]
    assert decode_message(orjson.dumps([obj, obj]), NOW_MS) == [expected, expected]


BAD_VALUES: dict[str, list[Any]] = {
    "tenantId": [None, "", "bad tenant!", "t\n", "x" * 65, 5, ["t"]],
    "metric": [None, "", "two words", "m\n", "x" * 101, 1.5, {}],
    "customerRef": [None, "", "x" * 256, "a\x00b", 7, True],
    "quantity": [None, -1, -0.5, "1", True, float("inf"), float("nan"), 0.1234567, 10**14, {}],
    "ts": [None, "2026-11-20T14:03:11", "yesterday", "2026-13-01T00:00:00Z", 1_700_000_000, "FUTURE"],
    "idempotencyKey": ["", "k" * 256, 5, "k\x00"],
    "resourceId": ["", 5, "r\x00"],
    "meta": ["x", [], 3, {"x": "y" * 5000}, {"x": "\x00"}],
}


@SETTINGS
@given(valid_events(), st.sampled_from(sorted(BAD_VALUES)), st.data())
def test_one_bad_field_is_rejected_naming_that_field(
    case: tuple[dict[str, Any], UsageEvent], field: str, data: st.DataObject
) -> None:
    obj = dict(case[0])
    bad = data.draw(st.sampled_from(BAD_VALUES[field]))
    if bad == "FUTURE":
        bad = rfc3339(NOW_MS + HOUR + 1000, UTC, True)
    if bad is None:
        obj.pop(field, None)
    else:
        obj[field] = bad
    with pytest.raises(InvalidEvent) as rejected:
        parse_event(obj, NOW_MS)
    assert rejected.value.field == field
    assert field in rejected.value.message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        name: json_values
        for name in (
            "tenantId",
            "metric",
            "customerRef",
            "quantity",
            "ts",
            "idempotencyKey",
            "resourceId",
            "meta",
        )
    },
)


@SETTINGS
@given(json_values | event_like)
def test_arbitrary_json_is_an_event_or_an_invalid_event_never_another_error(value: Any) -> None:
    try:
        parse_event(value, NOW_MS)
    except InvalidEvent as error:
        assert error.code and error.message


@SETTINGS
@given(st.binary(max_size=200) | json_values.map(orjson.dumps))
def test_any_message_decodes_to_results_and_every_rejection_has_a_dead_letter(raw: bytes) -> None:
    results = decode_message(raw, NOW_MS)
    assert results
    for result in results:
        if isinstance(result, InvalidEvent):
            record = orjson.loads(dead_letter(result, "usage.events", 0, 7, raw))
            assert record["error"]["code"] and "raw" in record


# --- duplicate / late / out-of-order streams against an oracle -----------------------------------

CUSTOMERS = ("c1", "c2")
KEYS = tuple(f"k{i}" for i in range(8))


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[tuple[str, str, int, int]], list[tuple[str, list[int]]]]:
    """Events (key, customer, micros, ts) and deliveries: ``("new", event indexes)`` for a keyed
    message, ``("redeliver", j)`` for message j read again at its offset after a crash, ``("resend", j)``
    for intake re-sending message j's inputs at a new offset."""
    n = draw(st.integers(1, 40))
    events = [
        (
            draw(st.sampled_from(KEYS)),
            draw(st.sampled_from(CUSTOMERS)),
            draw(st.integers(0, 5_000_000)),
            NOW_MS + draw(st.integers(-150 * 60, 150 * 60)) * 60_000,  # minutes around now
        )
        for _ in range(n)
    ]
    deliveries: list[tuple[str, Any]] = []
    start, messages = 0, 0
    while start < n:
        size = draw(st.integers(1, 5))
        deliveries.append(("new", list(range(start, min(n, start + size)))))
        start, messages = start + size, messages + 1
        while messages and draw(st.integers(0, 4)) == 0:
            deliveries.append(
                (draw(st.sampled_from(["redeliver", "resend"])), draw(st.integers(0, messages - 1)))
            )
    return events, deliveries


def oracle(events: list[tuple[str, str, int, int]], order: list[int]) -> tuple[list[str], dict[Any, int]]:
    """First occurrence of a key of a customer counts unless it is too late against the stream's
    watermark then (a key is one event per tenant and customer)."""
    counted: set[tuple[str, str]] = set()
    watermark: dict[str, int] = {}
    outcomes: list[str] = []
    totals: defaultdict[tuple[str, int], int] = defaultdict(int)
    for i in order:
        key, customer, micros, ts = events[i]
        if (key, customer) in counted:
            outcomes.append("duplicate")
        elif customer in watermark and ts < watermark[customer] - LATENESS:
            outcomes.append("late")
        else:
            outcomes.append("counted")
            counted.add((key, customer))
            watermark[customer] = max(ts, watermark.get(customer, ts))
            totals[(customer, ts - ts % HOUR)] += micros
    return outcomes, {k: v for k, v in totals.items() if v}


@SETTINGS
@given(streams())
def test_metering_matches_the_oracle_under_duplicates_lateness_and_redelivery(
    stream: tuple[list[tuple[str, str, int, int]], list[tuple[str, Any]]],
) -> None:
    events, deliveries = stream
    meter = Metering(DictKV(), DictKV(), DictKV(), Policies(MetricPolicy(lateness_ms=LATENESS), {}))
    items = [
        encode_keyed(UsageEvent("t", "m", c, micros, ts, key, False, None, None), Source(0, i, 0))
        for i, (key, c, micros, ts) in enumerate(events)
    ]
    messages: list[tuple[int, list[int]]] = []  # keyed offset, event indexes
    first: list[int] = []
    first_outcome: dict[int, str] = {}
    counted_keys: set[tuple[str, str]] = set()
    next_offset = 0
    for kind, arg in deliveries:
        if kind == "new":
            offset, indexes = next_offset, arg
            messages.append((offset, indexes))
            next_offset += 1
        elif kind == "redeliver":
            offset, indexes = messages[arg]
        else:
            offset, indexes = next_offset, messages[arg][1]
            next_offset += 1
        meter.process(0, offset, [items[i] for i in indexes])
        ledger = meter.take_outcomes().ledger
        rows = {(row[11], row[12]): row[0] for row in ledger}  # source offset in usage.events -> outcome
        assert len(rows) == len(ledger)
        for i in indexes:
            if kind == "new":
                first.append(i)
                first_outcome[i] = rows[(i, 0)]
                if rows[(i, 0)] == "counted":
                    counted_keys.add((events[i][0], events[i][1]))
            elif kind == "resend" and first_outcome[i] == "counted":
                assert (i, 0) not in rows  # intake re-sent it: already handled, no trace
            else:
                again = rows[(i, 0)]  # the ledger keeps the first row of a source; counters never change
                # a too-late event read again after its key was counted since is called a duplicate
                late_then_counted = (
                    first_outcome[i] == "late" and (events[i][0], events[i][1]) in counted_keys
                )
                assert again == first_outcome[i] or (late_then_counted and again == "duplicate")

    expected_outcomes, expected_totals = oracle(events, first)
    assert [first_outcome[i] for i in first] == expected_outcomes
    actual = {}
    counters = meter.counters
    assert isinstance(counters, DictKV)
    for customer in CUSTOMERS:
        for bucket in {ts - ts % HOUR for _k, _c, _m, ts in events}:
            value = total(counters, bucket, customer=customer)
            if value:
                actual[(customer, bucket)] = value
    assert actual == expected_totals
