"""Commands measuring and showing the pipeline: `bench ...` (one subcommand a benchmark) and `demo`."""

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

    asyncio.run(
        replay_window(
            settings,
            args.events,
            args.late,
            args.customers,
            args.partitions,
            args.calls_per_second,
            say,
            args.stage_processes,
        )
    )
    return 0


def cmd_bench_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.tools.bench_reconcile import reconcile_many

    asyncio.run(reconcile_many(settings, args.customers, args.hours, say, args.passes, args.changed))
    return 0


def cmd_bench_catchup(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.tools.bench_catchup import catchup

    apis = ["v1", "v2"] if args.api == "both" else [args.api]
    events = args.events_per_second or settings.stripe_stream_events_per_second
    asyncio.run(catchup(settings, args.customers, apis, args.calls_per_second, events, args.timeout, say))
    return 0


def cmd_bench_failover(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.tools.bench_failover import failover

    asyncio.run(failover(settings, args.entries, say, standby=args.standby))
    return 0


def cmd_bench_cycle(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.tools.bench_cycle import CycleShape, run_cycle

    shape = CycleShape(args.customers, args.days, args.minutes, args.rate, args.partitions)
    asyncio.run(run_cycle(settings, shape, say))
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
    """`bench ACTION`: one subcommand a benchmark."""
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
        "each worker process's RSS per minute at a steady rate, and whether it stays flat"
        " (within 15 percent)",
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
        "replay dry-run and apply over a seeded ledger window with a real worker: apply until the"
        " counters show every correction, and until Stripe (the emulator) does; next to a bare scan",
    )
    bp.add_argument("--events", type=int, default=10_000, help="ledger rows in the window (default 10000)")
    bp.add_argument("--late", type=int, default=10_000, help="how many of them are too late (default 10000)")
    bp.add_argument(
        "--customers",
        type=int,
        default=3000,
        help="customers, spread over the window's 24 hours (default 3000: 10000 events make 3000 counters)",
    )
    bp.add_argument("--partitions", type=int, default=4, help="partitions per topic (default 4)")
    bp.add_argument(
        "--calls-per-second",
        type=float,
        default=1000,
        help="the worker's Stripe writer limit (default 1000, Stripe's live-mode limit)",
    )
    bp.add_argument("--stage-processes", action="store_true", help=STAGE_PROCESSES_BENCH)
    br = add_command(
        bench_sub,
        "reconcile",
        cmd_bench_reconcile,
        "scheduled reconciliation passes over many customers against the emulator: the first (every"
        " item) next to the bare Stripe calls, then the Stripe reads of each later pass",
    )
    br.add_argument("--customers", type=int, default=10_000, help="customers (default 10000)")
    br.add_argument("--hours", type=int, default=3, help="counted hours per customer (default 3)")
    br.add_argument(
        "--passes", type=int, default=4, help="passes after the first, one interval apart (default 4)"
    )
    br.add_argument(
        "--changed",
        type=float,
        default=0.01,
        help="share of the customers whose usage changes between two passes (default 0.01)",
    )
    bc = add_command(
        bench_sub,
        "catchup",
        cmd_bench_catchup,
        "the Stripe writer catching up after a Stripe outage: time to parity, Stripe calls per second",
    )
    bc.add_argument("--customers", type=int, default=100_000, help="due counter hours (default 100000)")
    bc.add_argument(
        "--api", choices=("v1", "v2", "auto", "both"), default="both",
        help="which API the writer sends on; both: v1 (the baseline), then v2 (default both)",
    )  # fmt: skip
    bc.add_argument(
        "--calls-per-second", type=float, default=1000,
        help="the writer's Stripe budget (default 1000, Stripe's live-mode meter event limit)",
    )  # fmt: skip
    bc.add_argument(
        "--events-per-second", type=float, default=0,
        help="v2 stream events a second (default: STRIPEMETER_STRIPE_STREAM_EVENTS_PER_SECOND)",
    )  # fmt: skip
    bc.add_argument(
        "--timeout", type=float, default=3600, help="give up after this many seconds (default 3600)"
    )
    bf = add_command(
        bench_sub,
        "failover",
        cmd_bench_failover,
        "time for a worker to take over a partition of N dedupe entries: cold, with its store current and"
        " (--standby) from a standby copy",
    )
    bf.add_argument(
        "--entries", type=int, default=1_000_000, help="dedupe entries in the partition (default 1000000)"
    )
    bf.add_argument(
        "--standby",
        action="store_true",
        help="also time a takeover by a second worker that kept a standby copy of the partition",
    )
    add_bench_cycle(bench_sub)


def add_bench_cycle(bench_sub: Subcommands) -> None:
    """`bench cycle`."""
    bc = add_command(
        bench_sub,
        "cycle",
        cmd_bench_cycle,
        "a billing cycle compressed: skewed traffic with duplicates and late events, the clock moved"
        " across a month end, a report per tenth of the run, every item at parity at the end",
    )
    bc.add_argument("--customers", type=int, default=100_000, help="customers (default 100000)")
    bc.add_argument("--days", type=int, default=35, help="days of event time (default 35)")
    bc.add_argument("--minutes", type=float, default=30, help="wall time of the traffic (default 30)")
    bc.add_argument(
        "--rate",
        type=int,
        default=3000,
        help="the most events/s asked for (default 3000); the rate follows what the pipeline keeps up"
        " with, the Stripe writer included",
    )
    bc.add_argument("--partitions", type=int, default=4, help="partitions per topic (default 4)")


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
