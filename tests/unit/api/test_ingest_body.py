"""The ingest endpoint's pure parts: reading a body event by event, judging an event as intake will,
and packing accepted events into messages intake reads (at most 1 MiB and 1000 events each)."""

from __future__ import annotations

import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stripemeter.api.errors import ApiError
from stripemeter.api.ingest import MAX_EVENT_BYTES, chunk_by_size, judge, read_events
from stripemeter.api.ingest_body import Unreadable, decode_event, field_at, split_events
from stripemeter.schemas.events import MAX_BATCH, MAX_MESSAGE_BYTES, InvalidEvent, UsageEvent, decode_message

NOW_MS = int(time.time() * 1000)
EVENT = {"tenantId": "t", "metric": "m", "customerRef": "c", "quantity": 1, "ts": "2026-01-01T00:00:00Z"}


def test_split_events_cuts_each_event_out_exactly_as_sent() -> None:
    elements = [orjson.dumps(EVENT), b'{"a": NaN}', b'"\xed\xa0\x80"', b' [1, {"x": "\\ud800"}] ', b"1e400"]
    raw = b'{"other": {"events": 1}, "events": [' + b",".join(elements) + b'], "tail": [1, 2]}'
    outline, found = split_events(raw)
    assert outline == {"other": {"events": 1}, "events": [0] * 5, "tail": [1, 2]}
    assert found == [e.strip() for e in elements]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"nope",
        b"[]",
        b'{"events": [1,]}',
        b'{"events": [,1]}',
        b'{"events": [1 2]}',
        b'{"events": [1]',
        b'{"events": [1]} x',
        b'{"events": [1], "x": NaN}',
        b'{"x": "\xff", "events": [1]}',
        b'{"events": [' + b"[" * 2000 + b"]" * 2000 + b"]}",
    ],
)
def test_split_events_refuses_a_body_whose_outline_is_not_json(raw: bytes) -> None:
    with pytest.raises(Unreadable):
        split_events(raw)


@pytest.mark.parametrize(
    ("element", "field"),
    [
        (b'{"quantity": NaN, "ts": "x"}', "quantity"),
        (b'{"a": 1, "meta": {"b": [Infinity]}}', "meta"),
        (b'{"customerRef": "\\udc00"}', "customerRef"),
        (b'{"customerRef": "ok", "resourceId": "\xff"}', "resourceId"),
        (b'{"x": ' + b"[" * 1100 + b"]" * 1100 + b"}", "x"),
        (b'{"q": 1e400}', "q"),
        (b"NaN", None),
        (b'{"a": 1} x', None),
    ],
)
def test_decode_event_names_the_field_orjson_refuses(element: bytes, field: str | None) -> None:
    error = decode_event(element)
    assert isinstance(error, InvalidEvent) and (error.code, error.field) == ("not_json", field)
    assert (field or "not valid JSON") in error.message


def test_field_names_with_lone_surrogates_are_answered_writably() -> None:
    text = '{"a\udcff": NaN}'
    field = field_at(text, text.index("NaN"))
    assert field == "a\\udcff" and orjson.dumps(field)


def test_read_events_judges_each_event_when_orjson_refuses_the_body() -> None:
    raw = b'{"events": [' + orjson.dumps(EVENT) + b', {"quantity": NaN}]}'
    first, second = read_events(raw)
    assert first == EVENT and isinstance(second, InvalidEvent) and second.field == "quantity"
    with pytest.raises(ApiError) as refused:
        read_events(b'{"events": [' + b",".join([b"NaN"] * (MAX_BATCH + 1)) + b"]}")
    assert refused.value.field == "events"


def accepted(obj: object, now_ms: int) -> tuple[UsageEvent, bytes]:
    verdict = judge(obj, now_ms)
    assert not isinstance(verdict, InvalidEvent), verdict
    return verdict


def test_judge_writes_what_intake_reads_and_refuses_what_it_would_not() -> None:
    event, encoded = accepted(EVENT, NOW_MS)
    assert "idempotencyKey" not in orjson.loads(encoded)  # written as sent: intake derives the same key
    (read,) = decode_message(b"[" + encoded + b"]", NOW_MS)
    assert read == event and read.key_derived  # derived over HTTP as over Kafka
    deep = {**EVENT, "x": [[[[]]]]}
    for _ in range(300):
        deep["x"] = [deep["x"]]
    _, written = accepted(deep, NOW_MS)
    assert "x" not in orjson.loads(written)  # an unknown field orjson cannot write is left out
    pad = {**EVENT, "idempotencyKey": "k", "pad": ""}
    padding = "z" * (MAX_EVENT_BYTES - len(orjson.dumps(pad)))
    pad["pad"] = padding
    assert len(accepted(pad, NOW_MS)[1]) == MAX_EVENT_BYTES
    too_big = judge({**pad, "pad": padding + "z"}, NOW_MS)
    assert isinstance(too_big, InvalidEvent) and (too_big.code, too_big.field) == ("too_large", "pad")


def test_chunks_are_bounded_by_bytes_and_by_count() -> None:
    items = [b"x" * 300_000] * 7 + [b"y" * (MAX_EVENT_BYTES)] + [b"1"] * 2500
    chunks = chunk_by_size(items)
    assert all(len(chunk) <= MAX_MESSAGE_BYTES for chunk in chunks)
    assert all(len(orjson.loads(chunk)) <= MAX_BATCH for chunk in chunks if chunk.startswith(b"[1"))
    assert b"".join(c[1:-1].replace(b",", b"") for c in chunks) == b"".join(items)
    assert max(len(orjson.loads(c)) if c.startswith(b"[1") else 0 for c in chunks) == MAX_BATCH
    with pytest.raises(ValueError):
        chunk_by_size([b"z" * (MAX_EVENT_BYTES + 1)])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 300_000), min_size=1, max_size=50),
    st.integers(1, 10),
)
def test_chunks_fit_any_mix_of_sizes(sizes: list[int], max_events: int) -> None:
    items = [b'"' + b"z" * size + b'"' for size in sizes]
    chunks = chunk_by_size(items, max_events=max_events)
    assert all(len(chunk) <= MAX_MESSAGE_BYTES for chunk in chunks)
    assert [len(orjson.loads(c)) <= max_events for c in chunks] == [True] * len(chunks)
    assert sum(len(orjson.loads(c)) for c in chunks) == len(items)


def dumped(value: object) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits
        return b"0"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
).map(dumped)
REFUSED = [b"NaN", b"-Infinity", b'"\\ud800"', b'"\xff"', b"1e999", b'{"a": [NaN]}', b'{"q": "\xed\xa0\x80"}']


@settings(max_examples=200, deadline=None)
@given(st.lists(json_values | st.sampled_from(REFUSED), min_size=1, max_size=50))
def test_any_element_is_cut_out_and_judged_like_intake(raws: list[bytes]) -> None:
    """Valid JSON or something orjson refuses: each element is cut out whole, and read_events gives
    what orjson reads from it, or not_json exactly when intake's decode says not_json."""
    body = b'{"events": [' + b" , ".join(raws) + b"]}"
    events = read_events(body)
    assert len(events) == len(raws)
    for raw, event in zip(raws, events, strict=True):
        (intake,) = decode_message(b"[" + raw + b"]", NOW_MS)
        if isinstance(event, InvalidEvent):
            assert event.code == "not_json" and isinstance(intake, InvalidEvent) and intake.code == "not_json"
        else:
            assert event == orjson.loads(raw) and not (
                isinstance(intake, InvalidEvent) and intake.code == "not_json"
            )
