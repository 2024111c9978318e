"""POST /v1/events/ingest says what will happen: each event gets the verdict intake's own decode path
gives the same bytes, what it accepts is counted through a real worker (or found a duplicate), nothing
it accepts is dead-lettered, the messages it writes fit what intake reads, and no body gets a 500.

Each case is one event as a producer would write it; intake's verdict is ``decode_message`` on it as
an element of an array message (the form the endpoint writes). The cases go in one body (a NaN in one
event makes orjson refuse the whole body: the others are still judged one by one) and each alone.
"""

from __future__ import annotations

import gzip
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from stripemeter.domain.config import Settings
from stripemeter.domain.units import MICROS
from stripemeter.schemas.events import MAX_BATCH, MAX_MESSAGE_BYTES, InvalidEvent, decode_message
from stripemeter.schemas.topics import TopicNames
from tests.integration.client import counters_of, eventually, outcomes_of, read_topic
from tests.integration.harness import ApiClient, StartWorker

NOW = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def ev(tenant: str, customer: str, **fields: Any) -> dict[str, Any]:
    return {"tenantId": tenant, "metric": "requests", "customerRef": customer, "quantity": 1, "ts": NOW,
            "idempotencyKey": f"k-{customer}", **fields}  # fmt: skip


def spliced(event: dict[str, Any], name: str, fragment: bytes) -> bytes:
    """``event`` as JSON with one more member written as raw bytes (what orjson would not write)."""
    return (
        orjson.dumps({k: v for k, v in event.items() if k != name})[:-1]
        + b',"'
        + name.encode()
        + b'":'
        + fragment
        + b"}"
    )


