"""Commands inspecting Kafka: `topics create|specs|list|describe|tail` and `kafka-tool`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

from stripemeter.cli.common import Subcommands, add_command, print_table, say
from stripemeter.domain.config import Settings


def cmd_topics_create(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.adapters.kafka.admin import ensure_topics
    from stripemeter.schemas.topics import deployment_specs

    result = asyncio.run(ensure_topics(settings.kafka, deployment_specs(settings)))
    for name in result.created:
        say(f"created      {name}")
    for name in result.existing:
        say(f"{'reconfigured' if name in result.reconfigured else 'exists':12} {name}")
    return 0


def cmd_topics_specs(settings: Settings, args: argparse.Namespace) -> int:
    import orjson

    from stripemeter.schemas.topics import deployment_specs, specs_document

    document = specs_document(deployment_specs(settings))
    sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def cmd_topics_list(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.adapters.kafka.admin import describe
    from stripemeter.adapters.kafka.inspect.overview import overview
    from stripemeter.schemas.topics import TopicNames, topic_specs

    if args.all:
        infos = asyncio.run(describe(settings.kafka))
        print_table(
            ["topic", "partitions", "retention", "cleanup", "messages"],
            [(i.name, i.partitions, *_policy(i.config), i.messages) for i in infos],
        )
        return 0
    names = TopicNames(settings.topic_prefix, settings.app_id)
    ours = [s.name for s in topic_specs(names, settings.partitions)]
    view = asyncio.run(overview(settings.kafka, names, ours))
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
    from stripemeter.adapters.kafka.inspect.kinds import resolve_topic
    from stripemeter.adapters.kafka.inspect.overview import describe_one
    from stripemeter.schemas.topics import TopicNames, topic_specs

    names = TopicNames(settings.topic_prefix, settings.app_id)
    topic = resolve_topic(names, args.topic)
    state, lags = asyncio.run(describe_one(settings.kafka, names, topic))
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

    from stripemeter.adapters.kafka.inspect.kinds import logical_name, resolve_topic, topic_kind
    from stripemeter.adapters.kafka.inspect.tail import TailRequest, TailStart, tail
    from stripemeter.domain.instants import parse_instant_ms
    from stripemeter.schemas.topics import TopicNames

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
        asyncio.run(tail(settings.kafka, request, say))
    except BrokenPipeError:  # `| head` closed the pipe: not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - stdout for the rest of the process
    return 0


def cmd_kafka_tool(settings: Settings, args: argparse.Namespace) -> int:
    import subprocess

    from stripemeter.adapters.kafka.client_auth import write_tool_properties
    from stripemeter.adapters.kafka.inspect.kafka_tools import tool_command, write_log_config
    from stripemeter.tools.local.kafka import LocalKafka

    kafka = LocalKafka.from_settings(settings)
    if not kafka.installed():
        say(f"no Kafka {settings.kafka_version} jars in {kafka.libs}; `stripemeter stack up` installs them")
        return 2
    log_config = write_log_config(settings.cache_dir / "kafka")
    client_config = write_tool_properties(settings.kafka, settings.state_dir / "kafka-client")
    cmd = tool_command(
        args.name,
        list(args.args),
        settings.kafka_bootstrap_servers,
        kafka.libs,
        log_config,
        command_config=client_config,
    )
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


def add_topics(sub: Subcommands) -> None:
    """`topics create|specs|list|describe|tail`."""
    topics = sub.add_parser("topics", help="Kafka topics as code")
    topics_sub = topics.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_command(
        topics_sub,
        "create",
        cmd_topics_create,
        "create every stripemeter topic and align its config (idempotent)",
    )
    add_command(
        topics_sub,
        "specs",
        cmd_topics_specs,
        "print every topic this deployment's settings describe, as JSON (no broker needed)",
    )
    lst = add_command(
        topics_sub,
        "list",
        cmd_topics_list,
        "show stripemeter topics: partitions, retention, cleanup, messages",
    )
    lst.add_argument("--all", action="store_true", help="show every topic on the broker, not only ours")
    desc = add_command(
        topics_sub,
        "describe",
        cmd_topics_describe,
        "one topic: partitions with leader, replicas and offsets, configs that matter, groups' lag",
    )
    desc.add_argument("topic", help="logical name (usage.events, ledger, counters-changelog) or full name")
    tail = add_command(
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


def add_kafka_tool(sub: Subcommands) -> None:
    """`kafka-tool NAME ARGS...`."""
    from stripemeter.adapters.kafka.inspect.kafka_tools import tool_names

    tool = add_command(
        sub,
        "kafka-tool",
        cmd_kafka_tool,
        "run one of Kafka's own CLI tools from the installed broker jars; --bootstrap-server (and "
        "--command-config when Kafka is secured) is filled in",
    )
    tool.add_argument("name", metavar="NAME", help="one of: " + ", ".join(tool_names()))
    tool.add_argument("args", nargs=argparse.REMAINDER, help="the tool's own arguments")
