"""Idempotency keys on POST, as Stripe applies them (API v1).

The first request with a key runs; once the endpoint started executing, its answer - status, body and
the `Stripe-Should-Retry` header - is stored for 24 h, success or failure, 500s included. A later
request with the same key and the same endpoint and parameters gets that answer again with
`Idempotent-Replayed: true`; different parameters give 400 `idempotency_error` (stripe-python raises
IdempotencyError); a request while the first is still running gets 409 `idempotency_error`.
Nothing is stored for a request that never executed: refused by the shape checks (unknown or missing
parameter, wrong type), rate limited (429), in conflict (409), or dropped before it arrived; a retry
of those runs afresh. Keys are scoped to the API key. The server decides what executed (server.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from stripemeter.tools.stripe_emulator.stripe_errors import StripeApiError

KEY_TTL_SECONDS = 24 * 3600


@dataclass(frozen=True)
class StoredResponse:
    fingerprint: str
    status: int
    body: bytes
    headers: dict[str, str]
    request_id: str
    created: float


def fingerprint(method: str, path: str, pairs: Iterable[tuple[str, str]]) -> str:
    text = "\n".join([method.upper(), path, *sorted(f"{k}={v}" for k, v in pairs)])
    return hashlib.sha256(text.encode()).hexdigest()


class IdempotencyStore:
    def __init__(self) -> None:
        self._stored: dict[tuple[str, str], StoredResponse] = {}
        self._running: set[tuple[str, str]] = set()

    def begin(self, scope: tuple[str, str], print_: str, now: float) -> StoredResponse | None:
        """Return the stored answer to replay, or mark the key running and return None."""
        self._expire(now)
        stored = self._stored.get(scope)
        if stored is not None:
            if stored.fingerprint != print_:
                raise StripeApiError(
                    400,
                    "idempotency_error",
                    "Keys for idempotent requests can only be used with the same parameters they were "
                    f"first used with. Try using a key other than '{scope[1]}' if you meant to execute "
                    "a different request.",
                )
            return stored
        if scope in self._running:
            raise StripeApiError(
                409,
                "idempotency_error",
                "There is currently another in-progress request using this Stripe-Idempotency-Key "
                "(that probably means you submitted twice, and the other request is still going through): "
                f"{scope[1]}. Please try again later.",
            )
        self._running.add(scope)
        return None

    def finish(self, scope: tuple[str, str], response: StoredResponse | None) -> None:
        self._running.discard(scope)
        if response is not None:
            self._stored[scope] = response

    def _expire(self, now: float) -> None:
        # Insertion order is creation order, so expired entries sit at the front.
        while self._stored:
            key, oldest = next(iter(self._stored.items()))
            if now - oldest.created <= KEY_TTL_SECONDS:
                return
            del self._stored[key]
