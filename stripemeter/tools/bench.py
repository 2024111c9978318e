"""`stripemeter bench`: the pipeline's throughput and latency on the local broker, with a baseline.

Throughput: N events are written to an isolated usage.events first; then (a) the baseline - plain
aiokafka getmany + orjson decode + dict aggregation of the same events - reads them all, and (b) a
real worker (subprocess) counts them, timed from its readiness until usage.deltas shows every
counter complete. Both rates and their ratio are printed.

Latency: load at a fixed rate, plus one probe event every 50 ms for a probe customer; each probe's
latency is the time from its produce call to the first usage.deltas total that includes it.
The worker's resident memory is sampled throughout.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import psycopg
from aiokafka import AIOKafkaProducer
from psycopg import sql

from stripemeter.adapters.kafka.admin import create_topics_of, delete_topics_of
from stripemeter.adapters.kafka.batching import ConsumerSettings
from stripemeter.adapters.kafka.changelog_state import send_records
from stripemeter.adapters.kafka.client_auth import client_kwargs
from stripemeter.adapters.postgres.migrate import migrate
from stripemeter.domain.config import Secret, Settings, settings_env
from stripemeter.domain.timefmt import iso_ms
from stripemeter.domain.units import MICROS, floor_units, micros_to_float
from stripemeter.schemas.topics import TopicNames, replication_of
from stripemeter.streams.consumer_stage import Batch, ConsumerStage, StageHooks
from stripemeter.streams.stages import stage_children
from stripemeter.tools.local.procs import free_port

Say = Callable[[str], None]
HOUR_MS = 3_600_000


@dataclass(frozen=True)
class Workload:
    events: int
    customers: int
    per_message: int  # 1 = one event per message; otherwise a JSON array per message

    def messages(self, tenant: str, now_ms: int) -> list[bytes]:
        rng = random.Random(5)
        out: list[bytes] = []
        batch: list[bytes] = []
        for i in range(self.events):
            event = {
                "tenantId": tenant,
                "metric": "requests",
                "customerRef": f"c{rng.randrange(self.customers)}",
                "quantity": 1,
                "ts": iso_ms(now_ms - rng.randrange(0, 2 * HOUR_MS)),
                "idempotencyKey": f"e{i}",
            }
            encoded = orjson.dumps(event)
            if self.per_message == 1:
                out.append(encoded)
                continue
            batch.append(encoded)
            if len(batch) == self.per_message:
                out.append(b"[" + b",".join(batch) + b"]")
                batch = []
        if batch:
            out.append(b"[" + b",".join(batch) + b"]")
        return out


async def isolated(settings: Settings, tag: str, partitions: int) -> tuple[Settings, TopicNames]:
    """Settings for one run, with its own topics, state, port and PostgreSQL schema, all created here;
    ``release`` drops the topics and the schema.

    A run writes millions of ledger rows; in a shared table earlier runs' rows (the dev database had
    collected 104 million) make every later run's PostgreSQL side slower, and its numbers meaningless.
    """
    app_id = f"bench-{tag}"
    schema = _schema_of(app_id)
    async with await psycopg.AsyncConnection.connect(settings.database_url.value, autocommit=True) as conn:
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    url = with_search_path(settings.database_url.value, schema)
    await asyncio.to_thread(migrate, url)
    env = settings.with_overrides(
        topic_prefix=f"{app_id}.",
        app_id=app_id,
        partitions=partitions,
        state_dir=settings.state_dir / "bench" / tag,
        worker_web_port=free_port(),
        database_url=Secret(url),
    )
    names = await create_topics_of(env.kafka, env.app_id, env.topic_prefix, partitions, replication_of(env))
    return env, names


def _schema_of(app_id: str) -> str:
    return app_id.replace("-", "_")


def with_search_path(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-csearch_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query)))


async def release(env: Settings) -> None:
    """Drop what ``isolated`` made: the run's topics and its PostgreSQL schema."""
    await delete_topics_of(env.kafka, env.app_id, env.topic_prefix)
    async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
        drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(_schema_of(env.app_id)))
        await conn.execute(drop)


