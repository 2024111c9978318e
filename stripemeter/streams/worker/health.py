"""The worker's readiness and status, and its /health and /metrics pages."""

from __future__ import annotations

from typing import Any

import faust
from aiohttp import web as aioweb

from stripemeter.adapters.kafka.faust_typing import recovery
from stripemeter.streams.stages import StageProcesses


class Health:
    """Ready once tables are recovered, no rebalance runs and every child stage process runs."""

    def __init__(self, app: faust.App, children: StageProcesses, keyed_topic: str) -> None:
        self.app = app
        self.children = children
        self.keyed_topic = keyed_topic

    def readiness(self) -> dict[str, Any]:
        recovered = recovery(self.app).completed.is_set()
        rebalancing = bool(self.app.rebalancing)
        stages = self.children.running()  # {} unless intake and the sink are child processes
        return {
            "ready": recovered and not rebalancing and all(stages.values()),
            "tablesRecovered": recovered,
            "rebalancing": rebalancing,
            "stagesRunning": stages,
        }

    def status(self) -> dict[str, Any]:
        """What the heartbeat records: readiness and the number of keyed partitions held."""
        partitions = len([tp for tp in self.app.consumer.assignment() if tp.topic == self.keyed_topic])
        return {**self.readiness(), "partitions": partitions}

    def install(self, app: faust.App) -> None:
        """Pages /health/live, /health/ready (503 until ready) and /metrics (with the children's)."""
        status, children = self.readiness, self.children

        @app.page("/health/live")
        async def live(self: Any, request: Any) -> Any:
            return self.json({"status": "alive"})

        @app.page("/health/ready")
        async def ready(self: Any, request: Any) -> Any:
            body = status()
            body = {"status": "ready" if body.pop("ready") else "not_ready", **body}
            return self.json(body, status=200 if body["status"] == "ready" else 503)

        @app.page("/metrics")
        async def prometheus(self: Any, request: Any) -> Any:
            body = await children.exposition()
            return aioweb.Response(body=body, content_type="text/plain", charset="utf-8")
