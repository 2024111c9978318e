"""API keys (pure): their format, how they are hashed, and what each scope allows.

A key is ``smk_<key id>_<secret>``: the id finds the row, the secret is checked against a salted
SHA-256 (the secret is 192 random bits, so a slow hash adds nothing), compared in constant time.
Only the salt and the hash are stored; the key is shown once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

SCOPES = ("ingest", "read", "replay", "reconcile", "admin", "operator")
ALL_TENANTS = "*"
# Powers over the shared Stripe account, beyond any one tenant's counters: which Stripe meters a tenant
# may map its metrics to, and reconciliation that aligns Stripe with local totals whatever the drift.
# A tenant's own ``admin`` never has them; only keys of every tenant may hold the scope.
OPERATOR = "operator"


@dataclass(frozen=True)
class NewKey:
    key_id: str
    secret: str
    salt: bytes
    hash: bytes

    @property
    def token(self) -> str:
        return f"smk_{self.key_id}_{self.secret}"


@dataclass(frozen=True)
class Principal:
    key_id: str
    tenant_id: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        """``admin`` covers every tenant scope; ``operator`` only a key of every tenant that holds it."""
        if scope == OPERATOR:
            return self.operates
        return scope in self.scopes or "admin" in self.scopes

    @property
    def operates(self) -> bool:
        return self.tenant_id == ALL_TENANTS and OPERATOR in self.scopes

    def sees(self, tenant: str) -> bool:
        return self.tenant_id in (ALL_TENANTS, tenant)


def digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


def new_key() -> NewKey:
    key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(24), secrets.token_bytes(16)
    return NewKey(key_id, secret, salt, digest(salt, secret))


def split_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    prefix, _, rest = token.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != "smk" or len(key_id) != 12 or not secret:
        return None
    return key_id, secret


def verify(salt: bytes, stored: bytes, secret: str) -> bool:
    return hmac.compare_digest(digest(salt, secret), stored)


def parse_scopes(raw: str, tenant: str = ALL_TENANTS) -> list[str]:
    scopes = sorted({s.strip() for s in raw.split(",") if s.strip()})
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise ValueError(f"scopes must be a comma-separated subset of {', '.join(SCOPES)}; got {raw!r}")
    if OPERATOR in scopes and tenant != ALL_TENANTS:
        raise ValueError(
            f"the {OPERATOR!r} scope acts on the shared Stripe account: only a key of every tenant ('*')"
            " may hold it"
        )
    return scopes


def required_scope(method: str, route: str) -> str:
    """The scope a /v1 route needs: reads need ``read``; writes need the scope of what they change."""
    if route == "/v1/events/ingest":
        return "ingest"
    if route.startswith("/v1/replay") and method == "POST":
        return "replay"
    if route == "/v1/reconciliation/run":
        return "reconcile"
    if route.startswith("/v1/tenants/") and method not in ("GET", "HEAD"):
        return OPERATOR  # which Stripe meters a tenant may use
    if method in ("GET", "HEAD"):
        return "read"
    return "admin"  # mappings, customers, adjustments
