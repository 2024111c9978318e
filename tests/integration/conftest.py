"""Integration tests run on the real local Kafka and PostgreSQL (started once, or reused)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from stripemeter.adapters.kafka.admin import create_topics_of, delete_topics_of
from stripemeter.api.app import create_app as create_api
from stripemeter.domain.config import Settings, load_settings
from stripemeter.tools.local.stack import on_one_broker, up
from stripemeter.tools.stripe_emulator import EmulatorState
from stripemeter.tools.stripe_emulator import create_app as create_emulator
from tests.integration.harness import ApiClient, StartWorker, WorkerProcess, free_port, isolated_settings
from tests.integration.stripe_helpers import emulator_settings


@pytest.fixture(scope="session")
def stack() -> Settings:
    settings = on_one_broker(load_settings())
    up(settings, say=lambda message: print(message), with_app=False)
    return settings


@pytest_asyncio.fixture
async def env(stack: Settings, tmp_path: Path) -> AsyncIterator[Settings]:
    """Settings isolated for one test, with its topics created (and deleted after it)."""
    settings = isolated_settings(stack, tmp_path)
    kafka, app_id, prefix = settings.kafka, settings.app_id, settings.topic_prefix
    await create_topics_of(kafka, app_id, prefix, settings.partitions)
    yield settings
    await delete_topics_of(kafka, app_id, prefix)  # a test that stopped the broker leaves them over


@pytest.fixture
def workers(env: Settings, tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for worker in started:
        worker.stop()


@pytest.fixture
def start_worker(env: Settings, tmp_path: Path, workers: list[WorkerProcess]) -> StartWorker:
    """Start a worker; workers of one ``slot`` share a state dir and port (a restart of the same
    machine), workers of different slots are different machines."""
    ports: dict[str, int] = {}

    def start(
        name: str = "w1", slot: str | None = None, args: tuple[str, ...] = (), **overrides: object
    ) -> WorkerProcess:
        slot = slot or name
        port = ports.setdefault(slot, free_port())
        overrides = {"state_dir": tmp_path / f"state-{slot}", "worker_web_port": port, **overrides}
        worker = WorkerProcess(env, tmp_path / f"{name}.log", args, **overrides).start()
        workers.append(worker)
        return worker

    return start


@pytest_asyncio.fixture
async def api(env: Settings) -> AsyncIterator[ApiClient]:
    client = TestClient(TestServer(create_api(env)))
    await client.start_server()
    yield client
    await client.close()


@pytest_asyncio.fixture
async def emulator() -> AsyncIterator[tuple[EmulatorState, str]]:
    """The Stripe emulator in this process (tests inspect and fault it directly), and its base URL."""
    state = EmulatorState(ops_per_second=0)  # unlimited: these tests are not about Stripe's rate limit
    server = TestServer(create_emulator(state), host="127.0.0.1", port=free_port())
    await server.start_server()
    yield state, str(server.make_url("")).rstrip("/")
    await server.close()


@pytest_asyncio.fixture
async def stripe_api(env: Settings, emulator: tuple[EmulatorState, str]) -> AsyncIterator[ApiClient]:
    """The API with Stripe's settings pointing at the ``emulator`` (mappings check their meters)."""
    client = TestClient(TestServer(create_api(env.with_overrides(**emulator_settings(emulator[1])))))
    await client.start_server()
    yield client
    await client.close()