def sized(event: dict[str, Any], total: int) -> bytes:
    """``event`` with an unknown ``pad`` field making it exactly ``total`` bytes of JSON."""
    base = len(orjson.dumps({**event, "pad": ""}))
    return orjson.dumps({**event, "pad": "z" * (total - base)})


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def cases(tenant: str) -> list[tuple[str, bytes, str | None, str | None, int]]:
    """(what, event bytes, expected code (None: accepted), expected field, micro-units it counts)."""

    def e(customer: str, **f: Any) -> dict[str, Any]:
        return ev(tenant, customer, **f)

    def n(customer: str, name: str, fragment: bytes) -> bytes:
        return spliced(e(customer), name, fragment)

    meta_4k = {"note": "m" * (4096 - len(orjson.dumps({"note": ""})))}
    return [
        # accepted: counted through the worker
        ("unknown field nested 300 deep", n("c-deep", "x", b"[" * 300 + b"]" * 300), None, None, MICROS),
        ("event of exactly 1 MiB - 2 bytes", sized(e("c-big"), MAX_MESSAGE_BYTES - 2), None, None, MICROS),
        ("meta of exactly 4096 bytes", orjson.dumps(e("c-meta", meta=meta_4k)), None, None, MICROS),
        ("largest whole quantity 9223372036854", n("c-max-int", "quantity", b"9223372036854"), None, None,
         9_223_372_036_854_000_000),
        # a JSON number is a double to intake and to the endpoint alike: 9223372036854.775807 reads as
        # 9223372036854.775 (so does .775808, beyond the maximum), which fits
        ("quantity 9223372036854.775807", n("c-max-dec", "quantity", b"9223372036854.775807"), None, None,
         9_223_372_036_854_775_000),
        ("quantity 9223372036854.775808", n("c-over-dec", "quantity", b"9223372036854.775808"), None, None,
         9_223_372_036_854_775_000),
        ("surrogate pair (emoji)", n("c-emoji", "resourceId", b'"r\\ud83d\\ude00"'), None, None, MICROS),
        ("NUL in an unknown field", n("c-nul-x", "x", b'"a\\u0000b"'), None, None, MICROS),
        ("2^64 in an unknown field", n("c-u64", "x", b"18446744073709551616"), None, None, MICROS),
        ("duplicate member, the last valid", n("c-dup", "quantity", b"-1,\"quantity\":2"), None, None,
         2 * MICROS),
        # rejected: the same code as intake, naming the field
        ("meta nested 300 deep", n("r-meta-deep", "meta", nested(300)), "unwritable", "meta", 0),
        ("event of 1.1 MiB", sized(e("r-1.1mib"), 1153434), "too_large", "pad", 0),
        ("event of 1 MiB - 1 byte", sized(e("r-1mib"), MAX_MESSAGE_BYTES - 1), "too_large", "pad", 0),
        ("meta of 4097 bytes", orjson.dumps(e("r-meta", meta={**meta_4k, "note": meta_4k["note"] + "m"})),
         "too_large", "meta", 0),
        ("lone high surrogate escape", n("r-sur1", "resourceId", b'"\\ud800"'), "not_json", "resourceId", 0),
        ("lone low surrogate escape in meta", n("r-sur2", "meta", b'{"a":"\\udc00"}'), "not_json", "meta", 0),
        ("surrogate encoded as UTF-8 bytes", n("r-sur3", "resourceId", b'"\xed\xa0\x80"'), "not_json",
         "resourceId", 0),
        ("invalid UTF-8 byte", n("r-utf8", "resourceId", b'"\xff"'), "not_json", "resourceId", 0),
        ("quantity NaN", n("r-nan", "quantity", b"NaN"), "not_json", "quantity", 0),
        ("quantity Infinity", n("r-inf", "quantity", b"Infinity"), "not_json", "quantity", 0),
        ("quantity -Infinity", n("r-ninf", "quantity", b"-Infinity"), "not_json", "quantity", 0),
        ("NaN in an unknown field", n("r-nan-x", "x", b"[1, NaN]"), "not_json", "x", 0),
        ("quantity 1e400", n("r-1e400", "quantity", b"1e400"), "not_json", "quantity", 0),
        ("quantity of 5000 digits", n("r-digits", "quantity", b"9" * 5000), "not_json", "quantity", 0),
        ("raw control character in a string", n("r-ctl", "resourceId", b'"a\nb"'), "not_json",
         "resourceId", 0),
        # doubles are 0.002 apart there: the next one above 9223372036854.775 is .777
        ("quantity 9223372036854.777", n("r-q1", "quantity", b"9223372036854.777"), "invalid_value",
         "quantity", 0),
        ("quantity 9223372036855", n("r-q2", "quantity", b"9223372036855"), "invalid_value", "quantity", 0),
        ("quantity 2^63 - 1", n("r-q3", "quantity", b"9223372036854775807"), "invalid_value", "quantity", 0),
        ("quantity 2^64", n("r-q4", "quantity", b"18446744073709551616"), "invalid_value", "quantity", 0),
        ("quantity 1e-7", n("r-q5", "quantity", b"1e-7"), "invalid_value", "quantity", 0),
        ("quantity true", n("r-q6", "quantity", b"true"), "wrong_type", "quantity", 0),
        ("NUL in customerRef", orjson.dumps(e("r-nul\x00")), "invalid_value", "customerRef", 0),
        ("NUL in meta", orjson.dumps(e("r-nul-meta", meta={"a": "\x00"})), "invalid_value", "meta", 0),
        ("ts more than 1 h ahead", orjson.dumps(e("r-ts", ts="2999-01-01T00:00:00Z")), "ts_in_future",
         "ts", 0),
        ("no tenantId", orjson.dumps({"metric": "m", "customerRef": "c", "quantity": 1, "ts": NOW}),
         "missing_field", "tenantId", 0),
        ("a number", b"1", "not_object", None, 0),
        ("a string", b'"event"', "not_object", None, 0),
        ("null", b"null", "not_object", None, 0),
        ("an array holding an event", b"[" + orjson.dumps(e("r-arr")) + b"]", "not_object", None, 0),
    ]  # fmt: skip


def intake_verdict(raw: bytes, now_ms: int) -> tuple[str | None, str | None]:
    """(code, field) intake gives ``raw`` read as an element of a usage.events array; (None, None): valid."""
    (result,) = decode_message(b"[" + raw + b"]", now_ms)
    return (result.code, result.field) if isinstance(result, InvalidEvent) else (None, None)


def endpoint_verdict(result: dict[str, Any]) -> tuple[str | None, str | None]:
    if result["status"] == "accepted":
        return None, None
    return result["error"]["code"], result["error"].get("field")


async def post(api: ApiClient, raw_events: list[bytes]) -> dict[str, Any]:
    body = b'{"events": [' + b",".join(raw_events) + b"]}"
    response = await api.post("/v1/events/ingest", data=body)
    assert response.status == 202, await response.text()
    result: dict[str, Any] = await response.json()
    return result


