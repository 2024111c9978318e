"""The worker's Faust consumer fetches with the short wait of stripemeter/adapters/kafka/fetch_wait.py,
not Faust's 1.5 s."""

from __future__ import annotations

from pathlib import Path

from faust.transport.consumer import ThreadDelegateConsumer
from faust.types import TP

from stripemeter.adapters.kafka import fetch_wait
from stripemeter.domain.config import Settings
from stripemeter.streams.worker_app import create_app


async def test_the_meter_consumer_waits_at_most_fetch_max_wait_ms(tmp_path: Path) -> None:
    app = create_app(Settings(state_dir=tmp_path))
    assert isinstance(app.transport, fetch_wait.Transport)
    assert isinstance(app.consumer, ThreadDelegateConsumer)
    assert isinstance(app.consumer._thread, fetch_wait._ConsumerThread)
    consumer = app.consumer._thread._create_worker_consumer(app.transport)  # built, not started
    try:
        assert consumer._fetch_max_wait_ms == fetch_wait.FETCH_MAX_WAIT_MS == 100
    finally:
        await consumer.stop()  # closes it without having connected: no unclosed-consumer warning


async def test_no_commit_passes_a_message_never_acknowledged(tmp_path: Path) -> None:
    """Offset 100 committed (the next to read); 101 and 102 acknowledged, 100 not: Faust alone would
    commit 103 and 100 would never be read again."""
    app = create_app(Settings(state_dir=tmp_path))
    consumer = app.consumer
    assert isinstance(consumer, fetch_wait._Consumer)
    tp = TP("events-keyed", 1)
    consumer._committed_offset[tp] = 100
    consumer._acked[tp] = [101, 102]
    consumer._acked_index[tp] = {101, 102}
    assert consumer._new_offset(tp) is None
    consumer._acked[tp] = [100, 101, 102]  # once 100 is acknowledged, the run from it commits
    consumer._acked_index[tp] = {100, 101, 102}
    assert consumer._new_offset(tp) == 103
