"""The Stripe writer: usage.deltas -> what each counter holds -> one meter event per change.

Per counter, in this order (crash-safe):
1. the newest total from usage.deltas is stored (highest seq wins), then the offsets are committed;
2. a push is planned and recorded as pending (identifier + target) before Stripe is called;
3. Stripe is called with that identifier; success, or "an event already exists with identifier",
   records the target as pushed.
A crash between 2 and 3 sends the same identifier again, which Stripe refuses as a duplicate: the
event counts once. Pushes of a counter are serialised, so coalescing is natural: whatever arrived
since the last push goes out as one difference.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

import psycopg
import stripe
from aiokafka import AIOKafkaConsumer

from stripemeter import metrics
from stripemeter.clock import SYSTEM, Clock
from stripemeter.db import pushes
from stripemeter.streams.deltas import decode_delta
from stripemeter.streams.fetch_wait import FETCH_MAX_WAIT_MS
from stripemeter.stripe_push.client import send
from stripemeter.stripe_push.plan import next_push, not_begun, units

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 5.0


class RateLimiter:
    """At most ``rate`` calls per second, spread evenly."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate
        self._next = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        if self._next > now:
            await asyncio.sleep(self._next - now)
        self._next = max(now, self._next) + self.interval


class StripeWriter:
    def __init__(
        self,
        bootstrap: str,
        deltas_topic: str,
        group_id: str,
        database_url: str,
        client: stripe.StripeClient,
        calls_per_second: float = 20.0,
        flush_interval: float = 1.0,
        clock: Clock = SYSTEM,
    ):
        self.clock = clock
        self.bootstrap = bootstrap
        self.deltas_topic = deltas_topic
        self.group_id = group_id
        self.database_url = database_url
        self.client = client
        self.limiter = RateLimiter(calls_per_second)
        self.flush_interval = flush_interval
        self._backoff_until = 0.0
        self._backoff = 0.5
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            self.deltas_topic,
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        )
        await consumer.start()
        conn = await psycopg.AsyncConnection.connect(self.database_url, autocommit=True)
        log.info("stripe writer started: %s -> Stripe Billing Meters", self.deltas_topic)
        last_flush = 0.0
        try:
            while not self._stopping.is_set():
                batch = await consumer.getmany(timeout_ms=100, max_records=5000)
                if batch:
                    deltas = [decode_delta(m.value) for msgs in batch.values() for m in msgs if m.value]
                    await pushes.record_latest(conn, deltas, self.clock.utc())
                    await consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in batch.items()})
                if time.monotonic() - last_flush >= self.flush_interval:
                    last_flush = time.monotonic()
                    await self.push_due(conn)
        finally:
            await conn.close()
            await consumer.stop()

    async def push_due(self, conn: psycopg.AsyncConnection, limit: int = 500) -> int:
        """Push every counter that has a change; returns how many pushes Stripe accepted."""
        delivered = 0
        for key, state, mapping, _attempts in await pushes.due(conn, limit, self.clock.utc()):
            if self._stopping.is_set() or time.monotonic() < self._backoff_until:
                break
            if mapping is None:
                await pushes.mark_status(
                    conn, key, "unmapped", "no metric or customer mapping yet", self.clock.utc()
                )
                continue
            if not_begun(state, int(self.clock())):
                continue  # stays due until its hour begins
            push = next_push(state, mapping)
            if push is None:
                await pushes.mark_pushed(conn, key, state.pushed_units, True, self.clock.utc())
                continue
            if state.pending_identifier is None:
                await pushes.mark_pending(conn, key, push.identifier, push.to_units, self.clock.utc())
            await self.limiter.wait()
            started = time.perf_counter()
            result = await send(self.client, push)
            metrics.STRIPE_PUSH_SECONDS.observe(time.perf_counter() - started)
            metrics.STRIPE_PUSHES.labels(result.outcome).inc()
            if result.outcome in ("delivered", "duplicate"):
                synced = push.to_units == units(state.latest_micros)
                await pushes.mark_pushed(conn, key, push.to_units, synced, self.clock.utc())
                delivered += 1
                self._backoff = 0.5
            elif result.outcome == "permanent":
                log.warning("parked %s/%s/%s @%s: %s", *key, result.reason)
                await pushes.mark_status(conn, key, "parked", result.reason, self.clock.utc())
            else:
                await pushes.mark_failed_attempt(conn, key, result.reason, self.clock.utc())
                if result.outcome == "rate_limited" or "APIConnectionError" in result.reason:
                    # exponential, capped, with jitter so that many writers do not retry in step
                    self._backoff_until = time.monotonic() + self._backoff * random.uniform(0.5, 1.0)
                    self._backoff = min(self._backoff * 2, MAX_BACKOFF_SECONDS)
        metrics.STRIPE_PARKED.set(await pushes.parked_count(conn))
        return delivered