async def test_every_event_gets_intakes_verdict_and_what_is_accepted_counts(
    env: Settings, start_worker: StartWorker, api: ApiClient
) -> None:
    start_worker().wait_ready()
    tenant = f"iv-{uuid.uuid4().hex[:6]}"
    table = cases(tenant)
    now_ms = int(time.time() * 1000)
    for what, raw, code, _field, _micros in table:  # the cases say what intake says
        assert intake_verdict(raw, now_ms)[0] == code, what

    together = await post(api, [raw for _, raw, *_ in table])
    assert [r["index"] for r in together["results"]] == list(range(len(table)))
    tried = []
    for (what, raw, code, field, _), result in zip(table, together["results"], strict=True):
        alone = (await post(api, [raw]))["results"][0]
        for answer in (result, alone):
            assert endpoint_verdict(answer) == (code, field), (what, answer)
            if code is not None:
                assert answer["error"]["message"], what
        tried.append(f"{what}: {code or 'accepted'}{f' ({field})' if field else ''}")
    print("\n".join(tried))
    accepted = sum(1 for *_, code, _f, _m in table if code is None)
    assert together["accepted"] == accepted and together["rejected"] == len(table) - accepted

    expected: dict[str, int] = {}
    for _, raw, code, _, micros in table:
        if code is None:
            customer = orjson.loads(raw)["customerRef"]
            expected[customer] = expected.get(customer, 0) + micros

    async def counted() -> bool:
        totals: dict[str, int] = {}
        for (_metric, customer, _bucket), micros in (await counters_of(env, tenant)).items():
            totals[customer] = totals.get(customer, 0) + micros
        return totals == expected

    await eventually(counted, what="every accepted event counted once")
    # each accepted event was sent twice (in the body of all cases and alone): counted, then a duplicate

    async def ledger() -> bool:
        return await outcomes_of(env, tenant) == {"counted": accepted, "duplicate": accepted}

    await eventually(ledger, what="counted and duplicate rows in the ledger")
    names = TopicNames(env.topic_prefix, env.app_id)
    assert await read_topic(env, names.dlq, expect=1, timeout=3) == []  # intake dead-lettered nothing
    written = await read_topic(env, names.events, expect=10_000, timeout=5)
    assert sum(len(orjson.loads(m.value)) for m in written) == 2 * accepted
    assert max(len(m.value) for m in written) <= MAX_MESSAGE_BYTES


