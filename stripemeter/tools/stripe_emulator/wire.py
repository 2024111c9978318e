"""Stripe's v1 wire format: form bodies with bracket keys in, JSON with a `Request-Id` header out.

stripe-python encodes nested params as `payload[value]=3`, `default_aggregation[formula]=sum` and
lists as `expand[0]=x` (older clients send `expand[]=x`); GET params travel in the query string.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

from stripemeter.tools.stripe_emulator.stripe_errors import StripeApiError, invalid

_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 14) -> str:
    """An object id in Stripe's shape, e.g. `cus_NffrFeUfNV2Hib`."""
    return prefix + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def split_key(key: str) -> list[str]:
    """`payload[a][b]` -> `["payload", "a", "b"]`; `expand[]` -> `["expand", ""]`."""
    head, bracket, tail = key.partition("[")
    if not bracket:
        return [key]
    return [head, *_BRACKETS.findall(bracket + tail)]


def decode_form(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Nest bracket keys into dicts; dicts whose keys are all indices (or `[]`) become lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = split_key(key)
        node = root
        for part in parts[:-1]:
            child = node.setdefault(part or str(len(node)), {})
            if not isinstance(child, dict):
                raise invalid(f"Invalid value for {key}: conflicting parameter shapes.", param=key)
            node = child
        last = parts[-1] or str(len(node))
        if isinstance(node.get(last), dict):
            raise invalid(f"Invalid value for {key}: conflicting parameter shapes.", param=key)
        node[last] = value
    # The body itself stays a dict, even if all its keys are digits (`0=x`): only nested dicts are lists.
    return {k: _listify(v) if isinstance(v, dict) else v for k, v in root.items()}


def _listify(node: dict[str, Any]) -> Any:
    items = {k: _listify(v) if isinstance(v, dict) else v for k, v in node.items()}
    if items and all(k.isdigit() for k in items):
        return [items[k] for k in sorted(items, key=int)]
    return items


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def error_response(error: StripeApiError) -> web.Response:
    return json_response(error.envelope(), status=error.status, headers=error.headers())
