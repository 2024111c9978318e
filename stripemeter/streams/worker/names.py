"""The names the worker's log lines and Faust timers carry, whichever module of the worker they come from."""

from __future__ import annotations

# every piece logs as the worker always has, so log filters and searches keep finding its lines
WORKER_LOGGER = "stripemeter.streams.worker_app"
