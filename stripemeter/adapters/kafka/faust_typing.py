"""Typed forms of the Faust calls whose own annotations mypy cannot use; each calls Faust unchanged.

- ``App.timer`` is ``@no_type_check`` and returns a bare ``Callable``; ``App.task`` returns a union of
  a decorator and a decorated function. Both register an ``async def`` of no arguments and return a
  coroutine function of that same shape (Faust's wrapper around it), which is what is stated here.
- ``App.tables`` is typed as ``TableManagerT``, which lacks ``recovery``; the manager it is (the
  default ``conf.TableManager``, ``faust.tables.TableManager``) has it.

Use::

    @timer(app, 5.0)
    async def tick() -> None: ...

    @task(app)
    async def once() -> None: ...
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP

AsyncFn = Callable[[], Awaitable[None]]
Decorator = Callable[[AsyncFn], AsyncFn]


def timer(app: faust.App, interval: float) -> Decorator:
    """``@app.timer(interval)``: runs the function every ``interval`` seconds once the worker is up.
    Faust names the timer after the function's qualified name (in its drift and overlap log lines)."""
    return cast(Decorator, app.timer(interval))


def task(app: faust.App) -> Decorator:
    """``@app.task``: runs the function once, when the worker is up."""
    return cast(Decorator, app.task)


def recovery(app: faust.App) -> Recovery:
    """``app.tables.recovery``: the changelog recovery of the app's table manager."""
    return cast(TableManager, app.tables).recovery


def committed_offset(app: faust.App, tp: TP) -> int | None:
    """The offset the app's consumer last committed for ``tp`` (the next to read), or None when it
    knows none (Faust keeps 0 as None too)."""
    offset = app.consumer._committed_offset.get(tp)  # type: ignore[attr-defined]
    return int(offset) if offset is not None else None


def still_current(app: faust.App, message: Any) -> bool:
    """Whether the consumer generation that delivered ``message`` still holds its partition: the test
    Faust's stream makes before it yields a message, made again by a caller that awaited since. A
    rebalance that began meanwhile (flow suspended, or a new generation assigned) leaves the message to
    whoever holds the partition next, who reads it again from the committed offset."""
    return bool(app.flow_control.is_active()) and message.generation_id == app.consumer_generation_id


async def start_offsets(app: faust.App, tps: list[TP]) -> dict[int, int]:
    """Per partition of ``tps``, where the app's consumer starts reading it: the committed offset, or
    the partition's earliest one when none was committed or retention removed the committed one (the
    consumer resets to the earliest then)."""
    earliest = await app.consumer.earliest_offsets(*tps) if tps else {}
    return {tp.partition: max(committed_offset(app, tp) or 0, int(earliest.get(tp, 0))) for tp in tps}
