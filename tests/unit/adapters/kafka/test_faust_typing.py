"""stripemeter/adapters/kafka/faust_typing.py only restates Faust's own calls with types: the same
registrations result."""

from __future__ import annotations

import inspect
from pathlib import Path

import faust

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
