"""Test harness: isolated settings per test, and workers as real subprocesses we can kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, TypeAlias
from urllib.parse import quote

import psycopg
from aiohttp import web
from aiohttp.test_utils import TestClient

from stripemeter.domain.config import Settings, settings_env
from stripemeter.streams.stages import stage_children
from stripemeter.tools.local.procs import free_port as free_port  # re-exported: tests import it from here

# The ``api`` fixture's client (and any other TestClient around one of our aiohttp apps).
ApiClient: TypeAlias = TestClient[web.Request, web.Application]


def isolated_settings(base: Settings, tmp: Path, partitions: int = 2) -> Settings:
    """Own topic prefix, app id (so own consumer groups and changelogs), state dir and ports."""
    tag = uuid.uuid4().hex[:8]
    return base.with_overrides(
        topic_prefix=f"t{tag}.",
        app_id=f"sm-{tag}",
        partitions=partitions,
        state_dir=tmp / "state",
        worker_web_port=free_port(),
        api_port=free_port(),
        operator_metrics_port=free_port(),
        # tests share one database: each test's drift must be shown whatever drift others left
        operator_metrics_max_series=1_000_000,
        log_level="INFO",
        # tests share one database: a scheduled run would reconcile every test's tenants against this
        # test's emulator; tests that reconcile do it on demand
        reconcile_interval_seconds=0,
        # API keys are tested on their own (test_security); the other tests call the API without
        auth_enabled=False,
    )


def wait_until(check: Callable[[], object], what: str, timeout: float = 60, interval: float = 0.5) -> None:
    """Poll ``check`` until it is true (a test outside an event loop; inside one: client.eventually)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class WorkerProcess:
    """``stripemeter worker`` as a child process with its own log file."""

    def __init__(self, settings: Settings, log_path: Path, args: tuple[str, ...] = (), **overrides: object):
        self.settings = settings.with_overrides(**overrides) if overrides else settings
        self.log_path = log_path
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.settings.worker_web_port}"

    def start(self) -> WorkerProcess:
        env = {**os.environ, **settings_env(self.settings)}
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stripemeter", "worker", *self.args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.web + "/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.log_tail()}")

    def children(self) -> dict[str, int]:
        """The worker's stage child processes (intake, sink) by stage."""
        assert self.proc is not None
        return stage_children(self.proc.pid)

    def scrape(self) -> str:
        with urllib.request.urlopen(self.web + "/metrics", timeout=5) as r:
            return str(r.read().decode())

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill9()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class StartWorker(Protocol):
    """The ``start_worker`` fixture: start a worker (``slot``: the machine it runs on, default its name)."""

    def __call__(
        self, name: str = "w1", slot: str | None = None, args: tuple[str, ...] = (), **overrides: object
    ) -> WorkerProcess: ...


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: an orphan's reaper may be slow or absent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@contextmanager
def own_schema(base_url: str, prefix: str) -> Iterator[str]:
    """A database URL whose tables live in a schema of their own (``prefix_`` and 8 hex digits),
    dropped on the way out."""
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in base_url else "?"
    try:
        yield f"{base_url}{separator}options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def metric_value(worker: WorkerProcess, name: str) -> float:
    """The value of the worker's unlabelled series ``name`` on its /metrics (0 while it has none)."""
    for line in worker.scrape().splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def assigned_partitions(worker: WorkerProcess) -> int:
    """How many partitions of the keyed topic the worker holds, from its /metrics (0 before any)."""
    return int(metric_value(worker, "stripemeter_worker_assigned_partitions"))


def table_stores(worker: WorkerProcess, table: str) -> dict[int, Path]:
    """The RocksDB store of each partition of ``table`` under the worker's state dir."""
    found = worker.settings.worker_data_dir.rglob(f"{table}-*.db")
    return {int(p.name.removesuffix(".db").rsplit("-", 1)[1]): p for p in found}
