"""The Stripe writer: usage.deltas -> what each counter hour holds -> meter events, exactly once.

The writer is a consumer stage (``consumer_stage.py``): it records each batch of deltas, then the
stage commits it; between batches it pushes.

**One owner per counter.** A counter's deltas are keyed by its stream, so they arrive in one partition
of usage.deltas, and the writers of a deployment share those partitions as a consumer group. A writer
pushes only the counters of the partitions it holds; on each assignment it claims the partition's
lease, whose epoch grows, and every change it makes to a push row is a compare-and-set naming that
epoch and the row version it read (core/push_rows.py). A writer that lost a partition, or read a row
that moved on, changes nothing and reads again.

A stream's rows live in the partition of its newest delta (adapters/postgres/push_totals.FOLLOW); an
hour of a partition held by another writer is skipped, never waited for.

**Per counter hour, in this order (crash-safe):**
1. the newest total from usage.deltas is stored (highest seq wins), then the offsets are committed;
   counters whose deltas were never read (the counters table has them) are stored the same way
   (services/push_backfill.py);
2. the hour's target in whole units is computed (plan.targets: fractions carry within the period);
   the request that reaches it is recorded as pending, exactly, before Stripe is called;
3. Stripe is called with that request; success, or "an event already exists with identifier", records
   the target as delivered. A crash, timeout, 429 or 5xx leaves the request pending and it is sent
   again unchanged (a new idempotency key after a 5xx, since Stripe replays a 500 to the same key).
   A permanent refusal parks the counter with Stripe's message; a temporary one (plan.
   refusal_is_temporary) is retried with backoff for up to an hour, then parked; an
   ``idempotency_error`` parks it too.
4. A request pending longer than Stripe keeps identifiers (24 h) is never resent blindly: the hour's
   summary in Stripe tells whether it landed (it holds what was delivered plus the request: delivered;
   what was delivered without it: a new request is planned; anything else: parked for an operator).

**On the v2 meter event stream** (``STRIPEMETER_STRIPE_API`` v2, or auto when the round's projected rate
needs it: core/send_api.py) steps 2 and 3 take up to 100 requests at a time: they are recorded in one
commit, sent in one stream request (adapters/stripe/stream.py) and their answer recorded in one commit;
the identifiers are v1's, so a batch sent again is counted once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

import psycopg
import stripe
from aiokafka import AIOKafkaConsumer, TopicPartition

from stripemeter.adapters.kafka.batching import ConsumerSettings
from stripemeter.adapters.postgres import push_leases, push_totals
from stripemeter.adapters.postgres.push_rows import PostgresPushRows
from stripemeter.adapters.postgres.push_totals import Latest
from stripemeter.adapters.postgres.reconciliation import delivered_corrections, uncertain_corrections
from stripemeter.adapters.stripe.budget import EventBudget, StripeBudget
from stripemeter.adapters.stripe.calls import StripeCalls
from stripemeter.adapters.stripe.client import SendResult, send
from stripemeter.adapters.stripe.meters import MeterCatalog
from stripemeter.adapters.stripe.stream import MAX_EVENTS, SESSION_EXPIRED, StreamSession, send_batch
from stripemeter.core.push_plan import (
    CUSTOMER_CODES,
    HOUR_S,
    IDENTIFIER_WINDOW_S,
    METER_CODES,
    SUMMARY_LAG_S,
    Request,
    Row,
    StripeMeterSpec,
    did_it_land,
    did_last_land,
    held_once_landed,
    meter_problem,
    new_request,
    next_timestamp,
    not_begun,
    reached,
    refusal_is_temporary,
    refused_too_long,
    targets,
    too_old,
)
from stripemeter.core.push_rows import Delivery, Failure, Fence, PushRows, Stream
from stripemeter.core.send_api import choose_api, projected_rate
from stripemeter.domain import metrics, periods
from stripemeter.domain.clock import SYSTEM, Clock
from stripemeter.domain.kafka_access import KafkaAccess
from stripemeter.schemas.deltas import decode_delta
from stripemeter.schemas.partitioning import Partitioner, delta_routing_key
from stripemeter.services.push_backfill import CounterBackfill
from stripemeter.streams.consumer_stage import Batch, ConsumerStage, StageHooks

log = logging.getLogger(__name__)

# The writer's batches of deltas wait this long to fill, idle or not: a push some tenths of a second
# later changes nothing Stripe bills, a burst becomes one batch, and the sink writes the counters a
# replay or an adjustment waits for before the writer's recording and pushing take the worker's time.
WRITER_LINGER_SECONDS = 0.3
STREAMS_PER_ROUND = 200  # due streams one round takes on v1 (at 20 calls a second, 10 s of calls)

# PostgreSQL gave up on a statement because of a concurrent one: nothing changed, so try again later
CONTENDED = (
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
    psycopg.errors.LockNotAvailable,
)


class Ownership:
    """The usage.deltas partitions this writer holds, each with the epoch of its lease."""

    def __init__(self, database_url: str, app_id: str, owner: str, clock: Clock):
        self.database_url = database_url
        self.app_id = app_id
        self.owner = owner
        self.clock = clock
        self.epochs: dict[int, int] = {}
        self.unclaimed: set[int] = set()  # assigned, lease not claimed yet (PostgreSQL failed): retried
        # one claim at a time: the rebalance's and a push round's would otherwise both claim a partition,
        # and the writer would keep the epoch of the first while the lease holds the second's
        self._claiming = asyncio.Lock()

    def fence(self, partition: int) -> Fence | None:
        epoch = self.epochs.get(partition)
        return None if epoch is None else Fence(self.app_id, epoch, partition)

    async def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        for tp in revoked:
            self.epochs.pop(tp.partition, None)
            self.unclaimed.discard(tp.partition)
        if revoked:
            log.info(
                "stripe writer %s gave up partitions %s", self.owner, sorted(tp.partition for tp in revoked)
            )

    async def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self.unclaimed |= {tp.partition for tp in assigned}
        await self.claim()

    async def claim(self) -> None:
        """Claim the leases of the partitions assigned but not claimed yet. The consumer swallows what a
        rebalance callback raises, so a failure here is logged and the writer's next round tries again;
        until then the partition's counters are recorded but not pushed."""
        async with self._claiming:
            if not self.unclaimed:
                return
            held = {}
            try:
                async with await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn:
                    for partition in sorted(self.unclaimed):
                        epoch = await push_leases.claim(
                            conn, self.app_id, partition, self.owner, self.clock.utc()
                        )
                        if partition in self.unclaimed:  # not revoked while claiming
                            self.unclaimed.discard(partition)
                            self.epochs[partition] = held[partition] = epoch
            except psycopg.Error as exc:
                log.error(
                    "stripe writer %s could not claim partitions %s (%s); trying again next round",
                    self.owner, sorted(self.unclaimed), exc,
                )  # fmt: skip
            if held:
                log.info("stripe writer %s holds partitions (epoch) %s", self.owner, held)


