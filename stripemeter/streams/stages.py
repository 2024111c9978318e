"""Intake and the PostgreSQL sink as child processes of the worker, so a worker can use more than one
core (``stripemeter worker --stage-processes``; by default all three stages share one process).

Metering runs in the worker's own process (Faust); ``stripemeter intake`` and ``stripemeter sink`` run
as its children. The worker holds one end of a socket pair per child:
- the worker's ``/metrics`` asks each child for its metrics through it and serves them with a
  ``stage`` label;
- a child reads end of file when the worker is gone, however it went (even ``kill -9``), and stops.

The worker restarts a child that exits while the worker runs, after a backoff. Killing either stage at
any moment is safe: intake acknowledges input only after its output is durable in Kafka, and the sink
only after its rows are committed (both idempotent downstream), so a restart reads again, exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from stripemeter.domain import metrics
from stripemeter.streams import memory_tuning

log = logging.getLogger(__name__)

FIRST_BACKOFF, MAX_BACKOFF = 1.0, 30.0  # seconds before restarting a child that exited
STABLE_SECONDS = 60.0  # a child that ran this long starts again at the first backoff
CLEAN_EXIT_GRACE = 10.0  # a child that stopped cleanly was most likely told to with the worker
METRICS_TIMEOUT = 2.0
STOP_TIMEOUT = 15.0
_HEADER = 12  # request id (4 bytes) + body length (8 bytes)


class Stage(Protocol):
    async def run(self) -> None: ...

    def stop(self) -> None: ...


class StageProcess:
    """One stage (``intake`` or ``sink``) as a supervised child process of the worker."""

    def __init__(self, stage: str, env: dict[str, str]):
        self.stage = stage
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._replies: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._next_request = 0
        self._stopped = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def supervise(self, stopping: asyncio.Event) -> None:
        """Run the child until the worker stops; start it again whenever it exits before."""
        backoff = FIRST_BACKOFF
        while not (stopping.is_set() or self._stopped):
            started = time.monotonic()
            await self._start()
            code = await self._wait_exit(stopping)
            if code is None:
                return
            if time.monotonic() - started > STABLE_SECONDS:
                backoff = FIRST_BACKOFF
            if code == 0:  # only a signal or a lost worker stop a stage cleanly: likely a stop of us all
                log.info("the %s stage stopped (exit 0)", self.stage)
                delay = CLEAN_EXIT_GRACE
            else:
                log.error("the %s stage exited with %s; restarting it in %.0fs", self.stage, code, backoff)
                delay, backoff = backoff, min(backoff * 2, MAX_BACKOFF)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            if not (stopping.is_set() or self._stopped):
                metrics.STAGE_RESTARTS.labels(self.stage).inc()
                log.info("restarting the %s stage", self.stage)

    async def _start(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stripemeter", self.stage, "--worker-socket", str(theirs.fileno())],
                env=self.env,
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        reader, self._writer = await asyncio.open_connection(sock=ours)
        self._replies = asyncio.create_task(self._read_replies(reader))
        log.info("started the %s stage as process %d", self.stage, self.proc.pid)

    async def _wait_exit(self, stopping: asyncio.Event) -> int | None:
        """The child's exit code, or None once the worker stops first."""
        assert self.proc is not None
        while (code := self.proc.poll()) is None:
            if stopping.is_set() or self._stopped:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), 0.5)
        self._close_channel()
        return code

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        """One reader per channel, so a late reply never gets read as the answer to a later request."""
        with contextlib.suppress(asyncio.IncompleteReadError, OSError):
            while True:
                header = await reader.readexactly(_HEADER)
                body = await reader.readexactly(int.from_bytes(header[4:], "big"))
                waiter = self._pending.pop(int.from_bytes(header[:4], "big"), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(body)

    async def metrics_text(self) -> str | None:
        """The child's metrics in Prometheus' text format, or None if it does not answer in time."""
        if self._writer is None or not self.running:
            return None
        self._next_request = request = (self._next_request + 1) % 2**32
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[request] = reply
        try:
            self._writer.write(request.to_bytes(4, "big"))
            await self._writer.drain()
            return (await asyncio.wait_for(reply, METRICS_TIMEOUT)).decode()
        except (OSError, TimeoutError):
            log.warning("the %s stage did not send its metrics within %.0fs", self.stage, METRICS_TIMEOUT)
            return None
        finally:
            self._pending.pop(request, None)

    async def stop(self) -> None:
        """Ask the child to stop (SIGTERM) and wait; kill it if it takes longer than ``STOP_TIMEOUT``."""
        self._stopped = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            deadline = time.monotonic() + STOP_TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if proc.poll() is None:
                log.warning("the %s stage did not stop in %.0fs; killing it", self.stage, STOP_TIMEOUT)
                proc.kill()
                proc.wait()
        self._close_channel()

    def _close_channel(self) -> None:
        if self._replies is not None:
            self._replies.cancel()
        if self._writer is not None:
            self._writer.close()
        self._writer = self._replies = None


class StageProcesses:
    """The worker's children: started with the worker's tasks, stopped with the worker."""

    def __init__(self, stages: Iterable[str], env: dict[str, str]):
        self.children = [StageProcess(stage, env) for stage in stages]

    def running(self) -> dict[str, bool]:
        return {child.stage: child.running for child in self.children}

    async def stop(self) -> None:
        await asyncio.gather(*(child.stop() for child in self.children))

    async def exposition(self) -> bytes:
        """This process's metrics and each child's, labelled with its stage, as one scrape."""
        texts = await asyncio.gather(*(child.metrics_text() for child in self.children))
        return merged_exposition(
            {child.stage: text for child, text in zip(self.children, texts, strict=True) if text}
        )


def stage_children(worker_pid: int) -> dict[str, int]:
    """The stage child processes of the worker ``worker_pid``, by stage (for tests and benchmarks)."""
    children: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit():
                continue
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if parent == worker_pid and b"--worker-socket" in argv:
                children[argv[argv.index(b"--worker-socket") - 1].decode()] = int(proc.name)
        except (OSError, IndexError, ValueError):
            continue
    return children


class _Families:
    """The one method of a registry that ``generate_latest`` calls."""

    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def merged_exposition(children: dict[str, str]) -> bytes:
    """Our own registry plus each child's parsed metrics with a ``stage`` label added to every sample.

    A family both processes have (say ``process_resident_memory_bytes``) becomes one family with a
    series per process, which the text format requires; the labels keep the series apart.
    """
    families = {_exposed_name(family): family for family in REGISTRY.collect()}
    for stage, text in children.items():
        for family in text_string_to_metric_families(text):
            samples = [
                s._replace(labels={**s.labels, "stage": stage})
                for s in family.samples
                if not s.name.endswith("_created")  # the parser cannot always tell whose they are
            ]
            mine = families.get(_exposed_name(family))
            if not samples:
                continue
            if mine is None:
                family.samples = samples
                families[_exposed_name(family)] = family
            elif {mine.type, family.type} <= {"info", "gauge"} or mine.type == family.type:
                mine.samples = [*mine.samples, *samples]
    return generate_latest(_Families(list(families.values())))


def _exposed_name(family: Metric) -> str:
    """The name a family has in the text format: an info family reads back as a ``_info`` gauge."""
    return f"{family.name}_info" if family.type == "info" else family.name


async def serve_worker(fd: int, worker_gone: Callable[[], None]) -> None:
    """A child's side of the socket pair: answer metrics requests; at end of file, stop the stage."""
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=fd))
    try:
        while True:
            request = await reader.readexactly(4)
            body = generate_latest()
            writer.write(request + len(body).to_bytes(8, "big") + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, OSError):
        log.warning("the worker that started this stage is gone; stopping")
        worker_gone()
    finally:
        writer.close()


async def run_stage(stage: Stage, worker_socket: int | None = None) -> None:
    """Run a plain-asyncio stage until it ends, SIGTERM or SIGINT, or (as a worker's child) the worker
    is gone; a signal stops it cleanly, so its consumer leaves the group at once."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stage.stop)
    helpers: list[asyncio.Task[Any]] = []
    if worker_socket is not None:
        helpers.append(asyncio.create_task(serve_worker(worker_socket, stage.stop)))
    try:
        await memory_tuning.run_collecting_cycles(stage.run())
    finally:
        for helper in helpers:
            helper.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
