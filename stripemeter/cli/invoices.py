"""`invoices list|show`: the Stripe invoices the pre-invoice guard knows, and the proof it kept for each."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import psycopg

from stripemeter.adapters.postgres.invoices import STATES
from stripemeter.cli.common import Subcommands, add_command, print_table, say
from stripemeter.domain.config import Settings


async def _rows(settings: Settings, args: argparse.Namespace) -> list[dict[str, Any]]:
    from stripemeter.adapters.postgres import invoices as db
    from stripemeter.domain import periods

    start = end = None
    if args.period:
        month = periods.period(args.period)
        start, end = month.start, month.end
    async with await psycopg.AsyncConnection.connect(settings.database_url.value, autocommit=True) as conn:
        return await db.page(conn, args.tenant, args.status, start, end, None, args.limit)


def cmd_invoices_list(settings: Settings, args: argparse.Namespace) -> int:
    rows = asyncio.run(_rows(settings, args))
    print_table(
        ["invoice", "tenant", "customer", "period start", "Stripe", "guard", "why"],
        [
            [
                r["invoice_id"], r["tenant_id"] or "-", r["customer_ref"] or r["stripe_customer"],
                f"{r['period_start']:%Y-%m-%d %H:%M}" if r["period_start"] else "-", r["stripe_status"],
                r["guard_state"], r["reason_code"] or "",
            ]
            for r in rows
        ],
    )  # fmt: skip
    return 0


def cmd_invoices_show(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.adapters.postgres import invoices as db
    from stripemeter.api.invoices import invoice_view

    async def fetch() -> dict[str, Any] | None:
        async with await psycopg.AsyncConnection.connect(settings.database_url.value) as conn:
            return await db.get(conn, args.invoice_id)

    row = asyncio.run(fetch())
    if row is None:
        say(f"no invoice {args.invoice_id} is known to the guard")
        return 1
    view = invoice_view(row, with_proof=True)
    if args.json:
        say(json.dumps(view, indent=2))
        return 0
    say(f"invoice {view['invoiceId']} of {view['stripeCustomer']} ({view['tenantId']}/{view['customerRef']})")
    say(f"  period {view['periodStart']} to {view['periodEnd']}; Stripe: {view['stripeStatus']}")
    say(f"  guard: {view['guardState']} ({view['reasonCode']}): {view['reason']}")
    for label, key in (("held", "heldAt"), ("released", "releasedAt"), ("finalized", "finalizedAt")):
        if view[key]:
            say(f"  {label} at {view[key]}")
    print_table(
        ["line", "metric", "period", "local", "Stripe", "invoice", "hours", "corrections", "proven"],
        [
            [
                line["lineId"], line.get("metric", "-"), line.get("period", "-"), line.get("local", "-"),
                line.get("stripe", "-"), line.get("invoiceQuantity") or "-", line.get("hoursCompared", "-"),
                line.get("corrections", "-"), "yes" if line.get("proven") else line.get("problem", "no"),
            ]
            for line in view["lines"]
        ],
    )  # fmt: skip
    return 0


def add_invoices(sub: Subcommands) -> None:
    """`invoices list|show`."""
    invoices = sub.add_parser("invoices", help="Stripe invoices held and released by the pre-invoice guard")
    invoices_sub = invoices.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = add_command(
        invoices_sub, "list", cmd_invoices_list, "the invoices the guard knows, newest first"
    )
    listing.add_argument("--tenant", help="one tenant's invoices")
    listing.add_argument("--period", help="YYYY-MM: invoices whose period starts in that month")
    listing.add_argument("--status", choices=STATES, help="one guard state")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    show = add_command(invoices_sub, "show", cmd_invoices_show, "one invoice and its proof, line by line")
    show.add_argument("invoice_id", help="Stripe's invoice id (in_...)")
    show.add_argument("--json", action="store_true", help="the proof as the API serves it")
