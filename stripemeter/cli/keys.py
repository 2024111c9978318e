"""Commands for the HTTP API's keys: `keys create|list|revoke`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from stripemeter.cli.common import Subcommands, add_command, print_table, say
from stripemeter.domain.config import Settings


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
