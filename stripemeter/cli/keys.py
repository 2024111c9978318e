"""Who may do what: the HTTP API's keys (`keys create|list|revoke`) and the Stripe meters each tenant may
use (`meters grant|revoke|list`, the operator's decision)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg

from stripemeter.cli.common import Subcommands, add_command, print_table, say
from stripemeter.domain.config import Settings

T = TypeVar("T")


def cmd_keys_create(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.services import api_keys as keys

    token = asyncio.run(keys.create(settings, args.tenant, args.scopes, args.description))
    say(token)
    print(
        "this key is shown once and stored only as a salted hash; send it as: Authorization: Bearer <key>",
        file=sys.stderr,
    )
    return 0


def cmd_keys_list(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.services import api_keys as keys

    rows = asyncio.run(keys.list_rows(settings, args.tenant))
    print_table(["key id", "tenant", "scopes", "state", "created", "last used", "description"], rows)
    return 0


def cmd_keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.services import api_keys as keys

    if asyncio.run(keys.revoke(settings, args.key_id)):
        say(f"revoked {args.key_id}; the API refuses it within 5 s")
        return 0
    say(f"no active key {args.key_id}")
    return 1


def add_keys(sub: Subcommands) -> None:
    """`keys create|list|revoke`."""
    keys = sub.add_parser("keys", help="API keys for the HTTP API")
    keys_sub = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    kc = add_command(
        keys_sub, "create", cmd_keys_create, "create a key; it is printed once, only its hash is stored"
    )
    kc.add_argument("--tenant", required=True, help="the tenant the key may see ('*' for every tenant)")
    kc.add_argument(
        "--scopes",
        required=True,
        help="comma-separated: ingest, read, replay, reconcile, admin (admin: all of these), operator"
        " (the shared Stripe account: which meters each tenant may use; only with --tenant '*')",
    )
    kc.add_argument("--description", help="what the key is for")
    kl = add_command(
        keys_sub, "list", cmd_keys_list, "list keys (ids, tenants, scopes, state; never the secrets)"
    )
    kl.add_argument("--tenant", help="only this tenant's keys")
    kr = add_command(keys_sub, "revoke", cmd_keys_revoke, "revoke a key by its id")
    kr.add_argument("key_id", help="the key id (the part after smk_)")


def cmd_meters_grant(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.services import meter_grants

    row = asyncio.run(
        _with_connection(settings, lambda c: meter_grants.grant(c, args.tenant, args.event_name, wait=True))
    )
    say(
        f"tenant {args.tenant} may map its metrics to the Stripe meter {args.event_name}"
        f" (since {row['granted_at']:%Y-%m-%d %H:%M})"
    )
    return 0


def cmd_meters_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.services import meter_grants

    asyncio.run(
        _with_connection(settings, lambda c: meter_grants.revoke(c, args.tenant, args.event_name, wait=True))
    )
    say(f"tenant {args.tenant} may no longer map metrics to the Stripe meter {args.event_name}")
    return 0


def cmd_meters_list(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.services import meter_grants

    rows = asyncio.run(
        _with_connection(settings, lambda c: meter_grants.list_grants(c, args.tenant, 1_000_000))
    )
    print_table(
        ["tenant", "Stripe meter event name", "granted"],
        [[r["tenant_id"], r["event_name"], f"{r['granted_at']:%Y-%m-%d %H:%M}"] for r in rows],
    )
    return 0


async def _with_connection(settings: Settings, work: Callable[[psycopg.AsyncConnection], Awaitable[T]]) -> T:
    async with await psycopg.AsyncConnection.connect(settings.database_url.value, autocommit=True) as conn:
        return await work(conn)


def add_meters(sub: Subcommands) -> None:
    """`meters grant|revoke|list`."""
    meters = sub.add_parser(
        "meters", help="the Stripe meters each tenant may map its metrics to (an operator's decision)"
    )
    meters_sub = meters.add_subparsers(dest="action", metavar="ACTION", required=True)
    grant = add_command(
        meters_sub, "grant", cmd_meters_grant, "let a tenant map its metrics to a Stripe meter"
    )
    revoke = add_command(
        meters_sub, "revoke", cmd_meters_revoke, "take a meter back (refused while a metric is mapped to it)"
    )
    for command in (grant, revoke):
        command.add_argument("--tenant", required=True, help="the tenant")
        command.add_argument("event_name", help="the Stripe meter's event_name")
    listing = add_command(meters_sub, "list", cmd_meters_list, "the meters granted to a tenant")
    listing.add_argument("--tenant", required=True, help="the tenant")
