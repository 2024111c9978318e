"""stripemeter/adapters/kafka/faust_typing.py only restates Faust's own calls with types: the same
registrations result."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import faust
from faust.types import TP

from stripemeter.adapters.kafka import faust_typing


def _app(tmp_path: Path) -> faust.App:
    return faust.App(
        "faust-typing-test", broker="kafka://127.0.0.1:1", datadir=str(tmp_path), web_enabled=False
    )


def test_timer_and_task_register_with_faust(tmp_path: Path) -> None:
    app = _app(tmp_path)
    before = len(app._app_tasks)

    @faust_typing.timer(app, 5.0)
    async def tick() -> None:
        pass

    @faust_typing.task(app)
    async def once() -> None:
        pass

    assert app._app_tasks[before:] == [tick, once]
    assert inspect.iscoroutinefunction(tick) and inspect.iscoroutinefunction(once)
    assert tick.__name__ == "tick" and once.__name__ == "once"  # Faust's wrappers keep the name


def test_recovery_is_the_table_managers(tmp_path: Path) -> None:
    app = _app(tmp_path)
    assert faust_typing.recovery(app) is app.tables.recovery  # type: ignore[attr-defined]  # Faust: not on TableManagerT


class _Consumer:
    """The two parts of Faust's consumer that ``start_offsets`` reads."""

    def __init__(self, committed: dict[TP, int], earliest: dict[TP, int]) -> None:
        self._committed_offset = committed
        self.earliest = earliest

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.earliest[tp] for tp in tps}


async def test_a_partition_starts_at_its_committed_offset_or_else_at_its_earliest() -> None:
    keyed = [TP("keyed", 0), TP("keyed", 1), TP("keyed", 2)]
    consumer = _Consumer(
        committed={keyed[0]: 40, keyed[2]: 3}, earliest={keyed[0]: 0, keyed[1]: 7, keyed[2]: 9}
    )
    app = SimpleNamespace(consumer=consumer)
    starts = await faust_typing.start_offsets(app, keyed)  # type: ignore[arg-type]  # a stand-in app
    # 1 was never committed; 2's committed offset is gone (retention): both start at their earliest
    assert starts == {0: 40, 1: 7, 2: 9}
    assert await faust_typing.start_offsets(app, []) == {}  # type: ignore[arg-type]
