"""`bench failover`: how long a worker needs to take over a partition holding N dedupe entries.

The run writes N entries in the dedupe table's wire format straight to partition 0 of its changelog
(as the meter's checkpoints would have), then times three starts of a one-partition worker until it
reports ready (``/health/ready``: its tables recovered) and until it has counted an event sent just
before it started:
- baseline: a worker of another app id over empty tables (process start, group join, empty recovery);
- cold: a worker with no local state, as a takeover without standby replicas: Faust restores the
  whole partition from the changelog;
- warm: the same worker again after a clean stop, its RocksDB current: recovery reads only what the
  changelog holds past the store's persisted offset.
With ``standby``, it then times a takeover from a standby copy: the worker runs again as the owner, a
second worker of the same app keeps a standby copy of the partition until the copy holds every entry,
then the owner stops; timed from the owner's stop signal until the second worker holds the partition
and until it has counted an event sent once the owner had exited.
It also reports the bytes per entry in the changelog's log segments and in the partition's RocksDB
files, and the worker's RSS after the restore.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from stripemeter.adapters.kafka.changelog_state import send_records
from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.domain.config import Settings
from stripemeter.domain.timefmt import iso_ms
from stripemeter.schemas.dedupe import dump_entry
from stripemeter.schemas.topics import TopicNames
from stripemeter.tools.bench import Worker, isolated, release
from stripemeter.tools.local.kafka import LocalKafka
from stripemeter.tools.local.procs import free_port

Say = Callable[[str], None]
SEP = b"\x1f"
BATCH = 20_000  # records handed to the producer at a time
TENANT = b"bench"
CUSTOMERS = 100_000
READY_TIMEOUT = 3600.0


@dataclass(frozen=True)
class Start:
    ready_s: float  # until /health/ready
    counting_s: float  # until the probe event sent before the start is counted
    rss_mib: float


def entries(count: int, now_ms: int) -> Iterator[tuple[bytes, bytes]]:
    """Dedupe entries as the meter writes them: a derived idempotency key under the tenant, and an
    event of the last ``count`` ms (never behind any watermark: the sweep keeps them all)."""
    for i in range(count):
        key = "drv_" + hashlib.sha256(i.to_bytes(8, "big")).hexdigest()[:32]
        offset = 100_000_000 + i  # offsets of a partition that has run for a while
        value = dump_entry(
            0, offset, i % 100, offset, now_ms - count + i, "requests", f"cust-{i % CUSTOMERS:06d}"
        )
        yield TENANT + SEP + key.encode(), value


async def write_changelog(settings: Settings, topic: str, count: int, say: Say) -> float:
    """Write ``count`` entries to partition 0 of ``topic``; returns the seconds it took."""
    producer = AIOKafkaProducer(
        **client_kwargs(settings.kafka), acks="all", linger_ms=5, max_batch_size=1024 * 1024
    )
    await producer.start()
    started = time.perf_counter()
    try:
        batch: list[tuple[bytes | None, bytes | None]] = []
        pending = []
        written = 0
        for key, value in entries(count, int(time.time() * 1000)):
            batch.append((key, value))
            if len(batch) == BATCH:
                pending = [f for f, _ in await send_records(producer, topic, 0, batch)]
                await asyncio.gather(*pending)
                written += len(batch)
                batch = []
                if written % max(BATCH, count // 10 // BATCH * BATCH) == 0:
                    say(f"  wrote {written:,} entries ({time.perf_counter() - started:.0f} s)")
        if batch:
            await asyncio.gather(*[f for f, _ in await send_records(producer, topic, 0, batch)])
    finally:
        await producer.stop()
    return time.perf_counter() - started


def files_bytes(root: Path, part: str, suffixes: tuple[str, ...] = ()) -> int:
    """Bytes of the files under directories of ``root`` whose name contains ``part``."""
    total = 0
    for directory in root.rglob(f"*{part}*"):
        if directory.is_dir():
            total += sum(
                f.stat().st_size
                for f in directory.rglob("*")
                if f.is_file() and (not suffixes or f.name.endswith(suffixes))
            )
    return total


def metric(worker: Worker, series: str) -> float:
    """One series of the worker's /metrics (0 while it cannot answer or has not reported it)."""
    url = f"http://127.0.0.1:{worker.settings.worker_web_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def counted(worker: Worker) -> float:
    """The worker's counted events."""
    return metric(worker, 'stripemeter_events_total{outcome="counted"}')


