"""The writer's rows in PostgreSQL: every change is a compare-and-set on the row version (or the
pending request) and the lease epoch, so a writer that lost its partition or read a stale row changes
nothing; error reports take back what a dropped request was thought to deliver."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from stripemeter.adapters.postgres import push_drops, push_leases, push_mapping_changes, push_totals
from stripemeter.adapters.postgres.push_rows import PostgresPushRows
from stripemeter.adapters.postgres.push_totals import Latest
from stripemeter.core.push_plan import Row, StripeMeterSpec, new_request
from stripemeter.core.push_rows import Delivery, Failure, Fence
from stripemeter.domain import periods
from stripemeter.domain.config import Settings

NOW = datetime(2026, 11, 20, 15, tzinfo=UTC)
BUCKET = datetime(2026, 11, 20, 14, tzinfo=UTC)
METER = StripeMeterSpec("mtr_1", "api", "sum", "stripe_customer_id", "value", True, None)


@pytest.fixture
async def conn(stack: Settings) -> AsyncIterator[psycopg.AsyncConnection]:
    async with await psycopg.AsyncConnection.connect(stack.database_url.value, autocommit=True) as c:
        yield c


@pytest.fixture
def rows(conn: psycopg.AsyncConnection) -> PostgresPushRows:
    return PostgresPushRows(conn)


async def seeded(conn: psycopg.AsyncConnection, total_micros: int = 5_000_000) -> tuple[str, str]:
    tenant = f"pr-{uuid.uuid4().hex[:6]}"
    app = "app-" + tenant
    period = datetime(2026, 11, 1, tzinfo=UTC)
    await push_totals.record_latest(
        conn, [Latest(tenant, "m", "c", BUCKET, total_micros, 1, app, 0, period)], NOW
    )
    return tenant, app


async def due_row(conn: psycopg.AsyncConnection, tenant: str) -> Row:
    return await due_row_at(conn, tenant, NOW)


async def due_row_at(conn: psycopg.AsyncConnection, tenant: str, now: datetime) -> Row:
    app = "app-" + tenant  # seeded() names the app after the tenant
    for stream in await PostgresPushRows(conn).due(app, [0], now, streams=100_000):
        for row in stream.rows:
            if row.key[0] == tenant:
                return row
    raise AssertionError("no due row")


async def test_a_writer_that_lost_its_partition_or_read_a_stale_row_changes_nothing(
    conn: psycopg.AsyncConnection, rows: PostgresPushRows
) -> None:
    tenant, app = await seeded(conn)
    first = Fence(app, await push_leases.claim(conn, app, 0, "writer-a", NOW), 0)
    row = await due_row(conn, tenant)
    request = new_request(row, 5, "sum", METER, "cus_1")
    # another writer takes the partition over: the first one's epoch is over
    second = Fence(app, await push_leases.claim(conn, app, 0, "writer-b", NOW), 0)
    assert second.epoch == first.epoch + 1
    assert not await rows.record_pending(row, request, first, NOW)
    # a new delta arrives after the row was read: the read is stale
    await push_totals.record_latest(
        conn, [Latest(tenant, "m", "c", BUCKET, 6_000_000, 2, app, 0, datetime(2026, 11, 1, tzinfo=UTC))], NOW
    )
    assert not await rows.record_pending(row, request, second, NOW)
    fresh = await due_row(conn, tenant)
    assert fresh.latest_micros == 6_000_000 and fresh.version > row.version
    request = new_request(fresh, 6, "sum", METER, "cus_1")
    assert await rows.record_pending(fresh, request, second, NOW)
    assert not await rows.record_pending(fresh, request, second, NOW)  # recorded once
    pending = await due_row(conn, tenant)
    assert pending.pending == request and pending.status == "pending"
    # only the holder of the pending request's identifier may record the answer
    assert not await rows.mark_delivered(pending, Delivery("sm_other_1", 6, True), second, NOW)
    assert not await rows.mark_delivered(pending, Delivery(request.identifier, 6, True), first, NOW)
    assert await rows.mark_delivered(pending, Delivery(request.identifier, 6, True), second, NOW)
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT pushed_units, status, pending_request FROM stripe_pushes WHERE tenant_id = %s", (tenant,)
        )
        assert await cur.fetchone() == (6, "synced", None)
        await cur.execute(
            "SELECT status FROM stripe_push_requests WHERE identifier = %s", (request.identifier,)
        )
        assert await cur.fetchone() == ("delivered",)


async def test_a_delta_arriving_during_the_call_keeps_the_counter_due(
    conn: psycopg.AsyncConnection, rows: PostgresPushRows
) -> None:
    tenant, app = await seeded(conn)
    fence = Fence(app, await push_leases.claim(conn, app, 0, "w", NOW), 0)
    row = await due_row(conn, tenant)
    request = new_request(row, 5, "sum", METER, "cus_1")
    assert await rows.record_pending(row, request, fence, NOW)
    recorded = await due_row(conn, tenant)
    await push_totals.record_latest(
        conn, [Latest(tenant, "m", "c", BUCKET, 9_000_000, 2, app, 0, datetime(2026, 11, 1, tzinfo=UTC))], NOW
    )
    # the answer arrives: delivered, but not synced, since the counter moved meanwhile
    assert await rows.mark_delivered(recorded, Delivery(request.identifier, 5, True), fence, NOW)
    after = await due_row(conn, tenant)
    assert (after.pushed_units, after.status, after.latest_micros) == (5, "waiting", 9_000_000)


async def test_unparking_keeps_a_request_that_may_have_landed_and_sends_it_under_a_new_key(
    conn: psycopg.AsyncConnection, rows: PostgresPushRows
) -> None:
    tenant, app = await seeded(conn)
    fence = Fence(app, await push_leases.claim(conn, app, 0, "w", NOW), 0)
    row = await due_row(conn, tenant)
    request = new_request(row, 5, "sum", METER, "cus_1")
    assert await rows.record_pending(row, request, fence, NOW)
    pending = await due_row(conn, tenant)
    assert await rows.park(pending, "idempotency_error: ...", fence, NOW)
    assert await push_mapping_changes.mapping_changed(conn, tenant, NOW) == 1
    again = await due_row(conn, tenant)
    assert (again.status, again.pending, again.pending_attempt) == ("pending", request, 1)


async def test_a_refused_request_is_forgotten_and_a_dropped_one_taken_back(
    conn: psycopg.AsyncConnection, rows: PostgresPushRows
) -> None:
    tenant, app = await seeded(conn)
    fence = Fence(app, await push_leases.claim(conn, app, 0, "w", NOW), 0)
    row = await due_row(conn, tenant)
    refused = new_request(row, 5, "sum", METER, "cus_gone")
    assert await rows.record_pending(row, refused, fence, NOW)
    assert await rows.refuse_pending(
        await due_row(conn, tenant), Failure(refused.identifier, "no such customer"), fence, NOW
    )
    assert await push_mapping_changes.mapping_changed(conn, tenant, NOW) == 1
    row = await due_row(conn, tenant)
    assert (row.status, row.pending_raw, row.pushed_units) == ("waiting", None, 0)
    # a new request lands (200) ... and Stripe reports later that it dropped it
    landed = new_request(row, 5, "sum", METER, "cus_1")
    assert await rows.record_pending(row, landed, fence, NOW)
    pending = await due_row(conn, tenant)
    assert await rows.mark_delivered(pending, Delivery(landed.identifier, 5, True), fence, NOW)
    dropped = await push_drops.drop_request(conn, landed.identifier, "Stripe dropped it (no_meter)", NOW)
    assert dropped is not None and dropped.value == 5 and dropped.was_delivered
    assert (
        await push_drops.drop_request(conn, landed.identifier, "again", NOW) is None
    )  # reported twice: once
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT pushed_units, status, reason FROM stripe_pushes WHERE tenant_id = %s", (tenant,)
        )
        assert await cur.fetchone() == (0, "parked", "Stripe dropped it (no_meter)")


async def test_a_report_arriving_after_the_mapping_was_fixed_makes_the_counter_due_not_parked(
    conn: psycopg.AsyncConnection, rows: PostgresPushRows
) -> None:
    tenant, app = await seeded(conn)
    await conn.execute(
        "INSERT INTO metric_mappings (tenant_id, metric, stripe_meter_event_name, aggregation)"
        " VALUES (%s, 'm', 'api', 'sum')",
        (tenant,),
    )
    await conn.execute(
        "INSERT INTO customer_mappings (tenant_id, customer_ref, stripe_customer_id)"
        " VALUES (%s, 'c', 'cus_typo')",
        (tenant,),
    )
    fence = Fence(app, await push_leases.claim(conn, app, 0, "w", NOW), 0)
    row = await due_row(conn, tenant)
    sent = new_request(row, 5, "sum", METER, "cus_typo")
    assert await rows.record_pending(row, sent, fence, NOW)
    pending = await due_row(conn, tenant)
    assert await rows.mark_delivered(pending, Delivery(sent.identifier, 5, True), fence, NOW)
    # the operator fixes the customer id before Stripe's report on the typo arrives
    await conn.execute(
        "UPDATE customer_mappings SET stripe_customer_id = 'cus_right' WHERE tenant_id = %s", (tenant,)
    )
    dropped = await push_drops.drop_request(
        conn, sent.identifier, "Stripe dropped it (customer not found)", NOW
    )
    assert dropped is not None and dropped.mapping_fixed
    after = await due_row(conn, tenant)
    assert (after.status, after.pushed_units) == ("waiting", 0)  # pushed again, to the right customer


async def test_a_push_landing_after_an_earlier_one_was_reported_dropped_adds_only_itself(
    conn: psycopg.AsyncConnection, rows: PostgresPushRows
) -> None:
    tenant, app = await seeded(conn)
    fence = Fence(app, await push_leases.claim(conn, app, 0, "w", NOW), 0)
    row = await due_row(conn, tenant)
    first = new_request(row, 5, "sum", METER, "cus_1")
    assert await rows.record_pending(row, first, fence, NOW)
    pending = await due_row(conn, tenant)
    assert await rows.mark_delivered(pending, Delivery(first.identifier, 5, True, 5), fence, NOW)
    # one more unit: the second request (+1) is in flight when Stripe reports the first one dropped
    await push_totals.record_latest(
        conn, [Latest(tenant, "m", "c", BUCKET, 6_000_000, 2, app, 0, datetime(2026, 11, 1, tzinfo=UTC))], NOW
    )
    row = await due_row(conn, tenant)
    second = new_request(row, 6, "sum", METER, "cus_1")
    assert second.value == 1
    assert await rows.record_pending(row, second, fence, NOW)
    pending = await due_row(conn, tenant)
    assert (
        await push_drops.drop_request(conn, first.identifier, "Stripe dropped it (no_meter)", NOW) is not None
    )
    # the second answers 200: the hour holds its 1 unit, not the 6 it was aiming at, and stays parked
    assert await rows.mark_delivered(pending, Delivery(second.identifier, 6, True, 1), fence, NOW)
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT pushed_units, status, reason, pending_request FROM stripe_pushes WHERE tenant_id = %s",
            (tenant,),
        )
        assert await cur.fetchone() == (1, "parked", "Stripe dropped it (no_meter)", None)


async def test_a_lease_claim_that_failed_in_the_rebalance_is_claimed_on_the_next_round(
    stack: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from aiokafka import TopicPartition

    from stripemeter.domain.clock import SYSTEM
    from stripemeter.streams.stripe_writer import Ownership

    app = f"app-own-{uuid.uuid4().hex[:6]}"
    ownership = Ownership("postgresql://nobody@127.0.0.1:1/none", app, "w", SYSTEM)  # PostgreSQL unreachable
    await ownership.on_partitions_assigned(
        [TopicPartition("usage.deltas", 0), TopicPartition("usage.deltas", 1)]
    )
    assert ownership.epochs == {} and ownership.unclaimed == {0, 1}
    assert "could not claim partitions [0, 1]" in caplog.text
    await ownership.on_partitions_revoked([TopicPartition("usage.deltas", 1)])
    ownership.database_url = stack.database_url.value  # PostgreSQL is back
    await ownership.claim()
    assert set(ownership.epochs) == {0} and not ownership.unclaimed


async def test_a_rebalance_and_a_push_round_claiming_at_once_keep_the_leases_epoch(stack: Settings) -> None:
    """The writer's rebalance callback and its push round both claim what is unclaimed; the epoch it
    keeps must be the lease's, or every change it makes to the partition's rows is refused."""
    from aiokafka import TopicPartition

    from stripemeter.domain.clock import SYSTEM
    from stripemeter.streams.stripe_writer import Ownership

    app = f"app-own-{uuid.uuid4().hex[:6]}"
    ownership = Ownership(stack.database_url.value, app, "w", SYSTEM)
    ownership.unclaimed = {0, 1}
    await asyncio.gather(
        ownership.on_partitions_assigned(
            [TopicPartition("usage.deltas", 0), TopicPartition("usage.deltas", 1)]
        ),
        ownership.claim(),
    )
    async with await psycopg.AsyncConnection.connect(stack.database_url.value) as conn:
        cur = await conn.execute(
            "SELECT partition, epoch FROM stripe_writer_leases WHERE app_id = %s ORDER BY partition", (app,)
        )
        assert dict(await cur.fetchall()) == ownership.epochs == {0: 1, 1: 1}


# --- one stream, one partition --------------------------------------------------------------------------


async def rows_of(conn: psycopg.AsyncConnection, tenant: str) -> list[tuple[datetime, int, int]]:
    cur = await conn.execute(
        "SELECT bucket, delta_partition, version FROM stripe_pushes WHERE tenant_id = %s ORDER BY bucket",
        (tenant,),
    )
    return [(b, int(p), int(v)) for b, p, v in await cur.fetchall()]


async def test_a_streams_rows_follow_the_partition_of_its_newest_delta(
    conn: psycopg.AsyncConnection, rows: PostgresPushRows
) -> None:
    """usage.deltas gained partitions: the stream's new deltas arrive in partition 1, so its older rows
    move there too (one writer pushes the whole stream); the holder of partition 0 can no longer change
    them, even under an epoch that partition 1's lease happens to have too."""
    tenant, app = await seeded(conn)  # hour 14:00 from partition 0
    period = datetime(2026, 11, 1, tzinfo=UTC)
    earlier = BUCKET.replace(hour=13)
    await push_totals.record_latest(
        conn, [Latest(tenant, "m", "c", earlier, 1_000_000, 1, app, 0, period)], NOW
    )
    old = Fence(app, await push_leases.claim(conn, app, 0, "writer-a", NOW), 0)
    stale = await due_row(conn, tenant)
    before = await rows_of(conn, tenant)
    assert [p for _, p, _ in before] == [0, 0]
    later = BUCKET.replace(hour=15)
    await push_totals.record_latest(
        conn, [Latest(tenant, "m", "c", later, 2_000_000, 1, app, 1, period)], NOW
    )
    after = await rows_of(conn, tenant)
    assert [(b, p) for b, p, _ in after] == [(earlier, 1), (BUCKET, 1), (later, 1)]
    assert all(v > was for (_, _, v), (_, _, was) in zip(after, before, strict=False))  # moved: version + 1
    new = Fence(app, await push_leases.claim(conn, app, 1, "writer-b", NOW), 1)
    assert new.epoch == old.epoch == 1
    fresh = next(r for s in await rows.due(app, [1], NOW) for r in s.rows if r.key == stale.key)
    request = new_request(fresh, 5, "sum", METER, "cus_1")
    assert not await rows.record_pending(fresh, request, old, NOW)  # partition 0 is not its own
    assert not await rows.record_pending(stale, request, new, NOW)  # the stale read
    assert await rows.record_pending(fresh, request, new, NOW)
    # a later delta from partition 1 moves nothing and bumps no other row
    moved = await rows_of(conn, tenant)
    await push_totals.record_latest(
        conn, [Latest(tenant, "m", "c", later, 3_000_000, 2, app, 1, period)], NOW
    )
    assert [(b, v) for b, _, v in await rows_of(conn, tenant) if b != later] == [
        (b, v) for b, _, v in moved if b != later
    ]
    # an older delta (lower seq) from partition 0 changes nothing, and so moves nothing back
    await push_totals.record_latest(
        conn, [Latest(tenant, "m", "c", later, 1_000_000, 1, app, 0, period)], NOW
    )
    assert {p for _, p, _ in await rows_of(conn, tenant)} == {1}


