"""Commands running the long-lived processes: `worker`, `intake`, `sink`, `api`, `stripe-emulator`."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from stripemeter.cli.common import Subcommands, add_command, say
from stripemeter.domain.config import Settings


def check_schema(settings: Settings) -> None:
    """Refuse to start on a database schema this release does not run on (docs/upgrades.md)."""
    from stripemeter.adapters.postgres.migrate import check_schema as check

    check(settings.database_url.value)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from faust import Worker

    from stripemeter.streams import memory_tuning
    from stripemeter.streams.worker.startup_checks import check_topic_replication
    from stripemeter.streams.worker_app import create_app

    check_schema(settings)
    asyncio.run(check_topic_replication(settings))
    app = create_app(
        settings,
        with_sink=not args.no_sink,
        with_intake=not args.no_intake,
        stage_processes=args.stage_processes,
    )
    memory_tuning.tune()
    # Faust replaces the root logger's handlers with its own (text) ones unless told not to: in JSON,
    # the handlers `stripemeter` set up stay
    worker = Worker(
        app,
        loglevel=settings.log_level.lower(),
        quiet=True,
        redirect_stdouts=False,
        override_logging=settings.log_format != "json",
    )
    if settings.log_format == "json":
        worker.spinner = None  # Faust's terminal spinner writes to stdout; its own logging setup drops it
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

    check_schema(settings)
    memory_tuning.tune()
    asyncio.run(stages.run_stage(postgres_sink(settings), args.worker_socket))
    return 0


def cmd_stripe_emulator(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.tools.stripe_emulator import run

    budget = f"{args.ops_per_second:g} operations/s" if args.ops_per_second > 0 else "no rate limit"
    say(f"Stripe emulator on http://{args.host}:{args.port} (point STRIPE_API_BASE here; {budget})")
    run(args.host, args.port, settings.clock, args.ops_per_second, args.state_file)
    return 0


def cmd_stripe_emulator_seed(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.tools.local.stack import emulator_url
    from stripemeter.tools.stripe_emulator.seed import seed

    for line in seed(args.url or emulator_url(settings), args.event_name, args.email).shell():
        say(line)
    return 0


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.api.app import run

    check_schema(settings)
    run(settings)
    return 0


def add_processes(sub: Subcommands) -> None:
    """`worker`, `intake`, `sink`, `api` and `stripe-emulator`."""
    worker = add_command(
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
        stage = add_command(sub, name, run, text)
        stage.add_argument("--worker-socket", type=int, help=argparse.SUPPRESS)  # set by a parent worker
    add_command(sub, "api", cmd_api, "run the HTTP API")
    emulator = add_command(
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
    emulator.add_argument(
        "--state-file",
        type=Path,
        help="keep customers, meters and meter events in this JSON file across restarts (default: memory)",
    )
    actions = emulator.add_subparsers(dest="action", metavar="ACTION")
    seed = add_command(
        actions,
        "seed",
        cmd_stripe_emulator_seed,
        "make a meter and a customer in the running emulator (idempotent); prints their ids as shell"
        ' assignments: eval "$(stripemeter stripe-emulator seed)"',
    )
    seed.add_argument(
        "--event-name", default="api_requests", help="the meter's event name (default api_requests)"
    )
    seed.add_argument(
        "--email", default="alice@example.com", help="the customer's email (default alice@example.com)"
    )
    seed.add_argument("--url", help="the emulator (default: the local stack's, STRIPEMETER_EMULATOR_PORT)")
