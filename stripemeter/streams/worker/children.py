"""Intake and the sink as the worker's child processes (``--stage-processes``), each with a supervisor."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence

import faust

from stripemeter.adapters.kafka.faust_typing import task
from stripemeter.domain.config import Settings, settings_env
from stripemeter.streams.stages import StageProcess, StageProcesses


def stage_children(settings: Settings, stages: Sequence[str]) -> StageProcesses:
    """The child processes for ``stages`` (none: every stage runs in the worker or elsewhere)."""
    return StageProcesses(stages, {**os.environ, **settings_env(settings)})


def install_supervisors(app: faust.App, children: StageProcesses, stopping: asyncio.Event) -> None:
    """One task per child, ``supervise_<stage>``: restarts it whenever it exits before ``stopping``."""
    for child in children.children:
        task(app)(_supervisor(child, stopping))


def _supervisor(child: StageProcess, stopping: asyncio.Event) -> Callable[[], Awaitable[None]]:
    async def supervise() -> None:
        await child.supervise(stopping)

    supervise.__name__ = supervise.__qualname__ = f"supervise_{child.stage}"
    return supervise