async def produce_all(settings: Settings, topic: str, messages: list[bytes], say: Say) -> float:
    producer = AIOKafkaProducer(
        **client_kwargs(settings.kafka),
        acks="all",
        linger_ms=20,
        max_batch_size=1024 * 1024,
        max_request_size=8 * 1024 * 1024,
    )
    await producer.start()
    started = time.perf_counter()
    try:
        futures = []
        for i, value in enumerate(messages):
            futures.append(await producer.send(topic, value, key=str(i % 64).encode()))
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def baseline(settings: Settings, topic: str, expected_events: int) -> float:
    """aiokafka consume (the stages' loop, no group) + orjson decode + dict aggregation: events per second."""
    reader = ConsumerStage(
        settings.kafka,
        ConsumerSettings(
            (topic,),
            group_id=None,
            max_records=5000,
            poll_ms=1000,
            fetch_max_wait_ms=500,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        ),
    )
    aggregation = _Aggregation(reader, expected_events)
    await reader.run(aggregation.add, hooks=aggregation)
    return aggregation.seen / (time.perf_counter() - aggregation.started_at)


class _Aggregation(StageHooks):
    """The baseline's work: sums per counter hour, timed from the consumer's start."""

    def __init__(self, reader: ConsumerStage, expected_events: int):
        self.reader = reader
        self.expected_events = expected_events
        self.totals: dict[tuple[str, str, str, str], float] = {}
        self.seen = 0
        self.started_at = time.perf_counter()

    async def started(self, consumer: Any) -> None:
        self.started_at = time.perf_counter()

    async def add(self, batch: Batch) -> None:
        totals = self.totals
        for messages in batch.values():
            for message in messages:
                value = orjson.loads(message.value)
                for e in value if isinstance(value, list) else (value,):
                    key = (e["tenantId"], e["metric"], e["customerRef"], e["ts"][:13])
                    totals[key] = totals.get(key, 0) + e["quantity"]
                    self.seen += 1
        if self.seen >= self.expected_events:
            self.reader.stop()


class DeltaWatcher(StageHooks):
    """Follows usage.deltas and keeps the newest total per counter."""

    def __init__(self, settings: Settings, topic: str, only_customer: str | None = None):
        self.settings = settings
        self.topic = topic
        # records keyed tenant|metric|customer: others are skipped undecoded
        self.key_suffix = f"|{only_customer}".encode() if only_customer is not None else b""
        self.totals: dict[tuple[str, str, str, str], tuple[int, int]] = {}
        self.sum_micros = 0
        self.on_update: Callable[[tuple[str, str, str, str], int], None] | None = None
        self.reader = ConsumerStage(
            settings.kafka,
            ConsumerSettings(
                (topic,), group_id=None, max_records=100_000, poll_ms=100, fetch_max_wait_ms=500
            ),
        )
        self._until: Callable[[], bool] = lambda: False

    async def run(self, until: Callable[[], bool]) -> None:
        self._until = until
        await self.reader.run(self._follow, hooks=self)

    async def between_batches(self, consumer: Any) -> None:
        if self._until():
            self.reader.stop()

    async def _follow(self, batch: Batch) -> None:
        for messages in batch.values():
            for message in messages:
                if self.key_suffix and not (message.key or b"").endswith(self.key_suffix):
                    continue
                d = orjson.loads(message.value)
                key = (d["tenantId"], d["metric"], d["customerRef"], d["bucket"])
                old_seq, old_total = self.totals.get(key, (-1, 0))
                if d["seq"] > old_seq:
                    self.totals[key] = (d["seq"], d["totalMicros"])
                    self.sum_micros += d["totalMicros"] - old_total
                    if self.on_update is not None:
                        self.on_update(key, d["totalMicros"])