# --- last: what Stripe holds, and the hour's newest stamp -------------------------------------------------


async def test_a_row_knows_whether_stripe_holds_an_event_of_its_hour(
    conn: psycopg.AsyncConnection, rows: PostgresPushRows
) -> None:
    tenant, app = await seeded(conn, total_micros=0)
    await conn.execute(
        "INSERT INTO metric_mappings (tenant_id, metric, stripe_meter_event_name, aggregation)"
        " VALUES (%s, 'm', 'seats', 'last')",
        (tenant,),
    )
    fence = Fence(app, await push_leases.claim(conn, app, 0, "w", NOW), 0)
    row = await due_row(conn, tenant)
    assert (row.holds, row.last_timestamp) == (False, None)
    stamp = int(BUCKET.timestamp()) + 3
    request = new_request(row, 0, "last", METER, "cus_1", stamp)
    assert await rows.record_pending(row, request, fence, NOW)
    pending = await due_row(conn, tenant)
    assert (pending.holds, pending.last_timestamp) == (False, stamp)  # sent, not known to have landed
    assert await rows.mark_delivered(pending, Delivery(request.identifier, 0, False), fence, NOW)
    delivered = await due_row(conn, tenant)
    assert (delivered.holds, delivered.pushed_units, delivered.last_timestamp) == (True, 0, stamp)


