"""Commands measuring and showing the pipeline: `bench throughput|latency|memory|stripe|replay|reconcile`,
`demo`."""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime

from stripemeter.cli.common import Subcommands, add_command, say
from stripemeter.domain.config import Settings

STAGE_PROCESSES_BENCH = "run the worker with --stage-processes (intake and sink as its children)"


def cmd_bench_throughput(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.tools.bench import Workload, throughput

    workload = Workload(args.events, args.customers, args.per_message)
    asyncio.run(throughput(settings, workload, args.partitions, say, args.stage_processes))
    return 0


def cmd_bench_latency(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.tools.bench import latency

    asyncio.run(latency(settings, args.rate, args.seconds, args.partitions, say, args.stage_processes))
    return 0


def cmd_bench_memory(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.tools.bench_memory import MemoryRun, memory_run

    run = MemoryRun(
        rate=args.rate,
        minutes=args.minutes,
        per_message=args.per_message,
        partitions=args.partitions,
        stage_processes=args.stage_processes,
        settle=args.settle,
    )
    report = asyncio.run(memory_run(settings, run, say))
    flat = [entry.get("flat", True) for entry in report["processes"].values()]
    return 0 if all(flat) else 1


def cmd_bench_stripe(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.tools.bench import stripe_pushes

    asyncio.run(
        stripe_pushes(settings, args.events, args.customers, args.calls_per_second, args.partitions, say)
    )
    return 0


def cmd_bench_replay(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.tools.bench_replay import replay_window

    asyncio.run(replay_window(settings, args.events, args.late, args.customers, say))
    return 0


def cmd_bench_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.tools.bench_reconcile import reconcile_many

    asyncio.run(reconcile_many(settings, args.customers, args.hours, say))
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.domain.clock import Clock
    from stripemeter.tools.demo import run_demo

    if args.at is not None:
        settings = settings.with_overrides(clock_offset_seconds=Clock.starting_at(args.at).offset_seconds)
    return run_demo(settings, say)


def instant(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an RFC 3339 time like 2027-01-01T00:30:00Z"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset; add Z or +HH:MM")
    return moment


def add_bench(sub: Subcommands) -> None:
    """`bench throughput|latency|memory|stripe|replay|reconcile`."""
    bench = sub.add_parser(
        "bench", help="measure the pipeline on the local broker against a plain-aiokafka baseline"
    )
    bench_sub = bench.add_subparsers(dest="action", metavar="ACTION", required=True)
    tp = add_command(
        bench_sub,
        "throughput",
        cmd_bench_throughput,
        "events/s from usage.events to usage.deltas for one worker, and the same run's baseline",
    )
    tp.add_argument("--events", type=int, default=200_000, help="events to count (default 200000)")
    tp.add_argument(
        "--per-message", type=int, default=1000, help="events per Kafka message; 1 = single events"
    )
    tp.add_argument("--customers", type=int, default=5000, help="distinct customers (default 5000)")
    tp.add_argument("--partitions", type=int, default=4, help="partitions per topic (default 4)")
    tp.add_argument("--stage-processes", action="store_true", help=STAGE_PROCESSES_BENCH)
    lat = add_command(
        bench_sub,
        "latency",
        cmd_bench_latency,
        "produce-to-delta latency under a fixed load, and the worker's memory over the run",
    )
    lat.add_argument("--rate", type=int, default=10_000, help="background events/s (default 10000)")
    lat.add_argument("--seconds", type=int, default=30, help="how long to run (default 30)")
    lat.add_argument("--partitions", type=int, default=4, help="partitions per topic (default 4)")
    lat.add_argument("--stage-processes", action="store_true", help=STAGE_PROCESSES_BENCH)
    mem = add_command(
        bench_sub,
        "memory",
        cmd_bench_memory,
        "each worker process's RSS per minute at a steady rate, and whether it stays flat (+-15 %)",
    )
    mem.add_argument("--rate", type=int, default=5000, help="events/s (default 5000)")
    mem.add_argument("--minutes", type=int, default=60, help="how long to run (default 60)")
    mem.add_argument(
        "--per-message", type=int, default=1, help="events per Kafka message (default 1: single events)"
    )
    mem.add_argument(
        "--settle", type=int, default=10, help="RSS from this minute to the end must stay flat (default 10)"
    )
    mem.add_argument("--partitions", type=int, default=4, help="partitions per topic (default 4)")
    mem.add_argument("--stage-processes", action="store_true", help=STAGE_PROCESSES_BENCH)
    sb = add_command(
        bench_sub,
        "stripe",
        cmd_bench_stripe,
        "pushes/s to the Stripe emulator and events per Stripe call (the coalescing ratio)",
    )
    sb.add_argument("--events", type=int, default=100_000, help="events (default 100000)")
    sb.add_argument("--customers", type=int, default=2000, help="customers (default 2000)")
    sb.add_argument("--calls-per-second", type=float, default=500, help="writer rate limit (default 500)")
    sb.add_argument("--partitions", type=int, default=4, help="partitions per topic (default 4)")

    bp = add_command(
        bench_sub,
        "replay",
        cmd_bench_replay,
        "replay dry-run and apply over a seeded ledger window, next to a bare scan of the window",
    )
    bp.add_argument("--events", type=int, default=10_000, help="ledger rows in the window (default 10000)")
    bp.add_argument("--late", type=int, default=10_000, help="how many of them are too late (default 10000)")
    bp.add_argument("--customers", type=int, default=1000, help="customers (default 1000)")
    br = add_command(
        bench_sub,
        "reconcile",
        cmd_bench_reconcile,
        "one reconciliation of many customers against the emulator, next to the bare Stripe calls",
    )
    br.add_argument("--customers", type=int, default=10_000, help="customers (default 10000)")
    br.add_argument("--hours", type=int, default=3, help="counted hours per customer (default 3)")


def add_demo(sub: Subcommands) -> None:
    """`demo`."""
    demo = add_command(
        sub, "demo", cmd_demo, "bring the local stack up, send sample usage and tell the whole story"
    )
    demo.add_argument(
        "--at",
        type=instant,
        help="live at this instant (e.g. 2027-01-01T00:30:00Z): the stack's worker, API and Stripe"
        " emulator start with the same clock offset (stop a stack running at another time first)",
    )
