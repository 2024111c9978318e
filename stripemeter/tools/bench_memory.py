"""`stripemeter bench memory`: each pipeline process's resident memory over a long run at a steady rate.

Events are produced at ``rate`` per second (``per_message`` to a message) for ``minutes``; every
process of the worker (metering, and intake and sink when they run as children) is sampled every few
seconds. A line per minute gives each process's RSS and the events sent and counted in that minute;
the verdict compares each process's RSS from minute ``settle`` to the end with its RSS at minute
``settle``: flat when every sample is within +-``tolerance``. Each minute's line also gives the
metering process's RocksDB block cache, which grows towards its budget by design. The run ends with
every sent event counted (read back from usage.deltas), so a flat curve is never bought by dropping
work.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from stripemeter.adapters.kafka.changelog_state import send_records
from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.domain.config import Settings
from stripemeter.domain.timefmt import iso_ms
from stripemeter.domain.units import MICROS, micros_to_float
from stripemeter.tools.bench import DeltaWatcher, Say, Worker, isolated, release

SAMPLE_SECONDS = 5.0
TICK_SECONDS = 0.1
METERING = "metering"


@dataclass(frozen=True)
class MemoryRun:
    rate: int  # events per second
    minutes: int
    per_message: int = 1
    customers: int = 5000
    partitions: int = 4
    stage_processes: bool = False
    settle: int = 10  # the minute from which RSS must stay flat
    tolerance: float = 0.15


@dataclass
class Samples:
    """RSS in MiB per process, sampled over the run: (seconds since start, MiB)."""

    by_process: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    def add(self, at: float, rss: dict[str, float]) -> None:
        for process, mib in rss.items():
            if mib:
                self.by_process.setdefault(process, []).append((at, mib))

    def at_minute(self, process: str, minute: int) -> float | None:
        """The last sample of ``process`` taken before the end of ``minute`` (1-based)."""
        before = [mib for at, mib in self.by_process.get(process, []) if at < minute * 60]
        return before[-1] if before else None

    def peak(self, process: str) -> float:
        return max((mib for _, mib in self.by_process.get(process, [])), default=0.0)


def flatness(samples: Samples, process: str, settle: int) -> tuple[float, float, float] | None:
    """(RSS at minute ``settle``, lowest and highest deviation from it afterwards as fractions); None when
    the run did not last past minute ``settle``."""
    reference = samples.at_minute(process, settle)
    after = [mib for at, mib in samples.by_process.get(process, []) if at >= settle * 60]
    if reference is None or not after:
        return None
    return reference, min(after) / reference - 1, max(after) / reference - 1


async def memory_run(settings: Settings, run: MemoryRun, say: Say) -> dict[str, Any]:
    env, names = await isolated(settings, uuid.uuid4().hex[:6], run.partitions)
    worker = Worker(env, env.state_dir / "worker.log", run.stage_processes)
    watcher = DeltaWatcher(env, names.deltas)
    samples = Samples()
    done = False
    try:
        await asyncio.to_thread(worker.wait_ready)
        watch = asyncio.ensure_future(watcher.run(lambda: done))
        say(
            f"load: {run.rate:,} events/s, {run.per_message} per message, for {run.minutes} min; RSS of"
            f" every worker process every {SAMPLE_SECONDS:g} s"
        )
        sent = await _steady_load(env, names.events, run, worker, watcher, samples, say)
        deadline = time.perf_counter() + 120
        while watcher.sum_micros < sent * MICROS and time.perf_counter() < deadline and worker.alive():
            await asyncio.sleep(0.5)
        done = True
        await watch
    finally:
        done = True
        worker.stop()
        await release(env)
    if watcher.sum_micros != sent * MICROS:
        raise RuntimeError(f"pipeline counted {micros_to_float(watcher.sum_micros):,.0f} of {sent:,} events")
    say(f"  all {sent:,} events counted ({len(watcher.totals):,} counters)")
    return _verdict(samples, run, sent, say)


async def _steady_load(
    env: Settings,
    topic: str,
    run: MemoryRun,
    worker: Worker,
    watcher: DeltaWatcher,
    samples: Samples,
    say: Say,
) -> int:
    """Produce at the run's rate until its end, sampling RSS; returns the events sent."""
    producer = AIOKafkaProducer(
        **client_kwargs(env.kafka), acks="all", linger_ms=5, max_request_size=8 * 1024 * 1024
    )
    await producer.start()
    try:
        partitions = len(await producer.partitions_for(topic))
        rng = random.Random(7)
        started = time.perf_counter()
        sent, next_sample, minute = 0, started, 1
        counted_at_minute, sent_at_minute = 0, 0
        while (now := time.perf_counter()) - started < run.minutes * 60:
            if not worker.alive():
                raise RuntimeError("the worker exited during the run")
            target = int((now - started) * run.rate)
            target -= target % run.per_message  # whole messages only
            ts = iso_ms(int(time.time() * 1000))
            by_partition: list[list[tuple[bytes | None, bytes | None]]] = [[] for _ in range(partitions)]
            for first in range(sent, target, run.per_message):
                message = _message(rng, first, run, ts)
                by_partition[(first // run.per_message) % partitions].append((None, message))
            for partition, records in enumerate(by_partition):
                if records:
                    await send_records(producer, topic, partition, records)
            sent = max(sent, target)
            if now >= next_sample:
                samples.add(now - started, _rss_by_process(worker))
                next_sample += SAMPLE_SECONDS
            if now - started >= minute * 60:
                counted = watcher.sum_micros // MICROS
                cache = (await asyncio.to_thread(worker.memory_gauges)).get("block_cache", 0) / 2**20
                line = _minute_line(minute, samples, sent - sent_at_minute, counted - counted_at_minute)
                say(f"{line}; RocksDB block cache {cache:.0f} MiB")
                minute, sent_at_minute, counted_at_minute = minute + 1, sent, counted
            await asyncio.sleep(TICK_SECONDS)
        await producer.flush()
        return sent
    finally:
        await producer.stop()


def _message(rng: random.Random, first: int, run: MemoryRun, ts: str) -> bytes:
    events = [
        {
            "tenantId": "bench",
            "metric": "requests",
            "customerRef": f"c{rng.randrange(run.customers)}",
            "quantity": 1,
            "ts": ts,
            "idempotencyKey": f"m{i}",
        }
        for i in range(first, first + run.per_message)
    ]
    return orjson.dumps(events[0] if run.per_message == 1 else events)


def _rss_by_process(worker: Worker) -> dict[str, float]:
    return {METERING: worker.rss_mib(), **worker.stages_rss_mib()}


def _minute_line(minute: int, samples: Samples, sent: int, counted: int) -> str:
    processes = sorted(samples.by_process)
    rss = ", ".join(f"{process} {samples.at_minute(process, minute) or 0:.0f} MiB" for process in processes)
    return f"  minute {minute}: RSS {rss}; sent {sent / 60:,.0f} events/s, counted {counted / 60:,.0f}/s"


def _verdict(samples: Samples, run: MemoryRun, sent: int, say: Say) -> dict[str, Any]:
    """Per process: peak, RSS at the settle minute and the deviation after it, flat or not."""
    report: dict[str, Any] = {"events": sent, "rate": run.rate, "minutes": run.minutes, "processes": {}}
    for process in sorted(samples.by_process):
        entry: dict[str, Any] = {"peakMiB": samples.peak(process)}
        flat = flatness(samples, process, run.settle)
        if flat is None:
            say(f"  {process}: peak {entry['peakMiB']:.0f} MiB; the run ended before minute {run.settle}")
        else:
            reference, low, high = flat
            entry |= {"settleMiB": reference, "low": low, "high": high}
            entry["flat"] = -run.tolerance <= low and high <= run.tolerance
            say(
                f"  {process}: peak {entry['peakMiB']:.0f} MiB; {reference:.0f} MiB at minute {run.settle},"
                f" then {low:+.1%} to {high:+.1%}:"
                f" {'flat' if entry['flat'] else 'NOT flat'} (+-{run.tolerance:.0%})"
            )
        report["processes"][process] = entry
    return report
