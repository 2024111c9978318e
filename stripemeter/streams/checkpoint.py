"""Checkpoint: make everything the processed messages caused durable, then acknowledge them.

Everything a checkpoint sends is taken in one synchronous snapshot when it begins (the pending
messages, their outcomes, every table's staged changes, the counters' totals); messages handled while
its records are in flight wait for the next checkpoint. The order, and why it is exact:
1. dedupe and counter changelog records, ledger records and too-late records; wait for all;
2. watermark changelog records and one usage.deltas record per touched counter (its total and seq
   when the checkpoint began); wait for all. Watermarks go after counters so that a durable
   watermark implies that the decisions that advanced it are durable too: re-reading the input
   after a crash then finds the same dedupe entries and never calls a counted event "too late";
3. record in each changelog partition's store how far it is persisted;
4. acknowledge the keyed messages, so Faust may commit their offsets.
A crash anywhere before 4 leaves those messages uncommitted: they are read again, every counter
skips what it already applied and its latest total is published again (the writer keeps the
highest seq).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from stripemeter.adapters.kafka.changelog_state import ChangelogState, send_records
from stripemeter.core.counting import split_counter_key
from stripemeter.core.metering import (
    CORRECTION,
    KEY_REUSED,
    NOT_REAGGREGATED,
    POLICY_UPDATE,
    REAGGREGATED,
    Metering,
)
from stripemeter.domain import metrics
from stripemeter.schemas.deltas import Delta, encode_delta
from stripemeter.schemas.held_json import dumps_held
from stripemeter.schemas.packing import pack_arrays, payload_limit
from stripemeter.schemas.partitioning import Partitioner, delta_routing_key
from stripemeter.schemas.topics import TopicNames
from stripemeter.schemas.versions import load_value

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(
        self,
        metering: Metering,
        states: dict[str, ChangelogState],
        names: TopicNames,
        producer: AIOKafkaProducer | None = None,
    ):
        self.metering = metering
        self.states = states
        self.names = names
        self.producer: AIOKafkaProducer = producer  # set once the loop runs
        self.pending: list[Any] = []  # faust events processed but not yet acknowledged
        self._lock = asyncio.Lock()
        self.failed = False  # a checkpoint raised: local state may be ahead of the changelogs
        self._deltas_partition: Partitioner | None = None
        self.ledger_limit = payload_limit(8 * 1024 * 1024)  # the broker's, once the producer starts

    def add(self, event: Any) -> None:
        self.pending.append(event)

    async def wait_idle(self) -> bool:
        """Wait for a running checkpoint to finish; True if none ever failed."""
        async with self._lock:
            return not self.failed

    async def run(self) -> int:
        """One checkpoint; returns the number of deltas published."""
        async with self._lock:
            try:
                with metrics.CHECKPOINT_SECONDS.time():
                    return await self._run()
            except BaseException:
                self.failed = True
                raise

    async def _run(self) -> int:
        if not self.pending and not self.metering.outcomes.touched and not self.metering.outcomes.ledger:
            return 0
        if self._deltas_partition is None:
            self._deltas_partition = Partitioner(len(await self.producer.partitions_for(self.names.deltas)))
        # No await from here to the first send: the meter handles messages between awaits, so this
        # snapshot holds exactly what the messages in ``pending`` caused, in every table and delta.
        # Messages handled while this checkpoint's records are in flight wait for the next one.
        pending, self.pending = self.pending, []
        outcomes = self.metering.take_outcomes()
        staged = {name: self.states[name].take_staged() for name in ("dedupe", "counters", "watermarks")}
        deltas = self._deltas(outcomes.touched)
        persisted: list[tuple[ChangelogState, int, asyncio.Future[Any], int]] = []

        futures = await self._send_changelog(staged, ("dedupe", "counters"), persisted)
        ledger = [dumps_held(item) for item in outcomes.ledger]
        for message in pack_arrays(ledger, self.ledger_limit):  # by bytes: the ledger topic's limit
            futures.append(await self.producer.send(self.names.ledger, message))
        for record in outcomes.late:
            futures.append(await self.producer.send(self.names.late, record))
        for record in outcomes.dead:  # events the meter could not count, with their reasons
            futures.append(await self.producer.send(self.names.dlq, record))
        await _all(futures)

        futures = await self._send_changelog(staged, ("watermarks",), persisted)
        for partition, records in deltas.items():
            futures.extend(
                future
                for future, _ in await send_records(self.producer, self.names.deltas, partition, records)
            )
        await _all(futures)

        for state, partition, future, count in persisted:
            state.mark_persisted(partition, future.result().offset + count - 1)
        for event in pending:
            event.ack()
        for outcome, n in outcomes.counts.items():
            if outcome == CORRECTION:
                metrics.CORRECTIONS.inc(n)
            elif outcome == KEY_REUSED:
                metrics.KEYS_REUSED.inc(n)
            elif outcome == POLICY_UPDATE:
                metrics.POLICY_UPDATES.inc(n)
            elif outcome == REAGGREGATED:
                metrics.REAGGREGATED_COUNTERS.labels("reaggregated").inc(n)
            elif outcome == NOT_REAGGREGATED:
                metrics.REAGGREGATED_COUNTERS.labels("impossible").inc(n)
            else:
                metrics.EVENTS.labels(outcome).inc(n)
        metrics.DELTAS.inc(len(outcomes.touched))
        return len(outcomes.touched)

    def _deltas(self, touched: dict[bytes, int]) -> dict[int, list[tuple[bytes | None, bytes | None]]]:
        """A usage.deltas record per touched counter, keyed ``tenant|metric|customer``, per partition."""
        assert self._deltas_partition is not None  # set by _run before the snapshot
        counters = self.states["counters"]
        out: dict[int, list[tuple[bytes | None, bytes | None]]] = defaultdict(list)
        for ckey, partition in touched.items():
            raw = counters.get(partition, ckey)
            if raw is None:
                continue
            value = load_value(raw)
            tenant, metric, customer, bucket = split_counter_key(ckey.decode())
            record = encode_delta(
                Delta(tenant, metric, customer, bucket, value[0], value[1], partition, value[2])
            )
            routing = delta_routing_key(tenant, metric, customer)
            out[self._deltas_partition(routing)].append((routing.encode(), record))
        return out

    async def _send_changelog(
        self,
        staged: dict[str, dict[int, dict[bytes, bytes | None]]],
        tables: Sequence[str],
        persisted: list[tuple[ChangelogState, int, asyncio.Future[Any], int]],
    ) -> list[asyncio.Future[Any]]:
        futures: list[asyncio.Future[Any]] = []
        for name in tables:
            state = self.states[name]
            for partition, changes in staged[name].items():
                if not changes:
                    continue
                sent = await send_records(
                    self.producer, state.changelog_topic, partition, list(changes.items())
                )
                futures.extend(future for future, _ in sent)
                last_future, last_count = sent[-1]
                persisted.append((state, partition, last_future, last_count))
        return futures


async def _all(futures: list[asyncio.Future[Any]]) -> None:
    if futures:
        await asyncio.gather(*futures)