class StripeWriter:
    def __init__(
        self,
        kafka: KafkaAccess,
        deltas_topic: str,
        group_id: str,
        app_id: str,
        database_url: str,
        client: stripe.StripeClient,
        budget: StripeBudget,
        flush_interval: float = 1.0,
        clock: Clock = SYSTEM,
        api: str = "v1",
        stream_events_per_second: float = 10_000.0,
    ):
        """``api``: ``STRIPEMETER_STRIPE_API`` (v1, v2 or auto: core/send_api.py);
        ``stream_events_per_second``: ``STRIPEMETER_STRIPE_STREAM_EVENTS_PER_SECOND``, the v2 stream's
        events a second besides the calls budget its requests take."""
        self.kafka = kafka
        self.deltas_topic = deltas_topic
        self.group_id = group_id
        self.app_id = app_id
        self.database_url = database_url
        self.client = client
        self.budget = budget
        self.calls = StripeCalls(budget)
        self.meters = MeterCatalog(client, self.calls)
        self.flush_interval = flush_interval
        self.clock = clock
        self.api = api
        self.events = EventBudget(stream_events_per_second)
        self.batch_size = max(1, min(MAX_EVENTS, int(stream_events_per_second)))
        self.session = StreamSession(client, self.calls, clock)
        self._outbox: list[_Queued] = []  # recorded requests waiting to go out together (v2, auto)
        self._round_events = 0  # requests the round has sent or queued: its projected rate (auto)
        owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.ownership = Ownership(database_url, app_id, owner, clock)
        self.backfill = CounterBackfill(app_id, clock)
        self.push_rows: Callable[[psycopg.AsyncConnection], PushRows] = PostgresPushRows
        self._partitioner = Partitioner(1)
        settings = ConsumerSettings(
            (deltas_topic,),
            group_id,
            max_records=5000,
            linger_seconds=WRITER_LINGER_SECONDS,
            linger_when_idle=True,
            poll_ms=100,
        )
        self.stage = ConsumerStage(kafka, settings)

    def stop(self) -> None:
        self.stage.stop()

    async def run(self) -> None:
        conn = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
        try:
            log.info("stripe writer started: %s -> Stripe Billing Meters", self.deltas_topic)
            await self.stage.run(partial(self._handle, conn), hooks=_WriterRounds(self, conn))
        finally:
            await conn.close()

    async def _handle(self, conn: psycopg.AsyncConnection, batch: Batch) -> None:
        """Step 1 of each counter hour: store the newest totals; the stage commits the offsets after."""
        await self._record(conn, [m for msgs in batch.values() for m in msgs if m.value])

    async def _record(self, conn: psycopg.AsyncConnection, messages: list[Any]) -> None:
        deltas = []
        for m in messages:
            try:
                deltas.append((decode_delta(m.value), m.partition))
            except ValueError as exc:
                self._unusable(m, exc)
        anchors = await push_totals.anchors(conn, ((d.tenant_id, d.customer_ref) for d, _ in deltas))
        latest = []
        for d, partition in deltas:
            bucket = datetime.fromtimestamp(d.bucket_ms / 1000, tz=UTC)
            try:
                start = periods.holding(bucket, anchors[d.tenant_id, d.customer_ref]).start
            except (ValueError, OverflowError) as exc:  # a bucket no billing period can hold
                log.error(
                    "stripe writer: skipped the delta of %s/%s/%s @%s: %s",
                    d.tenant_id, d.metric, d.customer_ref, bucket, exc,
                )  # fmt: skip
                metrics.POISON_MESSAGES.labels("writer").inc()
                continue
            latest.append(
                Latest(
                    d.tenant_id,
                    d.metric,
                    d.customer_ref,
                    bucket,
                    d.total_micros,
                    d.seq,
                    self.app_id,
                    partition,
                    start,
                )
            )
        await self._contended(lambda: push_totals.record_latest(conn, latest, self.clock.utc()))

    @staticmethod
    async def _contended(change: Callable[[], Awaitable[None]], attempts: int = 5) -> None:
        """Run a seq-guarded change again when PostgreSQL gave it up for a concurrent one (another
        writer recording the same streams): it changed nothing, and running it again is safe."""
        for attempt in range(attempts):
            try:
                await change()
                return
            except CONTENDED:
                if attempt == attempts - 1:
                    raise
            await asyncio.sleep(0.05 * 2**attempt)

    async def backfill_step(self, conn: psycopg.AsyncConnection, consumer: AIOKafkaConsumer) -> None:
        try:
            await self.backfill.round(conn, await self._partition_of(consumer))
        except CONTENDED as exc:
            log.info("stripe writer: counters backfill met %s; it goes on next round", type(exc).__name__)

    async def _partition_of(self, consumer: AIOKafkaConsumer) -> Partitioner:
        """Kafka's partition choice over usage.deltas as it is now (it may gain partitions)."""
        count = len(consumer.partitions_for_topic(self.deltas_topic) or ())
        if not count:
            await consumer.topics()
            count = len(consumer.partitions_for_topic(self.deltas_topic) or ())
        if max(count, 1) != self._partitioner.partitions:
            self._partitioner = Partitioner(max(count, 1))
        return self._partitioner

    @staticmethod
    def _unusable(message: Any, exc: Exception) -> None:
        """A delta record the writer cannot read stops nothing: it is logged and counted, and the
        partition moves on (reconciliation shows the counter if Stripe misses it)."""
        log.error(
            "stripe writer: skipped unreadable record %s[%d]@%d (%s): %.200r",
            message.topic, message.partition, message.offset, exc, message.value,
        )  # fmt: skip
        metrics.POISON_MESSAGES.labels("writer").inc()

    async def assign_old_rows(self, conn: psycopg.AsyncConnection, consumer: AIOKafkaConsumer) -> None:
        """Rows from before partitions and periods were recorded get them (see migration 0010)."""
        partition_of = await self._partition_of(consumer)
        while rows := await push_leases.unassigned_rows(conn, 1000):
            anchors = await push_totals.anchors(conn, ((r["tenant_id"], r["customer_ref"]) for r in rows))
            assigned = [
                (
                    (r["tenant_id"], r["metric"], r["customer_ref"], r["bucket"]),
                    partition_of(delta_routing_key(r["tenant_id"], r["metric"], r["customer_ref"])),
                    periods.holding(r["bucket"], anchors[r["tenant_id"], r["customer_ref"]]).start,
                )
                for r in rows
            ]
            await push_leases.assign_rows(conn, self.app_id, assigned)
            log.info("stripe writer: recorded partition and period of %d older push rows", len(assigned))

    # --- pushing -----------------------------------------------------------------------------------

    async def push_due(self, conn: psycopg.AsyncConnection) -> int:
        """One round over the due streams of the partitions held; returns how many pushes landed."""
        await self.ownership.claim()
        delivered = 0
        # a request queued by a round that failed is still pending in PostgreSQL: this round sends it
        self._outbox.clear()
        self._round_events = 0
        # a round on the stream takes more streams: each of its requests carries up to 100 of them
        streams = STREAMS_PER_ROUND if self.api == "v1" else STREAMS_PER_ROUND * 10
        for stream in await self.push_rows(conn).due(
            self.app_id, sorted(self.ownership.epochs), self.clock.utc(), streams
        ):
            if self.stage.stopping:
                break
            try:
                delivered += await self._push_stream(conn, stream)
            except CONTENDED as exc:  # another writer or the webhook held the rows: next round
                log.info("stripe writer: %s; the stream waits for the next round", type(exc).__name__)
            except stripe.StripeError as exc:  # a read (meters, summaries) failed after its retries
                log.warning(
                    "stripe writer: reading Stripe for %s/%s/%s failed (%s: %s); the stream waits for the"
                    " next round", *stream.rows[0].key[:3], type(exc).__name__, exc,
                )  # fmt: skip
        try:
            delivered += await self._flush(conn)
        except CONTENDED as exc:  # nothing of the batch was recorded: the next round plans it again
            log.info("stripe writer: %s; the batch waits for the next round", type(exc).__name__)
        metrics.STRIPE_PARKED.set(await self.push_rows(conn).parked_count())
        return delivered

    async def _push_stream(self, conn: psycopg.AsyncConnection, stream: Stream) -> int:
        wanted = targets(stream.aggregation, [row.latest_micros for row in stream.rows])
        check = _MeterCheck(self.meters, stream)
        delivered = 0
        for row, target in zip(stream.rows, wanted, strict=True):
            if self.stage.stopping:
                return delivered
            fence = self.ownership.fence(row.delta_partition)
            if fence is None:
                continue  # another writer holds this hour's partition (the stream is moving over)
            now = self.clock.utc()
            if row.status == "parked" or row.retry_wait(now.timestamp()):
                continue
            if row.pending_raw is not None:
                delivered += await self._resend(conn, row, target, stream, check, fence, now)
            elif reached(row, target, stream.aggregation):
                if row.status != "synced":
                    await self.push_rows(conn).mark_synced(row, fence, now)
            elif not_begun(row, now.timestamp()):
                continue  # stays due until its hour begins
            elif too_old(row, now.timestamp()):
                await self._park(conn, row, "the hour is older than the 35 days Stripe accepts", fence)
            elif stream.event_name is None or stream.stripe_customer is None:
                await self.push_rows(conn).park(
                    row, "no metric or customer mapping yet", fence, now, "unmapped"
                )
            else:
                delivered += await self._push_new(conn, row, target, stream, check, fence, now)
        return delivered

    async def _push_new(
        self,
        conn: psycopg.AsyncConnection,
        row: Row,
        target: int,
        stream: Stream,
        check: _MeterCheck,
        fence: Fence,
        now: datetime,
    ) -> int:
        """Record the request that brings the hour to ``target``, then send it."""
        assert stream.stripe_customer is not None
        meter, problem = await check.usable()
        if problem is not None or meter is None:
            await self._park(conn, row, problem or "no Stripe meter", fence)
            return 0
        # an hour's events end with the hour, or with its billing period when that ends first
        period_end = periods.holding(row.key[3], stream.billing_anchor).end.timestamp()
        end = min(row.bucket_s + HOUR_S, int(period_end))
        stamp = next_timestamp(row, stream.aggregation, end, now.timestamp())
        if stamp == "wait":
            return 0  # stays due until the stamp is within what Stripe takes
        if stamp == "exhausted":
            metrics.STRIPE_LAST_HOURS_FULL.inc()
            log.error(
                "stripe writer: %s/%s/%s @%s changed again after every second of the hour was used by a"
                " meter event; Stripe keeps the value it holds (%d), the counter is parked",
                *row.key, row.pushed_units,
            )  # fmt: skip
            await self._park(
                conn, row, "every second of the hour holds a meter event already: a newer last value"
                f" ({target}) cannot be stamped later than the one Stripe holds ({row.pushed_units})", fence,
            )  # fmt: skip
            return 0
        request = new_request(row, target, stream.aggregation, meter, stream.stripe_customer, stamp)
        recorded = replace(row, version=row.version + 1, pending_raw=request.wire(), refused_since=None)
        if self.api != "v1":  # recorded with the rest of its request, in one commit, before it is sent
            return await self._queue(conn, _Queued(recorded, request, 0, target, stream, fence, row, now))
        if not await self.push_rows(conn).record_pending(row, request, fence, now):
            return 0
        return await self._send(conn, recorded, request, 0, target, stream, fence)

    async def _resend(
        self,
        conn: psycopg.AsyncConnection,
        row: Row,
        target: int,
        stream: Stream,
        check: _MeterCheck,
        fence: Fence,
        now: datetime,
    ) -> int:
        request = row.pending
        since = row.pending_since or 0.0
        if request is None and now.timestamp() - row.updated_at < SUMMARY_LAG_S:
            return 0  # recorded by a writer before 0010, moments ago: Stripe's summary may not show it yet
        if request is None or now.timestamp() - since > IDENTIFIER_WINDOW_S:
            meter = await check.meter() if stream.event_name else None
            await self._settle_old_pending(conn, row, stream, meter, fence)
            return 0
        return await self._send(conn, row, request, row.pending_attempt, target, stream, fence)

    async def _send(
        self,
        conn: psycopg.AsyncConnection,
        row: Row,
        request: Request,
        attempt: int,
        target: int,
        stream: Stream,
        fence: Fence,
    ) -> int:
        """Send a recorded request: at once on v1; on the stream (or ``auto``) it joins the outbox,
        which goes out when it holds a full request and at the end of the round."""
        queued = _Queued(row, request, attempt, target, stream, fence)
        if self.api == "v1":
            return await self._send_one(conn, queued)
        return await self._queue(conn, queued)

    async def _queue(self, conn: psycopg.AsyncConnection, queued: _Queued) -> int:
        self._outbox.append(queued)
        self._round_events += 1
        return await self._flush(conn) if len(self._outbox) >= self.batch_size else 0

    async def _send_one(self, conn: psycopg.AsyncConnection, queued: _Queued) -> int:
        """One v1 call with the recorded request."""
        await self.budget.acquire()
        started = time.perf_counter()
        result = await send(self.client, queued.request, queued.attempt)
        metrics.STRIPE_PUSH_SECONDS.observe(time.perf_counter() - started)
        metrics.STRIPE_SEND_REQUESTS.labels("v1").inc()
        metrics.STRIPE_SENT_EVENTS.labels("v1").inc()
        if result.outcome == "delivered":
            self.budget.recovered()
        return await self._settle(conn, queued, result)

    async def _flush(self, conn: psycopg.AsyncConnection) -> int:
        """Send the outbox: on the API ``choose_api`` picks for the round's projected rate."""
        batch, self._outbox = self._outbox, []
        batch = await self._record_batch(conn, batch)
        if not batch:
            return 0
        rate = projected_rate(self._round_events, self.flush_interval)
        if choose_api(self.api, rate, 1.0 / self.budget.interval) == "v1":
            return sum([await self._send_one(conn, queued) for queued in batch])
        result = await self._stream(batch)
        if result.outcome == "delivered":
            self.budget.recovered()
            # one commit for the request's events: if it fails, they stay pending and are sent again
            # with their identifiers, which Stripe has (it counts them once)
            async with conn.transaction():
                return sum([await self._settle(conn, queued, result) for queued in batch])
        if result.outcome in ("rate_limited", "unreachable"):
            self.budget.slow_down(result.retry_after)  # once for the request, not once per event
        return sum([await self._settle(conn, queued, result, pace=False) for queued in batch])

    async def _record_batch(self, conn: psycopg.AsyncConnection, batch: list[_Queued]) -> list[_Queued]:
        """Record the batch's new requests as pending, in one commit, before any is sent (a crash
        after it leaves them pending, sent again unchanged); those whose row moved on are left out."""
        new = [queued for queued in batch if queued.unrecorded is not None]
        if not new:
            return batch
        kept: set[int] = set()
        async with conn.transaction():
            for queued in new:
                assert queued.unrecorded is not None and queued.at is not None
                rows = self.push_rows(conn)
                if await rows.record_pending(queued.unrecorded, queued.request, queued.fence, queued.at):
                    kept.add(id(queued))
        return [queued for queued in batch if queued.unrecorded is None or id(queued) in kept]

    async def _stream(self, batch: list[_Queued]) -> SendResult:
        """One request on the v2 stream, within the calls and the events budgets; a token Stripe says
        has expired is replaced and the request sent again (the identifiers make that safe)."""
        requests = [queued.request for queued in batch]
        result = SendResult("transient", "no request was sent")
        for _ in range(2):
            try:
                token = await self.session.token()
            except stripe.StripeError as exc:  # after the calls' retries: the requests wait, pending
                return SendResult("transient", f"no meter event session: {type(exc).__name__}: {exc}")
            await self.budget.acquire()
            await self.events.acquire(len(requests))
            started = time.perf_counter()
            result = await send_batch(self.client, token, requests)
            metrics.STRIPE_PUSH_SECONDS.observe(time.perf_counter() - started)
            metrics.STRIPE_SEND_REQUESTS.labels("v2").inc()
            metrics.STRIPE_SENT_EVENTS.labels("v2").inc(len(requests))
            if result.code != SESSION_EXPIRED:
                return result
            self.session.expired()
        return result

    async def _settle(
        self, conn: psycopg.AsyncConnection, queued: _Queued, result: SendResult, pace: bool = True
    ) -> int:
        """Record what Stripe answered for a sent request; 1 when it landed."""
        row, request, target, stream, fence = (
            queued.row, queued.request, queued.target, queued.stream, queued.fence,
        )  # fmt: skip
        metrics.STRIPE_PUSHES.labels(result.outcome).inc()
        now = self.clock.utc()
        if result.outcome == "delivered":
            synced = held_once_landed(row, request, stream.aggregation) == target
            added = None if stream.aggregation == "last" else request.value
            delivery = Delivery(request.identifier, request.to_units, synced, added)
            await self.push_rows(conn).mark_delivered(row, delivery, fence, now)
            return 1
        await self._failed(conn, row, request, result, stream, fence, now, pace)
        return 0

    async def _failed(
        self,
        conn: psycopg.AsyncConnection,
        row: Row,
        request: Request,
        result: SendResult,
        stream: Stream,
        fence: Fence,
        now: datetime,
        pace: bool = True,
    ) -> None:
        """``pace``: whether a 429 or no answer slows the budget here (a stream request does it once)."""
        key = "/".join(map(str, row.key[:3])) + f" @{row.key[3]:%Y-%m-%dT%H:%MZ}"
        if result.outcome in ("refused", "refused_for_now"):
            await self._refused(conn, row, request, result, stream, fence, now, key)
        elif result.outcome == "idempotency_conflict":
            metrics.STRIPE_IDEMPOTENCY_CONFLICTS.inc()
            log.error(
                "idempotency_error for %s of %s: the key was first used with other parameters; parked, not"
                " retried (%s)", request.identifier, key, result.reason,
            )  # fmt: skip
            await self.push_rows(conn).park(row, f"idempotency_error: {result.reason}", fence, now)
        else:
            if pace and result.outcome in ("rate_limited", "unreachable"):
                self.budget.slow_down(result.retry_after)
            new_key = result.outcome == "server_error"  # Stripe replays a 500 to the same key
            failure = Failure(request.identifier, result.reason)
            await self.push_rows(conn).mark_attempt(row, failure, fence, now, new_key=new_key)

    async def _refused(
        self,
        conn: psycopg.AsyncConnection,
        row: Row,
        request: Request,
        result: SendResult,
        stream: Stream,
        fence: Fence,
        now: datetime,
        key: str,
    ) -> None:
        """Stripe refused the request: it did not land. A refusal that may pass later (plan.
        refusal_is_temporary) sends it again unchanged, under a new idempotency key (Stripe may keep the
        refusal for the key), for up to an hour; any other parks the counter and forgets the request,
        so that once the cause is fixed a new one is planned."""
        code = result.code or "none"
        temporary = result.outcome == "refused_for_now" or await self._may_pass(result.code, request, stream)
        if not temporary:
            metrics.STRIPE_REFUSALS.labels("permanent", code).inc()
            log.warning("Stripe refused %s for %s: %s (parked)", request.identifier, key, result.reason)
            failure = Failure(request.identifier, f"Stripe refused: {result.reason}")
            await self.push_rows(conn).refuse_pending(row, failure, fence, now)
        elif refused_too_long(row, now.timestamp()):
            metrics.STRIPE_REFUSALS.labels("expired", code).inc()
            log.warning(
                "Stripe has refused %s for %s for over an hour: %s (parked)", request.identifier, key,
                result.reason,
            )  # fmt: skip
            reason = f"Stripe refused it for over an hour (a refusal that should pass): {result.reason}"
            await self.push_rows(conn).refuse_pending(row, Failure(request.identifier, reason), fence, now)
        else:
            metrics.STRIPE_REFUSALS.labels("temporary", code).inc()
            log.info("Stripe refused %s for %s for now: %s", request.identifier, key, result.reason)
            reason = f"Stripe refused it for now: {result.reason}"
            failure = Failure(request.identifier, reason)
            await self.push_rows(conn).mark_attempt(row, failure, fence, now, new_key=True, refused=True)

    async def _may_pass(self, code: str | None, request: Request, stream: Stream) -> bool:
        """Whether a refusal for ``code`` may pass later. For a meter Stripe did not take: whether its
        meters, read again now, have one that can carry the metric (created or reactivated a moment
        ago). For a customer it did not know: whether it has the customer when asked now."""
        fits = exists = False
        if code in METER_CODES:
            meter = await self.meters.fresh(request.event_name)
            fits = meter_problem(meter, request.event_name, stream.aggregation) is None
        if code in CUSTOMER_CODES and request.customer:
            exists = await self._customer_exists(request.customer)
        return refusal_is_temporary(code, fits, exists)

    async def _customer_exists(self, customer: str) -> bool:
        try:
            found = await self.calls(self.client.v1.customers.retrieve_async, customer)
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                return False
            raise
        return not getattr(found, "deleted", False)

    async def _park(self, conn: psycopg.AsyncConnection, row: Row, reason: str, fence: Fence) -> None:
        log.warning("parked %s/%s/%s @%s: %s", *row.key, reason)
        await self.push_rows(conn).park(row, reason, fence, self.clock.utc())

    async def _settle_old_pending(
        self,
        conn: psycopg.AsyncConnection,
        row: Row,
        stream: Stream,
        meter: StripeMeterSpec | None,
        fence: Fence,
    ) -> None:
        """A request pending longer than Stripe keeps identifiers: did it land? Stripe's summary of the
        hour holds what was delivered to it (pushes and reconciliation's corrections), plus the
        request if it landed."""
        raw = row.pending_raw or {}
        identifier = str(raw.get("identifier"))
        to_units = int(raw.get("toUnits", row.pushed_units))
        if meter is None:
            await self._park(
                conn, row, f"pending {identifier} is older than 24 h and its meter is unknown", fence
            )
            return
        customer = stream.stripe_customer
        if customer is None:
            await self._park(
                conn, row, f"pending {identifier} is older than 24 h; no customer mapping", fence
            )
            return
        start = int(row.key[3].timestamp())
        page = await self.calls(
            self.client.v1.billing.meters.event_summaries.list_async,
            meter.id,
            {"customer": customer, "start_time": start, "end_time": start + 3600},
        )
        holds = sum(round(float(s.aggregated_value or 0)) for s in page.data)
        last = meter.formula == "last"
        added: int | None = None  # what the hour gains if it landed: a last request replaces instead
        if last:  # the hour's newest event, or no event at all; the request was stamped after the others
            summary = holds if page.data else None
            held = row.pushed_units if row.stripe_holds else None
            without, landed = held, to_units
            verdict = did_last_land(summary, held, to_units)
        else:  # the hour holds what it held plus the request's value (a drop report may have lowered it)
            added = int(raw["value"]) if "value" in raw else to_units - row.pushed_units
            corrections = await delivered_corrections(conn, row.key)
            without, landed = row.pushed_units + corrections, row.pushed_units + added + corrections
            uncertain = await uncertain_corrections(conn, row.key)
            verdict = did_it_land(holds, without, landed, uncertain)
        now = self.clock.utc()
        if verdict == "landed":
            log.info("pending %s older than 24 h had landed (Stripe holds %d)", identifier, holds)
            delivery = Delivery(identifier, to_units, False, added)
            await self.push_rows(conn).mark_delivered(row, delivery, fence, now)
        elif verdict == "not_landed":
            log.info(
                "pending %s older than 24 h never landed (Stripe holds %d): planning anew", identifier, holds
            )
            failure = Failure(identifier, "not in Stripe's summary after 24 h")
            await self.push_rows(conn).forget_pending(row, failure, fence, now)
        else:
            held_text = "nothing" if without is None else without
            await self._park(
                conn, row, f"cannot tell whether {identifier} landed: Stripe's hour holds {holds}, expected"
                f" {held_text} (not landed) or {landed} (landed); reconcile this hour", fence,
            )  # fmt: skip