# gauges with a ``kind`` label that bench latency follows, and the prefix of their keys in its samples
KIND_GAUGES = {"stripemeter_rocksdb_memory_bytes{": "", "stripemeter_heap_bytes{": "heap_"}


PR_SET_PDEATHSIG = 1  # from Linux's prctl header


def die_with_parent() -> Callable[[], None] | None:
    """For ``Popen(preexec_fn=...)``: the child gets SIGTERM when the benchmark's process ends, however
    it ends (a killed benchmark left its workers running for hours). Linux only; the signal follows the
    thread that started the child, so start workers from the benchmark's main thread."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child between fork and exec imports nothing

    def in_child() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent ended before the call above took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


class Worker:
    """``stripemeter worker`` (with intake and sink as its children if ``stage_processes``)."""

    def __init__(self, settings: Settings, log: Path, stage_processes: bool = False):
        self.settings = settings
        self.stage_processes = stage_processes
        self._children: dict[str, int] = {}  # stage -> pid, looked up again when one is gone
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(log, "ab")  # noqa: SIM115 - held for the child's lifetime
        env = {**os.environ, **settings_env(settings)}
        argv = [sys.executable, "-m", "stripemeter", "worker"]
        argv += ["--stage-processes"] if stage_processes else []
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )

    def wait_ready(self, timeout: float = 120) -> None:
        url = f"http://127.0.0.1:{self.settings.worker_web_port}/health/ready"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early; see {self.log.name}")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("worker not ready in time")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_mib(self) -> float:
        """The worker's own process: metering and its RocksDB tables."""
        return process_rss_mib(self.proc.pid)

    def stages_rss_mib(self) -> dict[str, float]:
        """The worker's child processes (intake, sink) by stage. Finding them reads all of /proc, so
        it is done again only when one of them is gone (restarted)."""
        if not self.stage_processes:
            return {}
        rss = {stage: process_rss_mib(pid) for stage, pid in self._children.items()}
        if len(rss) < 2 or not all(rss.values()):  # both stages run as children; one may be starting
            self._children = stage_children(self.proc.pid)
            rss = {stage: process_rss_mib(pid) for stage, pid in self._children.items()}
        return rss

    def memory_gauges(self) -> dict[str, float]:
        """The worker's RocksDB memory by kind and Python's allocated blocks, from its /metrics."""
        url = f"http://127.0.0.1:{self.settings.worker_web_port}/metrics"
        gauges: dict[str, float] = {}
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return gauges
        for line in text.splitlines():
            by_kind = next((p for p in KIND_GAUGES if line.startswith(p)), None)
            if by_kind is not None:
                kind = line.split('kind="', 1)[1].split('"', 1)[0]
                gauges[KIND_GAUGES[by_kind] + kind] = float(line.rsplit(" ", 1)[1])
            elif line.startswith("stripemeter_python_allocated_blocks "):
                gauges["python_blocks"] = float(line.rsplit(" ", 1)[1])
        gauges["rss"] = self.rss_mib() * 2**20
        return gauges

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its children are in its process group
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


class PeakRss:
    """The highest RSS of each worker process, sampled every ``interval`` seconds: a batch's memory
    comes and goes within a second, and a reading at the end would miss it."""

    def __init__(self, worker: Worker, interval: float = 0.2):
        self.worker = worker
        self.interval = interval
        self.peaks: dict[str, float] = {}

    def sample(self) -> None:
        for process, mib in {"metering": self.worker.rss_mib(), **self.worker.stages_rss_mib()}.items():
            self.peaks[process] = max(mib, self.peaks.get(process, 0.0))

    async def follow(self) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(self.interval)


def process_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def _stages_text(stages: dict[str, float]) -> str:
    return "".join(f", {stage} {rss:.0f} MiB" for stage, rss in sorted(stages.items()))


