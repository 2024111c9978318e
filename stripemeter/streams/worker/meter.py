"""The meter: its Faust agent, the checkpoints, the dedupe sweep and the checkpoint producer they share."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from faust.types import TopicT

from stripemeter.adapters.kafka.admin import message_limits
from stripemeter.adapters.kafka.changelog_state import ChangelogState, mark_clean_stop
from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.adapters.kafka.faust_typing import (
    committed_offset,
    recovery,
    start_offsets,
    still_current,
    task,
    timer,
)
from stripemeter.core.dedupe_sweep import DedupeSweep
from stripemeter.core.metering import Metering
from stripemeter.domain import metrics
from stripemeter.domain.config import Settings
from stripemeter.domain.policy import DEDUPE_MARGIN_MS
from stripemeter.schemas.packing import payload_limit
from stripemeter.schemas.topics import TopicNames
from stripemeter.schemas.versions import UnknownRecordVersion
from stripemeter.streams.checkpoint import Checkpointer
from stripemeter.streams.meter_progress import MeterProgress
from stripemeter.streams.watchdog import restart_process
from stripemeter.streams.worker.names import WORKER_LOGGER
from stripemeter.streams.worker.upkeep import PolicyLoader

log = logging.getLogger(WORKER_LOGGER)

CHECKPOINT_INTERVAL = 0.2  # seconds; bounds produce-to-delta latency together with intake polling
# After a correction is applied the checkpoint runs this soon rather than at the next tick: a replay or
# an adjustment waits for the counters to show it. The moment lets the other partitions' control
# messages of the same fetch join the checkpoint.
AWAITED_CHECKPOINT_DELAY = 0.005
DEDUPE_SWEEP_INTERVAL = 5.0  # between steps of the dedupe sweep (stripemeter/core/dedupe_sweep.py)
PROGRESS_WATCH_INTERVAL = 10.0  # how often the stall check runs (streams/meter_progress.py)


class Meter:
    """Counts the keyed events into the tables; nothing is counted or checkpointed before the
    checkpoint producer has started (``producer_started``)."""

    def __init__(
        self, settings: Settings, names: TopicNames, states: dict[str, ChangelogState], loader: PolicyLoader
    ) -> None:
        self.settings = settings
        self.names = names
        self.loader = loader
        self.metering = Metering(
            states["dedupe"],
            states["counters"],
            states["watermarks"],
            loader.policies,
            events_topic=names.events,
        )
        self.checkpointer = Checkpointer(self.metering, states, names)
        self.producer_started = asyncio.Event()
        self._awaited_checkpoint: asyncio.Task[None] | None = None  # a checkpoint a caller waits for
        self.progress = MeterProgress()
        self.sweep = DedupeSweep(
            self.metering, states["dedupe"], DEDUPE_MARGIN_MS, clock_ms=settings.clock.ms
        )

    def install(self, app: faust.App, keyed_topic: TopicT) -> None:
        """The meter agent, the checkpoint timer and the dedupe sweep timer."""
        metering, checkpointer, producer_started = self.metering, self.checkpointer, self.producer_started
        settings, names, sweep, loader = self.settings, self.names, self.sweep, self.loader

        def keyed_partitions() -> list[int]:
            return [tp.partition for tp in app.consumer.assignment() if tp.topic == names.keyed]

        async def meter(stream: Any) -> None:
            await producer_started.wait()
            async for event in stream.noack().events():
                tp, offset = event.message.tp, event.message.offset
                committed = committed_offset(app, tp)
                if tp.partition not in self.progress.expected:
                    log.info(
                        "meter: first message of keyed partition %d since the assignment: offset %d"
                        " (committed %s)", tp.partition, offset, committed,
                    )  # fmt: skip
                skipped = self.progress.skipped(tp.partition, offset, committed)  # per event: no await
                if skipped is not None:
                    await self.skipped(app, tp, offset, skipped, committed)
                # the mappings of a partition taken over
                await loader.ready_for(event.message.partition, keyed_partitions)
                if not still_current(app, event.message):
                    # A rebalance began while this message waited: its partition's changes have been
                    # flushed, and counting it now would write that partition's changelogs behind the
                    # back of its next owner (which reads it again from the committed offset).
                    metrics.STALE_KEYED_MESSAGES.inc()
                    log.info(
                        "meter: keyed message %s[%d]@%d was delivered before a rebalance that began while"
                        " it waited; left to the partition's next owner",
                        names.keyed, tp.partition, offset,
                    )  # fmt: skip
                    continue
                if event.value:
                    try:
                        with metrics.COUNTING_BATCH_SECONDS.time():
                            handled = metering.handle(
                                event.message.partition,
                                event.message.offset,
                                event.value,
                                settings.clock.ms(),
                                names.keyed,
                            )
                    except UnknownRecordVersion as exc:
                        # written by a later release: neither counted nor set aside, and not acknowledged;
                        # the worker stops (and stops again after a restart) until it is upgraded
                        log.critical(
                            "keyed message %s[%d]@%d: %s; stopping the worker",
                            names.keyed, event.message.partition, event.message.offset, exc,
                        )  # fmt: skip
                        await app.crash(exc)
                        return
                    if not handled:
                        metrics.POISON_MESSAGES.labels("meter").inc()
                checkpointer.add(event)
                if metering.outcomes.awaited:
                    checkpoint_soon()

        async def checkpoint() -> None:
            # Once the app stops (a crash included) Faust runs no revoke flush before the consumer
            # leaves, and another worker may own the partitions soon: what is unacknowledged by then
            # is read again from the committed offsets, so nothing is sent after that.
            if not producer_started.is_set() or app.should_stop:
                return
            try:
                await checkpointer.run()
            except Exception as exc:  # a lost write must never be acknowledged: restart instead
                log.exception("checkpoint failed; crashing the worker so unacknowledged input is read again")
                await app.crash(exc)

        async def awaited_checkpoint() -> None:
            """Until no applied correction waits for a checkpoint (one may arrive while one runs); a
            checkpoint that took nothing (the worker stopping) leaves the rest to the timer."""
            while metering.outcomes.awaited and not checkpointer.failed:
                await asyncio.sleep(AWAITED_CHECKPOINT_DELAY)
                waiting = metering.outcomes
                await checkpoint()
                if metering.outcomes is waiting:
                    return

        def checkpoint_soon() -> None:
            if self._awaited_checkpoint is None or self._awaited_checkpoint.done():
                self._awaited_checkpoint = asyncio.ensure_future(awaited_checkpoint())

        async def expire_dedupe() -> None:
            """Keeps dedupe state bounded: lateness window plus a margin behind each stream's watermark."""
            if app.rebalancing or not recovery(app).completed.is_set():
                return
            partitions = set(keyed_partitions())
            for partition in partitions:
                checked, expired = await sweep.step(partition, lambda: bool(app.rebalancing))
                metrics.DEDUPE_EXPIRED.inc(expired)
                if expired:
                    log.info(
                        "expired %d of %d dedupe entries checked in partition %d", expired, checked, partition
                    )
                if app.rebalancing:
                    return

        async def watch_progress() -> None:
            """Restart the worker when an assigned partition's messages wait and the meter reads none."""
            quiet = not app.rebalancing and recovery(app).completed.is_set() and not loader.waiting
            tps = [tp for tp in app.consumer.assignment() if tp.topic == names.keyed] if quiet else []
            try:
                ends = await app.consumer.highwaters(*tps) if tps else {}
                starts = await start_offsets(app, tps)
            except Exception as exc:  # the broker busy or away a moment: not a stall, look again later
                log.info("could not read the keyed partitions' offsets (%s)", exc)
                quiet, tps, ends, starts = False, [], {}, {}
            behind = self.progress.behind({tp.partition: end for tp, end in ends.items()}, starts)
            if self.progress.stalled(behind, quiet and bool(tps)):
                log.error(
                    "the meter read nothing of a keyed partition for %.0f s while it holds unread"
                    " messages (unread per partition: %s); restarting the worker to read them from the"
                    " committed offsets",
                    self.progress.stall_seconds,
                    {p: n for p, n in behind.items() if n},
                )
                restart_process()

        app.agent(keyed_topic, name="meter")(meter)
        timer(app, CHECKPOINT_INTERVAL)(checkpoint)
        timer(app, DEDUPE_SWEEP_INTERVAL)(expire_dedupe)
        timer(app, PROGRESS_WATCH_INTERVAL)(watch_progress)

    async def skipped(
        self, app: faust.App, tp: Any, offset: int, expected: int, committed: int | None
    ) -> None:
        """Restart the worker rather than count a message that skipped others (see streams/meter_progress.py);
        a skip over messages the broker no longer has (retention) is not one, nor is the first message
        of a partition never committed when it is the partition's earliest."""
        earliest = (await app.consumer.earliest_offsets(tp)).get(tp)
        if earliest is not None and earliest >= offset:
            if committed:  # a committed offset the broker no longer has
                log.warning(
                    "keyed partition %d starts at %d: messages before it are gone (retention)",
                    tp.partition,
                    offset,
                )
            return
        log.error(
            "keyed partition %d handed the meter offset %d while %d was next (committed %s): restarting the"
            " worker so that no message is skipped",
            tp.partition, offset, expected, committed,
        )  # fmt: skip
        restart_process()

    def install_producer(self, app: faust.App) -> None:
        """The task starting the checkpoint producer, which lets the meter and its checkpoints begin."""
        settings, names, checkpointer = self.settings, self.names, self.checkpointer
        producer_started = self.producer_started

        async def start_producer() -> None:
            checkpointer.producer = AIOKafkaProducer(
                **client_kwargs(settings.kafka),
                acks="all",
                enable_idempotence=True,
                linger_ms=2,
                max_batch_size=1024 * 1024,
                max_request_size=16 * 1024 * 1024,
            )
            await checkpointer.producer.start()
            limits = await message_limits(settings.kafka, [names.ledger])
            checkpointer.ledger_limit = payload_limit(limits[names.ledger])
            producer_started.set()

        task(app)(start_producer)

    async def before_revoke(self) -> None:
        """Nothing staged for a partition may reach its changelog after another worker took it over."""
        if self.producer_started.is_set():
            await self.checkpointer.run()
        self.sweep.forget()
        self.loader.forget()
        self.progress.assigned()

    async def stop(self) -> None:
        """After the last checkpoint: stop the producer and, if no checkpoint ever failed, mark a clean
        stop so the next start keeps RocksDB."""
        if self._awaited_checkpoint is not None:
            await asyncio.wait([self._awaited_checkpoint])  # it crashes the worker itself if it fails
        if self.producer_started.is_set():
            clean = await self.checkpointer.wait_idle()
            await self.checkpointer.producer.stop()
            if clean:
                mark_clean_stop(self.settings.worker_data_dir)
            else:
                log.warning("a checkpoint failed; the next start rebuilds tables from the changelogs")