@dataclass(frozen=True)
class _Queued:
    """A request recorded as pending, with what settling its answer needs."""

    row: Row
    request: Request
    attempt: int
    target: int
    stream: Stream
    fence: Fence
    unrecorded: Row | None = None  # the row as read, while the request is not recorded yet
    at: datetime | None = None  # when it was planned (the recording's time)


class _WriterRounds(StageHooks):
    """The writer's work besides recording deltas: leases follow the partitions; every
    ``flush_interval`` a round of pushes and of the counters backfill."""

    def __init__(self, writer: StripeWriter, conn: psycopg.AsyncConnection):
        self.writer = writer
        self.conn = conn
        self.last_flush = 0.0

    async def started(self, consumer: AIOKafkaConsumer) -> None:
        await self.writer.assign_old_rows(self.conn, consumer)

    async def assigned(self, consumer: AIOKafkaConsumer, partitions: set[TopicPartition]) -> None:
        await self.writer.ownership.on_partitions_assigned(partitions)

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        await self.writer.ownership.on_partitions_revoked(partitions)

    async def between_batches(self, consumer: AIOKafkaConsumer) -> None:
        if time.monotonic() - self.last_flush >= self.writer.flush_interval:
            self.last_flush = time.monotonic()
            await self.writer.push_due(self.conn)
            await self.writer.backfill_step(self.conn, consumer)


class _MeterCheck:
    """A stream's meter for one round: read from the catalog once, and read again from Stripe
    (``MeterCatalog.fresh``: at most once a second for the whole writer) before a problem with it parks
    a counter: the catalog may predate the operator's fix."""

    def __init__(self, meters: MeterCatalog, stream: Stream):
        self.meters = meters
        self.stream = stream
        self._meter: StripeMeterSpec | None = None
        self._read = False
        self._fresh = False

    async def meter(self) -> StripeMeterSpec | None:
        if not self._read and self.stream.event_name:
            self._meter = await self.meters.get(self.stream.event_name)
            self._read = True
        return self._meter

    async def usable(self) -> tuple[StripeMeterSpec | None, str | None]:
        """The meter and, when it cannot carry the metric, why (``plan.meter_problem``)."""
        name, aggregation = self.stream.event_name or "", self.stream.aggregation
        meter = await self.meter()
        problem = meter_problem(meter, name, aggregation)
        if problem is not None and not self._fresh:
            self._fresh = True
            self._meter = meter = await self.meters.fresh(name)
            problem = meter_problem(meter, name, aggregation)
        return meter, problem[1] if problem else None
