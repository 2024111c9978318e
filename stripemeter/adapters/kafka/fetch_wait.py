"""The worker's Faust consumer: a fetch waits at most 100 ms at the broker, a commit never passes a
message not acknowledged, and every partition is sought to where it starts after an assignment.

aiokafka keeps one fetch in flight per broker, and leaves out of it every partition whose records
the application has not consumed yet. When the application is a little behind, the fetch can
therefore hold only partitions that never get data: Faust's ``__assignor-__leader`` topic for the
meter, the dead-letter topic for the sink, an idle partition of ``usage.events`` for intake or of
``usage.deltas`` for the Stripe writer. The broker then keeps it until ``fetch_max_wait_ms``, and
the partitions that do have data wait with it.

Faust hard-codes 1,500 ms (faust-streaming 0.15). Measured at 10,000 events/s: once the meter fell
behind for a moment, every fetch cycle held such a fetch for 1.5 s, the backlog it built kept the
meter behind, and produce-to-delta latency stayed at p50 1.3 s / p99 2-3.5 s for the rest of the
run. With 100 ms: p50 0.3 s, p99 0.5-0.7 s throughout. An idle worker sends ten fetches a second.

The same consumer commits strictly (``_Consumer._new_offset``): Faust commits the first run of
acknowledged offsets unless it starts more than one past the committed offset, so with offset C
committed (the next to read), C never acknowledged and C+1.. acknowledged, it commits past C and the
message at C is never read again. Here a run is committed only when it starts at the committed
offset; a message not acknowledged holds the commit back, and a restart reads it again.

After each assignment Faust resumes the partitions, then seeks each to its committed offset, then
lets the stream flow; whatever the consumer fetched in between is dropped. aiokafka seeks only a
partition with a committed offset past 0, which would leave a partition never committed past the
records dropped that way, unread (``tests/integration/test_rebalance_held_message.py``). Here such
a partition is sought to its beginning, where the consumer starts it anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

FETCH_MAX_WAIT_MS = 100


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by start(), which builds the Fetcher
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _new_offset(self, tp: Any) -> int | None:
        acked = self._acked[tp]
        committed = self._committed_offset[tp]
        if acked and committed is not None and min(acked) > committed and not self._gap[tp]:
            return None  # the committed offset's message was never acknowledged: commit nothing past it
        offset: int | None = super()._new_offset(tp)
        return offset

    async def seek_to_committed(self) -> Mapping[TP, int]:
        changelogs = set(self.app.tables.changelog_topics)  # restored by the recovery, never sought here
        consumer = self._thread._ensure_consumer()
        # None where nothing was committed, as Faust's own returns (its annotation says int)
        committed = await self._thread.call_thread(_seek_to_start, consumer, changelogs)
        return cast(Mapping[TP, int], committed)


async def _seek_to_start(consumer: aiokafka.AIOKafkaConsumer, changelogs: set[str]) -> dict[Any, int | None]:
    """aiokafka's ``seek_to_committed``, seeking the partitions never committed (changelogs aside) to
    their beginning as well. Those go first: the committed partitions are sought last, with nothing
    awaited after them, so the window in which a fetch from the committed offset can be dropped is no
    wider than Faust's own."""
    committed = {tp: await consumer.committed(tp) for tp in consumer.assignment()}
    never = [tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs]
    if never:
        await consumer.seek_to_beginning(*never)
    for tp, offset in committed.items():
        if offset:
            consumer.seek(tp, offset)
    return committed


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport, with the fetch wait, the strict commit and the seek above."""

    Consumer = _Consumer
