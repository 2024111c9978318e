"""The meter loads the metric policies before the first message of a partition it did not hold: one
load serves every partition assigned when it begins (streams/worker/upkeep.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from stripemeter.domain.config import Settings
from stripemeter.domain.policy import MetricPolicy, Policies
from stripemeter.streams.worker.upkeep import PolicyLoader


class CountingLoader(PolicyLoader):
    def __init__(self, during_load: Callable[[], None] = lambda: None) -> None:
        super().__init__(Settings(), Policies(MetricPolicy(), {}))
        self.loads = 0
        self.during_load = during_load

    async def load(self) -> None:
        self.loads += 1
        self.during_load()


def test_one_load_serves_every_partition_held_when_it_began() -> None:
    async def run() -> None:
        loader = CountingLoader()
        for partition in (2, 0, 3, 1, 2):
            await loader.ready_for(partition, lambda: [0, 1, 2, 3])
        assert loader.loads == 1
        loader.forget()  # a rebalance: whatever comes next is loaded for again
        await loader.ready_for(1, lambda: [1])
        await loader.ready_for(1)
        assert loader.loads == 2

    asyncio.run(run())


def test_a_rebalance_during_the_load_leaves_every_partition_to_load_again() -> None:
    async def run() -> None:
        loader = CountingLoader()
        loader.during_load = loader.forget
        await loader.ready_for(0, lambda: [0, 1])
        assert loader.loaded_for == set()
        loader.during_load = lambda: None
        await loader.ready_for(1, lambda: [0, 1])
        assert (loader.loads, loader.loaded_for) == (2, {0, 1})

    asyncio.run(run())
