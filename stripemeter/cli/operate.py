"""Operator commands on the counted data: `replay` and `reconcile`."""

from __future__ import annotations

import argparse
import asyncio

from stripemeter.cli.common import Subcommands, add_command, print_table, say
from stripemeter.domain.config import Settings


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.cli.actions import reconcile
    from stripemeter.services.reconciliation.request import Align, RunRequest

    align: Align = "all" if args.align_all else "within_epsilon"
    request = RunRequest(args.tenant, args.metric, args.period, align=align, trigger="cli")
    settings = with_stack_stripe(settings, quiet=args.json)
    reports = asyncio.run(reconcile(settings, request, args.json, say, print_table))
    return 3 if any(report["status"] == "drift" for report in reports) else 0


def with_stack_stripe(settings: Settings, quiet: bool) -> Settings:
    """No Stripe configured: the Stripe of the local stack under STRIPEMETER_STATE_DIR, if one runs."""
    from stripemeter.services.reconciliation.build import stripe_configured
    from stripemeter.tools.local.stack import stack_stripe

    if stripe_configured(settings):
        return settings
    local = stack_stripe(settings)
    if local is None:
        return settings
    if not quiet:
        say(f"Stripe: the local stack's emulator at {local.stripe_api_base} (no STRIPE_API_KEY set)")
    return local


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.cli.actions import replay

    report = asyncio.run(replay(settings, args, say, print_table))
    return 0 if report else 1


def period_name(text: str) -> str:
    from stripemeter.domain.periods import PeriodError, parse_name

    try:
        parse_name(text)
    except PeriodError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_operate(sub: Subcommands) -> None:
    """`replay` and `reconcile`."""
    rep = add_command(
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
    rec = add_command(
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
