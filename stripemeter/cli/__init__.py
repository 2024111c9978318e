"""The `stripemeter` command: every process and operator task behind one entry point."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from stripemeter.cli import alerts, bench, events, invoices, keys, operate, processes, recovery, stack, topics
from stripemeter.cli.errors import error_message
from stripemeter.domain.config import ConfigError, load_settings
from stripemeter.domain.logs import configure_logging
from stripemeter.schemas import versions

__all__ = ["build_parser", "glue_negative_durations", "main"]

log = logging.getLogger("stripemeter")


def build_parser() -> argparse.ArgumentParser:
    """Every command, in the order `stripemeter --help` lists them."""
    parser = argparse.ArgumentParser(
        prog="stripemeter",
        description="Kafka-native usage metering for Stripe Billing Meters. "
        "Configuration comes from the environment (see README: Configuration).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    stack.add_stack(sub)
    stack.add_db(sub)
    topics.add_topics(sub)
    events.add_events(sub)
    bench.add_bench(sub)
    topics.add_kafka_tool(sub)
    processes.add_processes(sub)
    keys.add_keys(sub)
    keys.add_meters(sub)
    operate.add_operate(sub)
    invoices.add_invoices(sub)
    recovery.add_recovery(sub)
    alerts.add_alerts(sub)
    bench.add_demo(sub)
    return parser


def glue_negative_durations(argv: Sequence[str]) -> list[str]:
    """``--since -PT1H`` -> ``--since=-PT1H`` (and ``--until``): argparse would take ``-PT1H`` for an
    option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--since", "--until") and arg[:2].upper() == "-P":
            out[-1] = f"{out[-1]}={arg}"
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
    configure_logging(settings.log_level, settings.log_format)
    versions.use_write_version(settings.record_write_version)  # every record this process writes
    try:
        return int(args.func(settings, args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if settings.log_level.upper() == "DEBUG":
            raise
        print(
            f"stripemeter {args.command}: {error_message(exc)}"
            " (STRIPEMETER_LOG_LEVEL=DEBUG shows the traceback)",
            file=sys.stderr,
        )
        return 1