async def throughput(
    settings: Settings,
    workload: Workload,
    partitions: int,
    say: Say,
    stage_processes: bool = False,
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    env, names = await isolated(settings, tag, partitions)
    messages = workload.messages("bench", int(time.time() * 1000))
    say(
        f"producing {workload.events:,} events in {len(messages):,} messages "
        f"({workload.per_message} per message, {workload.customers:,} customers)..."
    )
    await produce_all(env, names.events, messages, say)
    say("baseline: plain aiokafka consume + orjson decode + dict aggregation...")
    base_rate = await baseline(env, names.events, workload.events)
    say(f"  {base_rate:,.0f} events/s")
    say(f"pipeline: one worker ({_layout(stage_processes)}), usage.events -> usage.deltas...")
    watcher = DeltaWatcher(env, names.deltas)
    expected = workload.events * MICROS
    worker = Worker(env, env.state_dir / "worker.log", stage_processes)
    try:
        await asyncio.to_thread(worker.wait_ready)
        started = time.perf_counter()
        deadline = started + 600
        peaks = PeakRss(worker)
        sampling = asyncio.ensure_future(peaks.follow())
        await watcher.run(
            lambda: watcher.sum_micros >= expected or time.perf_counter() > deadline or not worker.alive()
        )
        elapsed = time.perf_counter() - started
        sampling.cancel()
        peaks.sample()
        rss, stages_rss = worker.rss_mib(), worker.stages_rss_mib()
    finally:
        worker.stop()
        await release(env)
    if watcher.sum_micros != expected:
        raise RuntimeError(
            f"pipeline counted {micros_to_float(watcher.sum_micros):,.0f} of {workload.events:,} events"
        )
    rate = workload.events / elapsed
    say(
        f"  {rate:,.0f} events/s ({elapsed:.1f}s, {len(watcher.totals):,} counters; "
        f"RSS at the end: metering {rss:.0f} MiB{_stages_text(stages_rss)}; "
        f"peak: {', '.join(f'{p} {mib:.0f} MiB' for p, mib in peaks.peaks.items())})"
    )
    say(f"  ratio pipeline/baseline: {rate / base_rate:.2f}")
    return {
        "events": workload.events,
        "perMessage": workload.per_message,
        "pipelineEventsPerSec": rate,
        "baselineEventsPerSec": base_rate,
        "ratio": rate / base_rate,
        "workerRssMiB": rss,
        "stagesRssMiB": stages_rss,
        "peakRssMiB": peaks.peaks,
    }


def _layout(stage_processes: bool) -> str:
    return (
        "intake and sink as its children" if stage_processes else "intake, metering and sink in one process"
    )


async def latency(
    settings: Settings, rate: int, seconds: int, partitions: int, say: Say, stage_processes: bool = False
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    env, names = await isolated(settings, tag, partitions)
    worker = Worker(env, env.state_dir / "worker.log", stage_processes)
    watcher = DeltaWatcher(env, names.deltas, only_customer="probe")
    probe_sent: list[float] = []
    latencies: list[float] = []
    seen_probe = 0

    def on_update(key: tuple[str, str, str, str], total_micros: int) -> None:
        nonlocal seen_probe
        if key[2] != "probe":
            return
        now = time.perf_counter()
        while seen_probe < floor_units(total_micros) and seen_probe < len(probe_sent):
            latencies.append(now - probe_sent[seen_probe])
            seen_probe += 1

    watcher.on_update = on_update
    rss: list[float] = []
    stages_rss: list[dict[str, float]] = []
    gauges: list[dict[str, float]] = []
    done = False
    try:
        await asyncio.to_thread(worker.wait_ready)
        say(f"worker: {_layout(stage_processes)}")
        watch = asyncio.ensure_future(watcher.run(lambda: done))
        producer = AIOKafkaProducer(**client_kwargs(env.kafka), acks="all", linger_ms=5)
        await producer.start()
        rng = random.Random(3)
        ts = iso_ms(int(time.time() * 1000))
        partitions_of_events = len(await producer.partitions_for(names.events))
        started = time.perf_counter()
        sent = 0
        say(f"load: {rate:,} events/s, one event per message, for {seconds}s; probes every 50 ms")
        tick = 0
        next_gauges = started + 5
        while time.perf_counter() - started < seconds:
            tick += 1
            target = int((time.perf_counter() - started) * rate)
            # one event per message, as before, but sent a batch per partition: the load generator
            # shares the 2 cores with what it measures, and one send() per event took a third of one
            by_partition: list[list[tuple[bytes | None, bytes | None]]] = [
                [] for _ in range(partitions_of_events)
            ]
            for i in range(sent, target):
                e = {
                    "tenantId": "bench",
                    "metric": "requests",
                    "customerRef": f"c{rng.randrange(5000)}",
                    "quantity": 1,
                    "ts": ts,
                    "idempotencyKey": f"l{i}",
                }
                by_partition[i % partitions_of_events].append((None, orjson.dumps(e)))
            for partition, records in enumerate(by_partition):
                if records:
                    await send_records(producer, names.events, partition, records)
            sent = max(sent, target)
            probe = {
                "tenantId": "bench",
                "metric": "requests",
                "customerRef": "probe",
                "quantity": 1,
                "ts": ts,
                "idempotencyKey": f"p{len(probe_sent)}",
            }
            probe_sent.append(time.perf_counter())
            await producer.send(names.events, orjson.dumps(probe))
            if tick % 20 == 0:
                rss.append(worker.rss_mib())
                stages_rss.append(worker.stages_rss_mib())
            if time.perf_counter() >= next_gauges:
                gauges.append(await asyncio.to_thread(worker.memory_gauges))
                next_gauges += 5
            await asyncio.sleep(0.05)
        await producer.flush()
        await producer.stop()
        deadline = time.perf_counter() + 60
        while seen_probe < len(probe_sent) and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
        done = True
        await watch
    finally:
        done = True
        worker.stop()
        await release(env)
    if not latencies:
        raise RuntimeError("no probe reached usage.deltas")
    tenths = [sorted(latencies[i * len(latencies) // 10 : (i + 1) * len(latencies) // 10]) for i in range(10)]
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    achieved = sent / seconds
    say(
        f"  sent {sent:,} events ({achieved:,.0f}/s) + {len(probe_sent)} probes; {len(latencies)} probes seen"
    )
    say(
        f"  produce-to-delta latency: p50 {pct(0.5) * 1000:.0f} ms, p99 {pct(0.99) * 1000:.0f} ms, "
        f"max {latencies[-1] * 1000:.0f} ms"
    )
    say(
        "  p99 at each tenth of the run (ms): "
        + " ".join(f"{t[int(0.99 * len(t))] * 1000:.0f}" for t in tenths if t)
    )
    if rss:
        say(f"  worker RSS: first {rss[0]:.0f} MiB, last {rss[-1]:.0f} MiB, max {max(rss):.0f} MiB")
        curve = " ".join(f"{rss[i * len(rss) // 10]:.0f}" for i in range(10))
        say(f"  worker RSS at each tenth of the run: {curve} {rss[-1]:.0f} MiB")
    for stage in sorted(stages_rss[-1] if stages_rss else {}):
        curve = " ".join(f"{stages_rss[i * len(stages_rss) // 10].get(stage, 0):.0f}" for i in range(10))
        say(f"  {stage} process RSS at each tenth of the run: {curve} {stages_rss[-1][stage]:.0f} MiB")
    if gauges:
        _say_memory_curves(gauges, say)
    return {
        "rate": achieved,
        "p50": pct(0.5),
        "p99": pct(0.99),
        "rssFirst": rss[0] if rss else None,
        "rssLast": rss[-1] if rss else None,
    }


def _say_memory_curves(gauges: list[dict[str, float]], say: Say) -> None:
    """Where the worker's memory went over the run, at each tenth: RocksDB by kind, Python's heap."""
    picks = [gauges[i * len(gauges) // 10] for i in range(10)] + [gauges[-1]]
    for kind in ("block_cache", "memtables", "table_readers", "pinned"):
        say(f"  RocksDB {kind} (MiB): " + " ".join(f"{g.get(kind, 0) / 2**20:.0f}" for g in picks))
    say(
        "  Python allocated blocks (thousands): "
        + " ".join(f"{g.get('python_blocks', 0) / 1000:.0f}" for g in picks)
    )
    for kind in ("in_use", "free"):
        say(f"  C heap {kind} (MiB): " + " ".join(f"{g.get(f'heap_{kind}', 0) / 2**20:.0f}" for g in picks))
    # the cache only ever grows to its budget; a leak would show here, outside it
    say(
        "  RSS outside RocksDB's block cache (MiB): "
        + " ".join(f"{(g.get('rss', 0) - g.get('block_cache', 0)) / 2**20:.0f}" for g in picks)
    )


async def emulator_with_meter(port: int, tag: str) -> tuple[Any, Any, dict[str, Any]]:
    """The Stripe emulator on ``port`` in this process, with one ``sum`` meter ``bench_{tag}``;
    returns (state, runner to clean up, meter)."""
    from aiohttp import web

    from stripemeter.tools.stripe_emulator import EmulatorState, create_app

    state = EmulatorState(ops_per_second=0)  # no test-mode rate limit: the benchmarks measure our side
    runner = web.AppRunner(create_app(state), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    meter = state.create_meter(
        {"display_name": "requests", "event_name": f"bench_{tag}", "default_aggregation": {"formula": "sum"}}
    )
    return state, runner, meter


async def stripe_pushes(
    settings: Settings, events: int, customers: int, calls_per_second: float, partitions: int, say: Say
) -> dict[str, Any]:
    """Pushes/s against the emulator and events per Stripe call, for many customers."""
    from stripemeter.adapters.postgres.mappings import MetricMapping, upsert_customer, upsert_metric

    tag = uuid.uuid4().hex[:6]
    port = free_port()
    env, names = await isolated(settings, tag, partitions)
    env = env.with_overrides(
        stripe_api_base=f"http://127.0.0.1:{port}",
        stripe_calls_per_second=calls_per_second,
        stripe_api_key=Secret("sk_test_bench"),
    )
    state, runner, meter = await emulator_with_meter(port, tag)
    tenant = f"bench-{tag}"
    async with await psycopg.AsyncConnection.connect(env.database_url.value, autocommit=True) as conn:
        mapping = MetricMapping(tenant, "requests", meter["event_name"], "sum", None)
        await upsert_metric(conn, mapping, settings.clock.utc(), settings.lateness_seconds)
        for c in range(customers):
            cus = state.create_customer({"email": f"c{c}@example.com"})["id"]
            await upsert_customer(conn, tenant, f"c{c}", cus, None)
    messages = Workload(events, customers, 1000).messages(tenant, int(time.time() * 1000))
    worker = Worker(env, env.state_dir / "worker.log")
    try:
        await asyncio.to_thread(worker.wait_ready)
        say(f"{events:,} events for {customers:,} customers; writer limited to {calls_per_second:g} calls/s")
        started = time.perf_counter()
        await produce_all(env, names.events, messages, say)
        deadline = started + 900
        while time.perf_counter() < deadline and worker.alive():
            if sum(e.value for e in state.meter_events(meter["id"])) >= events:
                break
            await asyncio.sleep(0.2)
        elapsed = time.perf_counter() - started
    finally:
        worker.stop()
        await release(env)
        await runner.cleanup()
    pushed = state.meter_events(meter["id"])
    total = sum(e.value for e in pushed)
    if total != events:
        raise RuntimeError(f"Stripe holds {total:,} of {events:,} units")
    say(
        f"  {len(pushed):,} meter events in {elapsed:.1f}s from first produce to parity: "
        f"{len(pushed) / elapsed:,.0f} pushes/s, {events / len(pushed):,.1f} events per Stripe call"
    )
    return {"pushes": len(pushed), "seconds": elapsed, "eventsPerCall": events / len(pushed)}
