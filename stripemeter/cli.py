"""The `stripemeter` command: every process and operator task behind one entry point."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from stripemeter.config import ConfigError, Settings, load_settings
from stripemeter.logs import configure_logging

log = logging.getLogger("stripemeter")


def say(message: str) -> None:
    print(message, flush=True)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    say("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        say("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


# --- subcommands ---------------------------------------------------------------------------------


def cmd_stack_up(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.local.stack import up

    up(settings, say, with_app=not args.infra_only)
    cmd_stack_status(settings, args)
    return 0


def cmd_stack_down(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.local.stack import down

    down(settings, say)
    return 0


def cmd_stack_status(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.local.stack import status

    rows = status(settings)
    print_table(["service", "state", "listens on", "log"], rows)
    return 0


def cmd_db_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.db.migrate import migrate

    applied = migrate(settings.database_url.value)
    say(
        f"applied {len(applied)} migration(s)"
        + (
            ": " + ", ".join(f"{m.version:04d}_{m.name}" for m in applied)
            if applied
            else "; the schema is up to date"
        )
    )
    return 0


def cmd_topics_create(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.kafka_admin import ensure_topics
    from stripemeter.topics import TopicNames, topic_specs

    names = TopicNames(settings.topic_prefix, settings.app_id)
    result = asyncio.run(
        ensure_topics(settings.kafka_bootstrap_servers, topic_specs(names, settings.partitions))
    )
    for name in result.created:
        say(f"created      {name}")
    for name in result.existing:
        say(f"{'reconfigured' if name in result.reconfigured else 'exists':12} {name}")
    return 0


def cmd_topics_list(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.kafka_admin import describe
    from stripemeter.topic_inspect.overview import overview
    from stripemeter.topics import TopicNames, topic_specs

    if args.all:
        infos = asyncio.run(describe(settings.kafka_bootstrap_servers))
        print_table(
            ["topic", "partitions", "retention", "cleanup", "messages"],
            [(i.name, i.partitions, *_policy(i.config), i.messages) for i in infos],
        )
        return 0
    names = TopicNames(settings.topic_prefix, settings.app_id)
    ours = [s.name for s in topic_specs(names, settings.partitions)]
    view = asyncio.run(overview(settings.kafka_bootstrap_servers, names, ours))
    print_table(
        ["topic", "partitions", "retention", "cleanup", "messages"],
        [(t.name, len(t.partitions), *_policy(t.config), t.messages) for t in view.topics],
    )
    missing = sorted(set(ours) - {t.name for t in view.topics})
    if missing:
        say("missing (run `stripemeter topics create`): " + ", ".join(missing))
    _print_lag(view.lags, view.idle_groups)
    return 0


def _policy(config: dict[str, str]) -> tuple[str, str]:
    return _retention(config.get("retention.ms", "?")), config.get("cleanup.policy", "?")


def _print_lag(lags: Sequence[Any], idle_groups: dict[str, str]) -> None:
    say("")
    if lags:
        print_table(
            ["group", "role", "topic", "partition", "committed", "end", "lag"],
            [
                (
                    g.group,
                    g.role,
                    g.topic,
                    g.partition,
                    "-" if g.committed is None else g.committed,
                    g.end,
                    g.lag,
                )
                for g in lags
            ],
        )
    for group, role in idle_groups.items():
        say(f"{role} ({group}): no committed offsets on these topics")


def cmd_topics_describe(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.topic_inspect.kinds import resolve_topic
    from stripemeter.topic_inspect.overview import describe_one
    from stripemeter.topics import TopicNames, topic_specs

    names = TopicNames(settings.topic_prefix, settings.app_id)
    topic = resolve_topic(names, args.topic)
    state, lags = asyncio.run(describe_one(settings.kafka_bootstrap_servers, names, topic))
    if state is None:
        say(f"no topic {topic!r} on the broker (see `stripemeter topics list`)")
        return 1
    spec = next((s for s in topic_specs(names, settings.partitions) if s.name == topic), None)
    say(f"topic {state.name}: {len(state.partitions)} partitions, {state.messages} messages")
    if spec is not None:
        say(f"holds: {spec.purpose}" + (" (internal)" if spec.internal else ""))
    for key, value in sorted(state.config.items()):
        say(f"  {key} = {_retention(value) if key == 'retention.ms' else value}")
    say("")
    print_table(
        ["partition", "leader", "replicas", "isr", "start", "end", "messages"],
        [
            (
                p.partition,
                p.leader,
                ",".join(map(str, p.replicas)),
                ",".join(map(str, p.isr)),
                p.start,
                p.end,
                p.messages,
            )
            for p in state.partitions
        ],
    )
    if lags:
        _print_lag(lags, {})
    return 0


def cmd_topics_tail(settings: Settings, args: argparse.Namespace) -> int:
    import time

    from stripemeter.instants import parse_instant_ms
    from stripemeter.topic_inspect.kinds import logical_name, resolve_topic, topic_kind
    from stripemeter.topic_inspect.tail import TailRequest, TailStart, tail
    from stripemeter.topics import TopicNames

    names = TopicNames(settings.topic_prefix, settings.app_id)
    topic = resolve_topic(names, args.topic)
    start: TailStart = "beginning" if args.from_beginning else "since" if args.since else "last"
    request = TailRequest(
        topic=topic,
        shown_as=logical_name(names, topic),
        kind=topic_kind(names, topic),
        start=start,
        # Kafka's record timestamps are real time, not the application's clock
        since_ms=parse_instant_ms(args.since, int(time.time() * 1000)) if args.since else None,
        last=args.last,
        follow=args.follow,
        limit=args.limit,
        tenant=args.tenant,
        metric=args.metric,
        customer=args.customer,
        as_json=args.json,
    )
    try:
        asyncio.run(tail(settings.kafka_bootstrap_servers, request, say))
    except BrokenPipeError:  # `| head` closed the pipe: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stdout for the rest of the process
    return 0


def cmd_kafka_tool(settings: Settings, args: argparse.Namespace) -> int:
    import subprocess

    from stripemeter.local.kafka import LocalKafka
    from stripemeter.topic_inspect.kafka_tools import tool_command, write_log_config

    kafka = LocalKafka.from_settings(settings)
    if not kafka.installed():
        say(f"no Kafka {settings.kafka_version} jars in {kafka.libs}; `stripemeter stack up` installs them")
        return 2
    log_config = write_log_config(settings.cache_dir / "kafka")
    cmd = tool_command(args.name, list(args.args), settings.kafka_bootstrap_servers, kafka.libs, log_config)
    return subprocess.run(cmd).returncode


def _retention(ms: str) -> str:
    try:
        value = int(ms)
    except ValueError:
        return ms
    if value < 0:
        return "forever"
    hours = value / 3_600_000
    return f"{hours / 24:g}d" if hours >= 24 else f"{hours:g}h"


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from faust import Worker

    from stripemeter.streams import memory_tuning
    from stripemeter.streams.app import create_app

    app = create_app(
        settings,
        with_sink=not args.no_sink,
        with_intake=not args.no_intake,
        stage_processes=args.stage_processes,
    )
    memory_tuning.tune()
    worker = Worker(app, loglevel=settings.log_level.lower(), quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
    return 0


def cmd_intake(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.streams import memory_tuning, stages
    from stripemeter.streams.worker.factories import intake_stage

    memory_tuning.tune()
    asyncio.run(stages.run_stage(intake_stage(settings), args.worker_socket))
    return 0


def cmd_sink(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.streams import memory_tuning, stages
    from stripemeter.streams.worker.factories import postgres_sink

    memory_tuning.tune()
    asyncio.run(stages.run_stage(postgres_sink(settings), args.worker_socket))
    return 0


def cmd_stripe_emulator(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.stripe_emulator import run

    budget = f"{args.ops_per_second:g} operations/s" if args.ops_per_second > 0 else "no rate limit"
    say(f"Stripe emulator on http://{args.host}:{args.port} (point STRIPE_API_BASE here; {budget})")
    run(args.host, args.port, settings.clock, args.ops_per_second)
    return 0


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.api.app import run

    run(settings)
    return 0


def cmd_bench_throughput(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.bench import Workload, throughput

    workload = Workload(args.events, args.customers, args.per_message)
    asyncio.run(throughput(settings, workload, args.partitions, say, args.stage_processes))
    return 0


def cmd_bench_latency(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.bench import latency

    asyncio.run(latency(settings, args.rate, args.seconds, args.partitions, say, args.stage_processes))
    return 0


def cmd_bench_stripe(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.bench import stripe_pushes

    asyncio.run(
        stripe_pushes(settings, args.events, args.customers, args.calls_per_second, args.partitions, say)
    )
    return 0


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.operate import reconcile
    from stripemeter.reconcile.runner import Align, RunRequest

    align: Align = "all" if args.align_all else "within_epsilon"
    request = RunRequest(args.tenant, args.metric, args.period, align=align, trigger="cli")
    reports = asyncio.run(reconcile(settings, request, args.json, say, print_table))
    return 3 if any(report["status"] == "drift" for report in reports) else 0


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.operate import replay

    report = asyncio.run(replay(settings, args, say, print_table))
    return 0 if report else 1


def cmd_bench_replay(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.bench_replay import replay_window

    asyncio.run(replay_window(settings, args.events, args.late, args.customers, say))
    return 0


def cmd_bench_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.bench_reconcile import reconcile_many

    asyncio.run(reconcile_many(settings, args.customers, args.hours, say))
    return 0


def cmd_keys_create(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter import keys

    token = asyncio.run(keys.create(settings, args.tenant, args.scopes, args.description))
    say(token)
    print(
        "this key is shown once and stored only as a salted hash; send it as: Authorization: Bearer <key>",
        file=sys.stderr,
    )
    return 0


def cmd_keys_list(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter import keys

    rows = asyncio.run(keys.list_rows(settings, args.tenant))
    print_table(["key id", "tenant", "scopes", "state", "created", "last used", "description"], rows)
    return 0


def cmd_keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter import keys

    if asyncio.run(keys.revoke(settings, args.key_id)):
        say(f"revoked {args.key_id}; the API refuses it within 5 s")
        return 0
    say(f"no active key {args.key_id}")
    return 1


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.clock import Clock
    from stripemeter.demo import run_demo

    if args.at is not None:
        settings = settings.with_overrides(clock_offset_seconds=Clock.starting_at(args.at).offset_seconds)
    return run_demo(settings, say)


def period_name(text: str) -> str:
    from stripemeter.reconcile.periods import PeriodError, parse_name

    try:
        parse_name(text)
    except PeriodError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


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


# --- parser ---------------------------------------------------------------------------------------

Command = Callable[[Settings, argparse.Namespace], int]


STAGE_PROCESSES_BENCH = "run the worker with --stage-processes (intake and sink as its children)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stripemeter",
        description="Kafka-native usage metering for Stripe Billing Meters. "
        "Configuration comes from the environment (see README: Configuration).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, func: Command, help: str
    ) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    stack = sub.add_parser(
        "stack", help="run the local stack (Kafka, PostgreSQL, worker, API) in the background"
    )
    stack_sub = stack.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = add(
        stack_sub, "up", cmd_stack_up, "start everything (harmless when already running) and wait until ready"
    )
    up.add_argument("--infra-only", action="store_true", help="only Kafka, PostgreSQL, migrations and topics")
    add(stack_sub, "down", cmd_stack_down, "stop everything the stack started; data is kept")
    add(stack_sub, "status", cmd_stack_status, "show what runs, where it listens and where it logs")

    db = sub.add_parser("db", help="PostgreSQL schema")
    db_sub = db.add_subparsers(dest="action", metavar="ACTION", required=True)
    add(db_sub, "migrate", cmd_db_migrate, "apply pending SQL migrations (idempotent)")

    topics = sub.add_parser("topics", help="Kafka topics as code")
    topics_sub = topics.add_subparsers(dest="action", metavar="ACTION", required=True)
    add(
        topics_sub,
        "create",
        cmd_topics_create,
        "create every stripemeter topic and align its config (idempotent)",
    )
    lst = add(
        topics_sub,
        "list",
        cmd_topics_list,
        "show stripemeter topics: partitions, retention, cleanup, messages",
    )
    lst.add_argument("--all", action="store_true", help="show every topic on the broker, not only ours")
    desc = add(
        topics_sub,
        "describe",
        cmd_topics_describe,
        "one topic: partitions with leader, replicas and offsets, configs that matter, groups' lag",
    )
    desc.add_argument("topic", help="logical name (usage.events, ledger, counters-changelog) or full name")
    tail = add(
        topics_sub,
        "tail",
        cmd_topics_tail,
        "print a topic's records decoded, one per line (or JSON Lines); reads without a consumer group",
    )
    tail.add_argument("topic", help="logical name (usage.events, ledger, counters-changelog) or full name")
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--from-beginning", action="store_true", help="start at the oldest retained record")
    start.add_argument(
        "--since",
        metavar="WHEN",
        help="start at this record time: signed ISO 8601 duration (-PT1H, -P1D) or RFC 3339",
    )
    tail.add_argument(
        "--last",
        type=int,
        default=10,
        metavar="N",
        help="without --from-beginning or --since: start N messages before the end of each partition"
        " (default 10)",
    )
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new records (Ctrl-C stops)")
    tail.add_argument("-n", "--limit", type=int, metavar="N", help="stop after N printed records")
    tail.add_argument("--tenant", help="only records of this tenantId")
    tail.add_argument("--metric", help="only records of this metric")
    tail.add_argument("--customer", help="only records of this customerRef")
    tail.add_argument("--json", action="store_true", help="JSON Lines: position, key, kind and the record")

    bench = sub.add_parser(
        "bench", help="measure the pipeline on the local broker against a plain-aiokafka baseline"
    )
    bench_sub = bench.add_subparsers(dest="action", metavar="ACTION", required=True)
    tp = add(
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
    lat = add(
        bench_sub,
        "latency",
        cmd_bench_latency,
        "produce-to-delta latency under a fixed load, and the worker's memory over the run",
    )
    lat.add_argument("--rate", type=int, default=10_000, help="background events/s (default 10000)")
    lat.add_argument("--seconds", type=int, default=30, help="how long to run (default 30)")
    lat.add_argument("--partitions", type=int, default=4, help="partitions per topic (default 4)")
    lat.add_argument("--stage-processes", action="store_true", help=STAGE_PROCESSES_BENCH)
    sb = add(
        bench_sub,
        "stripe",
        cmd_bench_stripe,
        "pushes/s to the Stripe emulator and events per Stripe call (the coalescing ratio)",
    )
    sb.add_argument("--events", type=int, default=100_000, help="events (default 100000)")
    sb.add_argument("--customers", type=int, default=2000, help="customers (default 2000)")
    sb.add_argument("--calls-per-second", type=float, default=500, help="writer rate limit (default 500)")
    sb.add_argument("--partitions", type=int, default=4, help="partitions per topic (default 4)")

    from stripemeter.topic_inspect.kafka_tools import tool_names

    tool = add(
        sub,
        "kafka-tool",
        cmd_kafka_tool,
        "run one of Kafka's own CLI tools from the installed broker jars; --bootstrap-server is filled in",
    )
    tool.add_argument("name", metavar="NAME", help="one of: " + ", ".join(tool_names()))
    tool.add_argument("args", nargs=argparse.REMAINDER, help="the tool's own arguments")

    bp = add(
        bench_sub,
        "replay",
        cmd_bench_replay,
        "replay dry-run and apply over a seeded ledger window, next to a bare scan of the window",
    )
    bp.add_argument("--events", type=int, default=10_000, help="ledger rows in the window (default 10000)")
    bp.add_argument("--late", type=int, default=10_000, help="how many of them are too late (default 10000)")
    bp.add_argument("--customers", type=int, default=1000, help="customers (default 1000)")
    br = add(
        bench_sub,
        "reconcile",
        cmd_bench_reconcile,
        "one reconciliation of many customers against the emulator, next to the bare Stripe calls",
    )
    br.add_argument("--customers", type=int, default=10_000, help="customers (default 10000)")
    br.add_argument("--hours", type=int, default=3, help="counted hours per customer (default 3)")

    worker = add(
        sub,
        "worker",
        cmd_worker,
        "run a pipeline worker (intake, metering, PostgreSQL sink); scale by running more",
    )
    worker.add_argument(
        "--no-sink",
        action="store_true",
        help="leave PostgreSQL writes to a separate `stripemeter sink` process",
    )
    worker.add_argument(
        "--no-intake",
        action="store_true",
        help="leave usage.events to a separate `stripemeter intake` process",
    )
    worker.add_argument(
        "--stage-processes",
        action="store_true",
        help="run intake and the PostgreSQL sink as child processes of the worker (up to three cores; "
        "on a machine shared with the broker and PostgreSQL one process was faster)",
    )
    for name, run, text in (
        ("intake", cmd_intake, "validate and re-key usage.events on its own (if workers use --no-intake)"),
        (
            "sink",
            cmd_sink,
            "write the ledger, dead letters and counters to PostgreSQL (if workers use --no-sink)",
        ),
    ):
        stage = add(sub, name, run, text)
        stage.add_argument("--worker-socket", type=int, help=argparse.SUPPRESS)  # set by a parent worker
    add(sub, "api", cmd_api, "run the HTTP API")
    emulator = add(
        sub,
        "stripe-emulator",
        cmd_stripe_emulator,
        "run the stateful Stripe Billing Meters emulator (tests, demo)",
    )
    emulator.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    emulator.add_argument("--port", type=int, default=12111, help="port (default 12111)")
    emulator.add_argument(
        "--ops-per-second",
        type=float,
        default=25.0,
        help="one budget for all requests, reads and writes, as in Stripe test mode (default 25; 0: none)",
    )
    keys = sub.add_parser("keys", help="API keys for the HTTP API")
    keys_sub = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    kc = add(keys_sub, "create", cmd_keys_create, "create a key; it is printed once, only its hash is stored")
    kc.add_argument("--tenant", required=True, help="the tenant the key may see ('*' for every tenant)")
    kc.add_argument(
        "--scopes", required=True, help="comma-separated: ingest, read, replay, reconcile, admin (admin: all)"
    )
    kc.add_argument("--description", help="what the key is for")
    kl = add(keys_sub, "list", cmd_keys_list, "list keys (ids, tenants, scopes, state; never the secrets)")
    kl.add_argument("--tenant", help="only this tenant's keys")
    kr = add(keys_sub, "revoke", cmd_keys_revoke, "revoke a key by its id")
    kr.add_argument("key_id", help="the key id (the part after smk_)")

    rep = add(
        sub,
        "replay",
        cmd_replay,
        "count a window's too-late events exactly once: a dry-run by default, --apply to change counters"
        " (the change then reaches Stripe through the writer)",
    )
    rep.add_argument("--tenant", required=True, help="tenant to replay")
    rep.add_argument("--metric", action="append", required=True, help="metric to replay (repeat for more)")
    rep.add_argument("--customer", help="only this customerRef")
    rep.add_argument("--since", required=True, help="RFC 3339, now, or a duration like -PT24H or -P7D")
    rep.add_argument("--until", default="now", help="as --since (default: now)")
    rep.add_argument("--apply", action="store_true", help="apply the corrections (default: dry-run only)")
    rep.add_argument("--json", action="store_true", help="print the full report as JSON")
    rec = add(
        sub,
        "reconcile",
        cmd_reconcile,
        "compare local totals with Stripe for one tenant now, per billing period; align what is within"
        " epsilon (exit status 3 when drift remains in any period)",
    )
    rec.add_argument("--tenant", required=True, help="tenant to reconcile")
    rec.add_argument("--metric", help="only this metric (default: every metric of the tenant)")
    rec.add_argument(
        "--period",
        type=period_name,
        help="billing period YYYY-MM (default: every period whose invoice can still change: the current"
        " one, and the previous one shortly after it closed)",
    )
    rec.add_argument(
        "--align-all",
        action="store_true",
        help="also correct Stripe where drift is beyond epsilon (after a replay made local totals right)",
    )
    rec.add_argument("--json", action="store_true", help="print the full report as JSON")
    demo = add(sub, "demo", cmd_demo, "bring the local stack up, send sample usage and tell the whole story")
    demo.add_argument(
        "--at",
        type=instant,
        help="live at this instant (e.g. 2027-01-01T00:30:00Z): the stack's worker, API and Stripe"
        " emulator start with the same clock offset (stop a stack running at another time first)",
    )
    return parser


def glue_negative_durations(argv: Sequence[str]) -> list[str]:
    """``--since -PT1H`` -> ``--since=-PT1H`` (and ``--until``): argparse would take ``-PT1H`` for an
    option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--since", "--until") and arg[:2].upper() == "-P":
            out[-1] = f"--since={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(glue_negative_durations(sys.argv[1:] if argv is None else argv))
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"stripemeter: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        return int(args.func(settings, args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if settings.log_level.upper() == "DEBUG":
            raise
        print(f"stripemeter {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
