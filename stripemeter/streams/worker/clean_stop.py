"""The worker's graceful stop: end the stages and their children, then the meter's producer."""

from __future__ import annotations

import asyncio

import faust

from stripemeter.streams.stages import StageProcesses
from stripemeter.streams.worker.in_process import InProcessStages
from stripemeter.streams.worker.meter import Meter


def install_clean_stop(
    app: faust.App, stopping: asyncio.Event, stages: InProcessStages, children: StageProcesses, meter: Meter
) -> None:
    """Service ``CleanStop``, whose stop sets ``stopping`` and stops everything in that order."""

    class CleanStop(faust.Service):
        """Marks a graceful stop so the next start keeps RocksDB.

        No new checkpoint runs here: Faust has closed the tables by now. Local RocksDB only ever
        receives what a checkpoint also sends to the changelog, so once the last checkpoint has
        finished without error, local state equals the changelog; unacknowledged input is simply
        read again by whoever owns the partition next.
        """

        async def on_stop(self) -> None:
            stopping.set()
            stages.stop()
            await children.stop()
            await meter.stop()

    app.service(CleanStop)
