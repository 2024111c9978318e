"""Commands for the local stack and the PostgreSQL schema: `stack up|down|status`, `db migrate`."""

from __future__ import annotations

import argparse

from stripemeter.cli.common import Subcommands, add_command, print_table, say
from stripemeter.domain.config import Settings


def cmd_stack_up(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.tools.local.stack import up

    up(settings, say, with_app=not args.infra_only)
    cmd_stack_status(settings, args)
    return 0


def cmd_stack_down(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.tools.local.stack import down

    down(settings, say)
    return 0


def cmd_stack_status(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.tools.local.stack import clock_note, status

    rows = status(settings)
    print_table(["service", "state", "listens on", "log"], rows)
    note = clock_note(settings)
    if note:
        say(note)
    return 0


def cmd_db_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.adapters.postgres.migrate import migrate

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


def add_stack(sub: Subcommands) -> None:
    """`stack up|down|status`."""
    stack = sub.add_parser(
        "stack", help="run the local stack (Kafka, PostgreSQL, worker, API) in the background"
    )
    stack_sub = stack.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = add_command(
        stack_sub, "up", cmd_stack_up, "start everything (harmless when already running) and wait until ready"
    )
    up.add_argument("--infra-only", action="store_true", help="only Kafka, PostgreSQL, migrations and topics")
    add_command(stack_sub, "down", cmd_stack_down, "stop everything the stack started; data is kept")
    add_command(stack_sub, "status", cmd_stack_status, "show what runs, where it listens and where it logs")


def add_db(sub: Subcommands) -> None:
    """`db migrate`."""
    db = sub.add_parser("db", help="PostgreSQL schema")
    db_sub = db.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_command(db_sub, "migrate", cmd_db_migrate, "apply pending SQL migrations (idempotent)")
