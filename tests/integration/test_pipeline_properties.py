"""Generated streams at the contract's edges, through the real pipeline (Kafka, the worker, PostgreSQL):
every input ends in exactly one outcome, the counters equal an oracle, and the worker never restarts
on its own, also when duplicates arrive across a restart.

Each example sends, to one partition of usage.events (so its order is the order of decisions): events
at the edges (quantities of 0, of six decimals, of the largest value a counter can take; times at the
window's edge and beyond, up to an hour ahead; 255-character unicode customers and keys; 4 KiB meta),
duplicates, too-late events, arrays of 1,000, and garbage (bytes, broken JSON, wrong shapes). Halfway the
worker is stopped and started again; the second half repeats some of the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stripemeter.domain.config import Settings
from stripemeter.schemas.events import HOUR_MS, InvalidEvent, UsageEvent, decode_message
from tests.integration.client import eventually, produce
from tests.integration.harness import WorkerProcess, free_port

pytestmark = pytest.mark.exactly_once  # never rerun by CI; repeated by ./dev soak

LATENESS_MS = 48 * HOUR_MS
NOW_MS = int(time.time() * 1000)
# typed: mypy does not infer a tuple literal as hypothesis's Collection[CategoryName]
SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
TEXT = st.text(
    alphabet=st.characters(blacklist_categories=SURROGATES, blacklist_characters="\x00"),
    min_size=1,
    max_size=255,
)
CUSTOMERS = st.sampled_from(["a", "é" * 255, "客户", "c" * 254 + "🙂", "r\u200f"])


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@st.composite
def usage(draw: st.DrawFn, tenant: str) -> dict[str, Any]:
    quantity = draw(
        st.one_of(
            st.just(0),
            st.integers(0, 1_000),
            st.decimals(0, 1000, places=6, allow_nan=False).map(float),
            st.just(9_223_372_036_854),
            st.just(-1),  # rejected
            st.just(1.0000001),  # seven decimals: rejected
        )
    )
    offset_ms = draw(
        st.one_of(
            st.integers(-3 * HOUR_MS, 0),
            st.just(-LATENESS_MS + 60_000),  # at the window's edge
            st.integers(-LATENESS_MS - 24 * HOUR_MS, -LATENESS_MS - HOUR_MS),  # too late (once counted after)
            st.just(HOUR_MS - 60_000),  # just under an hour ahead
            st.just(HOUR_MS + 60_000),  # too far ahead: rejected
        )
    )
    event: dict[str, Any] = {
        "tenantId": tenant,
        "metric": "m",
        "customerRef": draw(CUSTOMERS),
        "quantity": quantity,
        "ts": iso(NOW_MS + offset_ms),
    }
    if draw(st.booleans()):
        event["idempotencyKey"] = draw(st.one_of(TEXT, st.sampled_from(["k1", "k2", "k3"])))
    if draw(st.integers(0, 5)) == 0:
        event["meta"] = {"blob": "x" * draw(st.sampled_from([1, 4000, 4100]))}  # 4100: over 4 KiB
    return event


@st.composite
def messages(draw: st.DrawFn, tenant: str) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(draw(st.integers(5, 25))):
        kind = draw(st.integers(0, 9))
        if kind < 6:
            out.append(orjson.dumps(draw(usage(tenant))))
        elif kind < 8:
            out.append(orjson.dumps(draw(st.lists(usage(tenant), min_size=1, max_size=30))))
        elif kind == 8:
            out.append(orjson.dumps([draw(usage(tenant)) for _ in range(1000)]))
        else:
            out.append(draw(st.sampled_from([b"", b"\xff\xfe", b"[1,2", b'{"tenantId": 1}', b"[]", b"null"])))
    repeats = draw(st.lists(st.sampled_from(out), max_size=5))  # the same inputs again, after the restart
    return [*out, *repeats]


def oracle(sent: list[bytes], now_ms: int) -> tuple[Counter[str], dict[tuple[str, int], int]]:
    """Outcomes and per (customer, hour) totals, deciding in sending order as the pipeline does."""
    outcomes: Counter[str] = Counter()
    counted: set[tuple[str, str]] = set()
    watermark: dict[str, int] = {}
    totals: dict[tuple[str, int], int] = Counter()
    for raw in sent:
        for e in decode_message(raw, now_ms):
            if isinstance(e, InvalidEvent):
                outcomes["rejected"] += 1
                continue
            assert isinstance(e, UsageEvent)
            mark = watermark.get(e.customer_ref)
            if (e.customer_ref, e.idempotency_key) in counted:
                outcomes["duplicate"] += 1
            elif mark is not None and e.ts_ms < mark - LATENESS_MS:
                outcomes["late"] += 1
            elif totals[(e.customer_ref, e.ts_ms - e.ts_ms % HOUR_MS)] + e.quantity_micros >= 2**63:
                outcomes["rejected"] += 1  # counter_overflow
            else:
                outcomes["counted"] += 1
                counted.add((e.customer_ref, e.idempotency_key))
                watermark[e.customer_ref] = max(e.ts_ms, mark if mark is not None else e.ts_ms)
                totals[(e.customer_ref, e.ts_ms - e.ts_ms % HOUR_MS)] += e.quantity_micros
    return outcomes, {k: v for k, v in totals.items() if v}


async def ledger_and_counters(env: Settings, tenant: str) -> tuple[Counter[str], dict[tuple[str, int], int]]:
    async with await psycopg.AsyncConnection.connect(env.database_url.value) as conn:
        cur = await conn.execute(
            "SELECT outcome, count(*) FROM events WHERE tenant_id = %s GROUP BY 1", (tenant,)
        )
        outcomes = Counter({o: int(n) for o, n in await cur.fetchall()})
        cur = await conn.execute(
            "SELECT customer_ref, (extract(epoch FROM bucket) * 1000)::bigint, total_micros::bigint"
            " FROM counters WHERE tenant_id = %s AND total_micros <> 0",
            (tenant,),
        )
        totals = {(c, int(b)): int(t) for c, b, t in await cur.fetchall()}
    return outcomes, totals


@pytest.mark.timeout(900)
@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
def test_every_input_ends_in_one_outcome_and_the_counters_equal_the_oracle(
    env: Settings, tmp_path: Path, data: st.DataObject
) -> None:
    tenant = f"pp-{uuid.uuid4().hex[:8]}"
    sent = data.draw(messages(tenant))
    assume(oracle(sent, int(time.time() * 1000))[0]["counted"] > 0)  # not all garbage
    half = len(sent) // 2
    worker = WorkerProcess(
        env, tmp_path / f"{tenant}.log", state_dir=tmp_path / f"state-{tenant}", worker_web_port=free_port()
    ).start()
    try:
        worker.wait_ready(timeout=180)
        pid = worker.proc.pid if worker.proc else None
        asyncio.run(produce(env, sent[:half], raw=True, key=tenant.encode()))
        time.sleep(1)
        worker.stop()  # a restart: duplicates of what was counted before arrive after it
        assert worker.proc is not None and worker.proc.returncode == 0
        worker.start().wait_ready(timeout=180)
        pid = worker.proc.pid if worker.proc else None
        asyncio.run(produce(env, sent[half:], raw=True, key=tenant.encode()))
        expected_outcomes, expected_totals = oracle(sent, int(time.time() * 1000))
        valid = sum(n for o, n in expected_outcomes.items() if o != "rejected")

        async def settled() -> bool:
            outcomes, _ = await ledger_and_counters(env, tenant)
            return sum(n for o, n in outcomes.items() if o != "rejected") >= valid

        asyncio.run(eventually(settled, timeout=180, what="every valid input in the ledger"))

        async def counted() -> bool:
            return (await ledger_and_counters(env, tenant))[1] == expected_totals

        with contextlib.suppress(AssertionError):  # timed out: the asserts below say what differs
            asyncio.run(eventually(counted, timeout=30, what="the last deltas in the counters"))
        outcomes, totals = asyncio.run(ledger_and_counters(env, tenant))
        for outcome in ("counted", "duplicate", "late"):
            assert outcomes[outcome] == expected_outcomes[outcome], (outcome, outcomes, expected_outcomes)
        assert totals == expected_totals
        assert worker.proc is not None and worker.proc.poll() is None and worker.proc.pid == pid
    finally:
        worker.stop()