async def until(condition: Callable[[], bool], worker: Worker, what: str) -> float:
    """Poll ``condition`` (a blocking call) until it holds; returns when it did (perf_counter)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline or not worker.alive():
            raise RuntimeError(f"{what}: not seen in time; see {worker.log.name}")
        await asyncio.sleep(0.05)
    return time.perf_counter()


async def send_probe(env: Settings, topic: str) -> None:
    """One usage event for the next worker to count: it has taken over once that is counted."""
    producer = AIOKafkaProducer(**client_kwargs(env.kafka), acks="all")
    await producer.start()
    try:
        now_ms = int(time.time() * 1000)
        event = {"tenantId": "probe", "metric": "requests", "customerRef": "p", "quantity": 1}
        event |= {"ts": iso_ms(now_ms), "idempotencyKey": f"probe-{uuid.uuid4().hex}"}
        await producer.send_and_wait(topic, orjson.dumps(event))
    finally:
        await producer.stop()


async def start(env: Settings, names: TopicNames, log: Path, workers: list[Worker]) -> tuple[Worker, Start]:
    """Start a worker (added to ``workers``) and wait until it is ready and has counted an event sent
    just before."""
    await send_probe(env, names.events)
    started = time.perf_counter()
    worker = Worker(env, log)
    workers.append(worker)
    await asyncio.to_thread(worker.wait_ready, READY_TIMEOUT)
    ready = time.perf_counter() - started
    deadline = time.monotonic() + READY_TIMEOUT
    while counted(worker) < 1:
        if time.monotonic() > deadline or not worker.alive():
            raise RuntimeError(f"the worker did not count the probe event; see {log}")
        await asyncio.sleep(0.05)
    return worker, Start(ready, time.perf_counter() - started, worker.rss_mib())


def timing(start: Start) -> str:
    return (
        f"ready in {start.ready_s:.1f} s, counting in {start.counting_s:.1f} s, RSS {start.rss_mib:.0f} MiB"
    )


async def failover(settings: Settings, count: int, say: Say, standby: bool = False) -> None:
    broker_data = LocalKafka.from_settings(settings).data_dir
    base, base_names = await isolated(settings, f"fo-base-{uuid.uuid4().hex[:6]}", partitions=1)
    env, names = await isolated(settings, f"fo-{uuid.uuid4().hex[:6]}", partitions=1)
    logs = settings.state_dir / "bench" / "logs"
    workers: list[Worker] = []  # every worker started; all are stopped at the end, however it ends
    try:
        say("baseline: a worker over empty tables")
        worker, baseline = await start(base, base_names, logs / f"{base.app_id}.log", workers)
        worker.stop()
        say(f"  {timing(baseline)}")

        topic = names.changelog("dedupe")
        say(f"writing {count:,} dedupe entries to {topic}[0]")
        wrote = await write_changelog(env, topic, count, say)
        say(f"  {count / wrote:,.0f} entries/s")
        log_bytes = files_bytes(broker_data, f"{topic}-0", (".log",))
        say(f"changelog: {log_bytes / 2**20:,.1f} MiB in log segments, {log_bytes / count:.1f} B/entry")

        say("cold takeover: a worker with no local state restores the partition from the changelog")
        worker, cold = await start(env, names, logs / f"{env.app_id}.log", workers)
        worker.stop()
        restore_s = max(cold.ready_s - baseline.ready_s, 1e-3)
        say(f"  {timing(cold)}; restored {count / restore_s:,.0f} entries/s (ready time over the baseline's)")
        tables = env.worker_data_dir
        sst, total = files_bytes(tables, "dedupe", (".sst",)), files_bytes(tables, "dedupe")
        say(
            f"RocksDB: {sst / 2**20:,.1f} MiB in SST files ({sst / count:.1f} B/entry),"
            f" {total / 2**20:,.1f} MiB with its logs and manifests"
        )

        say("warm start: the same worker again, its RocksDB current")
        worker, warm = await start(env, names, logs / f"{env.app_id}.log", workers)
        if not standby:
            worker.stop()
        say(f"  {timing(warm)}")
        summary = (
            f"summary: {count:,} entries; changelog {log_bytes / count:.1f} B/entry; RocksDB SST"
            f" {sst / count:.1f} B/entry; restore {count / restore_s:,.0f} entries/s; counting after"
            f" {cold.counting_s:.1f} s cold, {warm.counting_s:.1f} s warm,"
            f" {baseline.counting_s:.1f} s baseline"
        )
        if standby:
            took = await standby_takeover(env, names, worker, count, logs, workers, say)
            summary += f", {took:.1f} s from a standby copy"
        say(summary)
    finally:
        for worker in workers:
            worker.stop()
        await release(base)
        await release(env)


async def standby_takeover(
    env: Settings, names: TopicNames, owner: Worker, count: int, logs: Path, workers: list[Worker], say: Say
) -> float:
    """With ``owner`` holding the partition, start a second worker that keeps a standby copy of it; once
    the copy holds every entry, stop the owner and time the second worker's takeover. Returns the
    seconds from the owner's stop signal until the second worker has counted an event."""
    say("standby takeover: a second worker keeps a standby copy, then the owner stops")
    second_env = env.with_overrides(state_dir=env.state_dir / "standby", worker_web_port=free_port())
    second = Worker(second_env, logs / f"{env.app_id}-standby.log")
    workers.append(second)
    started = time.perf_counter()

    def copy_current() -> bool:
        copied = metric(second, "stripemeter_standby_records_total")
        return copied >= count and metric(second, "stripemeter_standby_lag_records") == 0

    copied_at = await until(copy_current, second, "the standby copy holding every entry")
    copied_s = copied_at - started
    say(f"  the copy holds every entry {copied_s:.1f} s after the second worker started")
    stop_signal = time.perf_counter()
    await asyncio.to_thread(owner.stop)
    exited_s = time.perf_counter() - stop_signal
    await send_probe(env, names.events)
    holding_at = await until(
        lambda: metric(second, "stripemeter_worker_assigned_partitions") >= 1, second, "the partition moving"
    )
    counting_at = await until(lambda: counted(second) >= 1, second, "the second worker counting")
    took = counting_at - stop_signal
    say(
        f"  owner exited {exited_s:.1f} s after its stop signal; the second worker held the partition after"
        f" {holding_at - stop_signal:.1f} s and counted after {took:.1f} s, RSS {second.rss_mib():.0f} MiB"
    )
    return took