async def test_a_full_body_at_the_contracts_maxima_is_written_in_messages_intake_reads(
    env: Settings, start_worker: StartWorker, api: ApiClient
) -> None:
    """1000 events with 4 KiB meta each (about 4.3 MB): every one accepted, written in messages of at
    most 1 MiB (not one message of 1000), and counted."""
    worker = start_worker()
    worker.wait_ready()
    tenant = f"im-{uuid.uuid4().hex[:6]}"
    meta = {"note": "m" * (4096 - len(orjson.dumps({"note": ""})))}
    events = [ev(tenant, f"c{i % 7}", idempotencyKey=f"full-{i}", quantity=i + 1, meta=meta)
              for i in range(MAX_BATCH)]  # fmt: skip
    started = time.perf_counter()
    response = await api.post("/v1/events/ingest", data=orjson.dumps({"events": events}))
    elapsed = time.perf_counter() - started
    result = await response.json()
    assert response.status == 202 and result["accepted"] == MAX_BATCH, result.get("results", [])[:3]
    names = TopicNames(env.topic_prefix, env.app_id)
    messages = await read_topic(env, names.events, expect=MAX_BATCH, timeout=5)
    sizes = sorted(len(m.value) for m in messages)
    by_key: dict[bytes, list[int]] = {}  # one customer's events a message, keyed tenantId:customerRef
    for m in messages:
        by_key.setdefault(m.key, []).append(len(m.value))
    assert set(by_key) == {f"{tenant}:c{i}".encode() for i in range(7)}
    for key_sizes in by_key.values():  # as few messages as 1 MiB allows
        assert max(key_sizes) <= MAX_MESSAGE_BYTES
        assert len(key_sizes) == -(-sum(key_sizes) // MAX_MESSAGE_BYTES), key_sizes
    assert sum(len(orjson.loads(m.value)) for m in messages) == MAX_BATCH
    print(f"1000 events of 4 KiB meta: answered in {elapsed:.3f}s, written as messages of {sizes} bytes")

    async def counted() -> bool:
        return sum((await counters_of(env, tenant)).values()) == sum(range(1, MAX_BATCH + 1)) * MICROS

    await eventually(counted, what="the 1000 events counted")
    assert await read_topic(env, names.dlq, expect=1, timeout=3) == []
    assert worker.proc is not None and worker.proc.poll() is None


async def test_no_body_gets_a_500(api: ApiClient) -> None:
    valid = orjson.dumps(ev("nb", "c"))
    deep_event = b'{"tenantId":"nb","x":' + b"[" * 1100 + b"]" * 1100 + b"}"
    bodies: list[tuple[str, bytes, dict[str, str], int, str | None]] = [  # what, body, headers, status, field
        ("empty", b"", {}, 400, "body"),
        ("not JSON", b"nope", {}, 400, "body"),
        ("truncated", b'{"events": [' + valid, {}, 400, "body"),
        ("an array", b"[" + valid + b"]", {}, 400, "body"),
        ("trailing comma", b'{"events": [' + valid + b",]}", {}, 400, "body"),
        ("missing element", b'{"events": [,' + valid + b"]}", {}, 400, "body"),
        ("no comma", b'{"events": [' + valid + b" " + valid + b"]}", {}, 400, "body"),
        ("events NaN", b'{"events": NaN}', {}, 400, "body"),
        ("NaN outside the events", b'{"events": [' + valid + b'], "x": NaN}', {}, 400, "body"),
        ("invalid UTF-8 outside the events", b'{"x": "\xff", "events": [' + valid + b"]}", {}, 400, "body"),
        ("data after the body", b'{"events": [' + valid + b"]} x", {}, 400, "body"),
        ("byte order mark", b"\xef\xbb\xbf" + b'{"events": [' + valid + b"]}", {}, 400, "body"),
        ("100,000 open brackets", b"[" * 100_000, {}, 400, "body"),
        ("events nested 100,000 deep", b'{"events":' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}, 400,
         "body"),
        ("an event nested 1100 deep", b'{"events": [' + valid + b"," + deep_event + b"]}", {}, 400, "body"),
        ("events an object", b'{"events": {"a": 1}}', {}, 400, "events"),
        ("no events", b'{"events": []}', {}, 400, "events"),
        ("1001 events", orjson.dumps({"events": [{}] * 1001}), {}, 400, "events"),
        ("1001 events, one NaN", b'{"events": [' + b",".join([b"NaN"] + [b"{}"] * 1000) + b"]}", {}, 400,
         "events"),
        ("gzip that is not gzip", b"\x1f\x8b garbage", {"Content-Encoding": "gzip"}, 400, None),
        ("7 MiB", b"x" * (7 * 1024 * 1024), {}, 413, None),
        ("7 MiB once gunzipped", gzip.compress(b" " * (7 * 1024 * 1024)), {"Content-Encoding": "gzip"}, 413,
         None),
    ]  # fmt: skip
    for what, body, headers, status, field in bodies:
        response = await api.post("/v1/events/ingest", data=body, headers=headers)
        assert response.status == status, (what, response.status, await response.text())
        payload = await response.json()
        assert payload["error"]["code"] and payload["error"]["message"], what
        if field is not None:
            assert payload["error"].get("field") == field, (what, payload)
    # a gzipped body is read like any other
    ok = await api.post(
        "/v1/events/ingest",
        data=gzip.compress(b'{"events": [' + valid + b", NaN]}"),
        headers={"Content-Encoding": "gzip"},
    )
    assert ok.status == 202 and [r["status"] for r in (await ok.json())["results"]] == [
        "accepted",
        "rejected",
    ]


async def test_slow_path_bodies_are_answered_quickly(api: ApiClient) -> None:
    """A 5 MiB body orjson refuses (one NaN among 1000 events) is split and judged in well under a second."""
    meta = {"note": "m" * 4000}
    events = [orjson.dumps(ev("sp", f"c{i}", meta=meta)) for i in range(999)] + [b"NaN"]
    started = time.perf_counter()
    result = await post(api, events)
    elapsed = time.perf_counter() - started
    assert result["accepted"] == 999 and result["results"][-1]["error"]["code"] == "not_json"
    print(f"1000 events, one of them NaN: answered in {elapsed:.3f}s")
    assert elapsed < 5
