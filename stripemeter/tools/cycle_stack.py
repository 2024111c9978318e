"""The processes `bench cycle` runs next to its worker: the API and the Stripe emulator, on ports of
their own and on the application's clock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
from aiohttp import web

from stripemeter.domain.clock import Clock
from stripemeter.domain.config import Settings, settings_env
from stripemeter.tools.local.procs import free_port
from stripemeter.tools.stripe_emulator import EmulatorState, create_app

INGEST_CHUNK = 1000  # events per ingest call at most


class Emulator:
    """The Stripe emulator in this process (the run reads its events and calls directly)."""

    def __init__(self) -> None:
        self.state = EmulatorState(ops_per_second=0)  # the run measures our side, not Stripe's limit
        self.port = free_port()
        self.runner = web.AppRunner(create_app(self.state), access_log=None)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def set_clock(self, clock: Clock) -> None:
        self.state.clock_offset = clock.offset_seconds

    async def stop(self) -> None:
        await self.runner.cleanup()


class ApiProcess:
    """``stripemeter api`` as a child process; ``ingest`` posts events to it in input order."""

    def __init__(self, settings: Settings, log: Path):
        self.settings = settings
        self.log = open(log, "ab")  # noqa: SIM115 - held for the child's lifetime
        env = {**os.environ, **settings_env(settings)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stripemeter", "api"],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.session: aiohttp.ClientSession | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    def wait_live(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited early; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.base + "/health/live", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the API did not start in time")

    async def ingest(self, events: list[bytes]) -> None:
        """Every event accepted, or an error: the oracle counts them all."""
        if self.session is None:
            self.session = aiohttp.ClientSession()
        for i in range(0, len(events), INGEST_CHUNK):
            body = b'{"events":[' + b",".join(events[i : i + INGEST_CHUNK]) + b"]}"
            headers = {"Content-Type": "application/json"}
            async with self.session.post(self.base + "/v1/events/ingest", data=body, headers=headers) as r:
                answer = await r.json()
                if r.status != 202 or any(e["status"] != "accepted" for e in answer["results"]):
                    raise RuntimeError(f"ingest answered {r.status}: {str(answer)[:500]}")

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
