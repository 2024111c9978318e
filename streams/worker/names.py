"""The names the worker's log lines and Faust timers carry, whichever module of the worker they come from."""

from __future__ import annotations

# every piece logs as the worker always has, so log filters and searches keep finding its lines
WORKER_LOGGER = "stripemeter.streams.app"


def timer_name(function: str) -> str:
    """Faust names a timer after its function's qualified name and prints it in its drift and overlap
    log lines; the worker's timers keep the names they had when ``create_app`` defined them all."""
    return f"stripemeter.streams.app.create_app.<locals>.{function}"
