"""A rolling upgrade from the previous release, checked against the oracle.

A worker of the previous release (its source taken from git) and a worker of this one share the
consumer group, the topics and the changelogs; the previous one is replaced mid-stream, as one step
of a rolling update does, while events with duplicates and late ones arrive. During the mixed phase
this release writes the previous record format (``STRIPEMETER_RECORD_WRITE_VERSION=1``); once the
previous release is gone every worker is restarted with the current format and more events follow,
some of them duplicates of events counted before the upgrade: the topics and changelogs then hold
both formats, and every event must still be counted exactly once (docs/upgrades.md).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from stripemeter.adapters.kafka import lag
from stripemeter.domain.config import Settings, settings_env
from stripemeter.schemas.topics import TopicNames
from tests.integration.client import counters_of, eventually, outcomes_of, produce, read_topic
from tests.integration.harness import StartWorker, WorkerProcess, free_port
from tests.integration.test_exactly_once import assert_matches_oracle, during, send_anchors, stream_slowly
from tests.integration.workload import HOUR_MS, Workload, build

pytestmark = pytest.mark.exactly_once  # never rerun by CI; repeated by ./dev soak

# The release before this one: the commit the previous format's workers run.
PREVIOUS_RELEASE = "5452263"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The previous release's source tree (from this repository's history)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the previous release's source cannot be taken from history")
    found = subprocess.run(
        ["git", "-C", str(ROOT), "cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}"], capture_output=True
    )
    if found.returncode != 0:
        pytest.skip(f"commit {PREVIOUS_RELEASE} (the previous release) is not in this clone's history")
    tree = tmp_path_factory.mktemp("previous-release")
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", PREVIOUS_RELEASE], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout, check=True)
    assert archive.wait() == 0
    yield tree


class PreviousWorker(WorkerProcess):
    """``stripemeter worker`` of the previous release: this interpreter and its libraries, the previous
    release's ``stripemeter`` package first on the path."""

    def __init__(self, tree: Path, settings: Settings, log_path: Path, **overrides: object):
        super().__init__(settings, log_path, (), **overrides)
        self.tree = tree

    def environment(self) -> dict[str, str]:
        return {**os.environ, **settings_env(self.settings), "PYTHONPATH": str(self.tree)}

    def package_file(self) -> str:
        probe = [sys.executable, "-c", "import stripemeter; print(stripemeter.__file__)"]
        out = subprocess.run(probe, env=self.environment(), cwd=self.tree, capture_output=True, check=True)
        return out.stdout.decode().strip()

    def start(self) -> PreviousWorker:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stripemeter", "worker"],
            env=self.environment(),
            cwd=self.tree,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self


def bucket_of(iso_ts: str) -> int:
    ms = int(datetime.fromisoformat(iso_ts.replace("Z", "+00:00")).timestamp() * 1000)
    return ms - ms % HOUR_MS


def after_the_upgrade(w: Workload) -> list[dict[str, object]]:
    """Events for the counters ``w`` counted before the upgrade: every anchor again (duplicates, whose
    dedupe entries were written in the previous format) and a new event per anchor's counter (its
    counter and watermark stored in the previous format). ``w``'s oracle is updated."""
    events: list[dict[str, object]] = []
    for anchor in w.anchors:
        events.append(dict(anchor))
        w.outcomes["duplicate"] += 1
        fresh = {**anchor, "quantity": 2, "idempotencyKey": f"after-{anchor['idempotencyKey']}"}
        events.append(fresh)
        w.expected[(str(anchor["metric"]), str(anchor["customerRef"]), bucket_of(str(anchor["ts"])))] += (
            2_000_000
        )
        w.outcomes["counted"] += 1
    return events


def formats(values: list[bytes]) -> set[str]:
    """Which record formats the values of an array topic (keyed, ledger) or a changelog are in."""
    seen = set()
    for value in values:
        if value.startswith((b"[2,", b'["v2",')):
            seen.add("current")
        elif value[:1] in (b"[", b"-") or value[:1].isdigit():
            seen.add("previous")
        else:
            seen.add(f"unknown {value[:8]!r}")
    return seen