async def test_a_temporary_refusal_is_remembered_from_its_first_time(
    conn: psycopg.AsyncConnection, rows: PostgresPushRows
) -> None:
    tenant, app = await seeded(conn)
    fence = Fence(app, await push_leases.claim(conn, app, 0, "w", NOW), 0)
    row = await due_row(conn, tenant)
    request = new_request(row, 5, "sum", METER, "cus_1")
    assert await rows.record_pending(row, request, fence, NOW)
    pending = await due_row(conn, tenant)
    first, later = NOW, NOW.replace(minute=30)
    for when in (first, later):
        assert await rows.mark_attempt(
            pending, Failure(request.identifier, "early"), fence, when, new_key=True, refused=True
        )
    refused = await due_row_at(conn, tenant, later.replace(hour=later.hour + 1))  # after the backoff
    assert refused.refused_since == first.timestamp() and refused.pending_attempt == 2
    assert await rows.mark_delivered(refused, Delivery(request.identifier, 5, True), fence, NOW)
    async with conn.cursor() as cur:
        await cur.execute("SELECT refused_since FROM stripe_pushes WHERE tenant_id = %s", (tenant,))
        assert await cur.fetchone() == (None,)


# --- counters without push rows ---------------------------------------------------------------------------


async def test_counters_whose_deltas_were_never_read_get_push_rows(conn: psycopg.AsyncConnection) -> None:
    """The counters table has what usage.deltas no longer does: a pass records the app's counters that
    have no push row, or a newer total than it; twice, or by two writers at once, changes nothing more.
    Another app's counters, and counters from before counters carried an app, are left alone."""
    from stripemeter.domain.clock import Clock
    from stripemeter.schemas.partitioning import Partitioner, delta_routing_key
    from stripemeter.services.push_backfill import CounterBackfill

    tenant = f"bf-{uuid.uuid4().hex[:6]}"
    app = "app-" + tenant
    hours = [BUCKET.replace(hour=h) for h in (12, 13, 14)]
    counters: list[tuple[str | None, str, datetime, int, int]] = [
        (app, "c1", h, 1_000_000 * (i + 1), 2) for i, h in enumerate(hours)
    ]
    counters += [(app, "c2", hours[0], 7_000_000, 1), ("other-app", "c3", hours[0], 1, 1)]
    counters += [(None, "c4", hours[0], 1, 1), (app, "c5", BUCKET - timedelta(days=36), 1, 1)]  # too old
    for counter_app, customer, bucket, micros, seq in counters:
        await conn.execute(
            "INSERT INTO counters (tenant_id, metric, customer_ref, bucket, total_micros, seq, app_id)"
            " VALUES (%s, 'm', %s, %s, %s, %s, %s)",
            (tenant, customer, bucket, micros, seq, counter_app),
        )
    await conn.execute(
        "INSERT INTO customer_mappings (tenant_id, customer_ref, stripe_customer_id, billing_anchor)"
        " VALUES (%s, 'c2', 'cus_2', %s)",
        (tenant, datetime(2026, 1, 31, 10, 45, tzinfo=UTC)),
    )
    # c1's first hour has a push row already, from an older delta (seq 1)
    period = periods.holding(hours[0]).start
    await push_totals.record_latest(
        conn, [Latest(tenant, "m", "c1", hours[0], 500_000, 1, app, 0, period)], NOW
    )
    partition_of = Partitioner(4)
    clock = Clock.starting_at(NOW)
    backfill = CounterBackfill(app, clock, batch=2)  # small batches: the pass goes on over several
    made = await backfill.run_pass(conn, partition_of)
    assert made == len(hours) + 1
    cur = await conn.execute(
        "SELECT customer_ref, bucket, latest_micros, latest_seq, delta_partition, period_start, app_id"
        " FROM stripe_pushes WHERE tenant_id = %s ORDER BY customer_ref, bucket",
        (tenant,),
    )
    found = await cur.fetchall()
    anchored = periods.holding(hours[0], datetime(2026, 1, 31, 10, 45, tzinfo=UTC)).start
    assert found == [
        *[("c1", h, 1_000_000 * (i + 1), 2, partition_of(delta_routing_key(tenant, "m", "c1")),
           periods.holding(h).start, app) for i, h in enumerate(hours)],
        ("c2", hours[0], 7_000_000, 1, partition_of(delta_routing_key(tenant, "m", "c2")), anchored, app),
    ]  # fmt: skip
    assert await CounterBackfill(app, clock).run_pass(conn, partition_of) == 0  # nothing left to do


async def test_a_report_of_a_refusal_that_passes_by_itself_makes_the_counter_due_not_parked(
    conn: psycopg.AsyncConnection, rows: PostgresPushRows
) -> None:
    """Stripe's clock was behind the worker's when it validated the event (timestamp_in_future): the
    same change goes again, under a new identifier, with no operator."""
    tenant, app = await seeded(conn)
    fence = Fence(app, await push_leases.claim(conn, app, 0, "w", NOW), 0)
    row = await due_row(conn, tenant)
    sent = new_request(row, 5, "sum", METER, "cus_1")
    assert await rows.record_pending(row, sent, fence, NOW)
    pending = await due_row(conn, tenant)
    assert await rows.mark_delivered(pending, Delivery(sent.identifier, 5, True), fence, NOW)
    reason = "Stripe dropped it (timestamp_in_future): the timestamp is ahead"
    assert await push_drops.drop_request(conn, sent.identifier, reason, NOW, temporary=True) is not None
    again = await due_row(conn, tenant)
    assert (again.status, again.pushed_units) == ("waiting", 0)