async def test_previous_and_current_release_side_by_side_count_every_event_once(
    env: Settings, tmp_path: Path, previous_release: Path, workers: list[WorkerProcess]
) -> None:
    def worker(name: str, version: int, previous: bool = False, slot: str | None = None) -> WorkerProcess:
        overrides: dict[str, object] = {
            "state_dir": tmp_path / f"state-{slot or name}",
            "worker_web_port": free_port(),
            "record_write_version": version,
        }
        log_path = tmp_path / f"{name}.log"
        if previous:
            started: WorkerProcess = PreviousWorker(previous_release, env, log_path, **overrides).start()
        else:
            # pinned to the previous format, a worker also keeps no standby copies: the previous release
            # would keep those assigned to it with Faust's reader, which can skip records (docs/upgrades.md)
            overrides["standby_replicas"] = 0 if version == 1 else 1
            started = WorkerProcess(env, log_path, (), **overrides).start()
        workers.append(started)
        return started

    old = PreviousWorker(previous_release, env, tmp_path / "probe.log")
    assert old.package_file() == str(previous_release / "stripemeter" / "__init__.py")

    # the mixed phase: a previous-release worker and a current one, pinned to the previous format
    before = build(f"up-{uuid.uuid4().hex[:6]}", customers=30, events=3000)
    previous = worker("previous", 1, previous=True)
    current = worker("current-a", 1)
    await asyncio.gather(asyncio.to_thread(previous.wait_ready), asyncio.to_thread(current.wait_ready))
    await send_anchors(env, before)

    replacement: list[WorkerProcess] = []

    async def roll() -> None:
        await asyncio.sleep(4)
        previous.stop()  # the rolling step: its partitions move to the current worker
        replacement.append(worker("current-b", 1))
        await asyncio.to_thread(replacement[0].wait_ready, 120)

    await during(stream_slowly(env, before, seconds=10), roll)
    await assert_matches_oracle(env, before)

    # the previous release is gone: unpin, one worker after the other, and count more
    after = build(f"up2-{uuid.uuid4().hex[:6]}", customers=30, events=2000, seed=11)
    unpinned = []
    for pinned in (current, replacement[0]):
        pinned.stop()
        unpinned.append(worker(f"{pinned.log_path.stem}-unpinned", 2, slot=pinned.log_path.stem))
        unpinned[-1].wait_ready(120)
    await send_anchors(env, after)
    await produce(env, after_the_upgrade(before))
    await stream_slowly(env, after, seconds=6, seed=3)
    await assert_matches_oracle(env, before)
    await assert_matches_oracle(env, after)

    # one worker lost (kill -9), the other stopped: a worker with no local state restores every table
    # from changelogs holding both formats, and duplicates of events counted under either format are
    # still recognised
    unpinned[0].kill9()
    unpinned[1].stop()
    worker("current-a-rebuilt", 2).wait_ready(120)
    await produce(env, [before.anchors, after.anchors])
    before.outcomes["duplicate"] += len(before.anchors)
    after.outcomes["duplicate"] += len(after.anchors)
    await assert_matches_oracle(env, before)
    await assert_matches_oracle(env, after)

    names = TopicNames(env.topic_prefix, env.app_id)
    for topic in (names.keyed, names.ledger, names.changelog("dedupe"), names.changelog("counters")):
        values = [m.value for m in await read_topic(env, topic, expect=10**9, timeout=5) if m.value]
        assert formats(values) == {"previous", "current"}, topic
    for log_name in ("previous.log", "current-a.log", "current-b.log", "current-a-rebuilt.log"):
        log = (tmp_path / log_name).read_text(errors="replace")
        assert "processing_failed" not in log and "could not be handled" not in log, log_name
        assert "Error in recovery" not in log, log_name


async def test_a_keyed_message_of_a_later_format_stops_the_worker_and_stays_unread(
    env: Settings, start_worker: StartWorker
) -> None:
    """What a later release wrote (a rollback after it unpinned) is neither counted nor dead-lettered:
    the worker says why and stops, the message stays unacknowledged, and the events before it count."""
    worker = start_worker()
    worker.wait_ready()
    tenant = f"fut-{uuid.uuid4().hex[:6]}"
    names = TopicNames(env.topic_prefix, env.app_id)
    ts = int(time.time() * 1000)
    item = [tenant, "requests", "c", 1_000_000, ts, "k", 0, None, None, 0, 0, 0]
    bucket = ts - ts % HOUR_MS
    producer = AIOKafkaProducer(bootstrap_servers=env.kafka_bootstrap_servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(names.keyed, orjson.dumps([2, item]), partition=0)

        async def counted() -> bool:
            return await counters_of(env, tenant) == {("requests", "c", bucket): 1_000_000}

        await eventually(counted, timeout=60, what="the current-format message counted")
        later = [3, [*item[:5], "k2", *item[6:]]]
        await producer.send_and_wait(names.keyed, orjson.dumps(later), partition=0)
    finally:
        await producer.stop()

    async def stopped() -> bool:
        return worker.proc is not None and worker.proc.poll() is not None

    await eventually(stopped, timeout=60, what="the worker to stop at the later format")
    log = worker.log_tail(400)
    assert "CRITICAL" in log and "record format 3" in log and f"{names.keyed}[0]@1" in log, log
    assert await counters_of(env, tenant) == {("requests", "c", bucket): 1_000_000}
    assert await outcomes_of(env, tenant) == {"counted": 1}
    assert await read_topic(env, names.dlq, expect=1, timeout=3) == []
    keyed = [x for x in await lag.measure(env.kafka, names) if x.topic == names.keyed and x.partition == 0]
    assert all(x.messages >= 1 for x in keyed)  # the later-format message is not acknowledged
