"""What an error tells its caller to do: one small hierarchy at the bottom of the imports.

Every error the project defines derives from one of four kinds of ``StripemeterError``:

- ``Invalid``: the input is wrong; sending it again changes nothing. ``field`` names the input at
  fault (None when it is the whole input), ``detail`` says what is wrong with it, ``code`` is a
  stable machine-readable name.
- ``Transient``: it may succeed later: retry the same thing.
- ``Permanent``: it will not succeed by retrying; someone has to change something first.
- ``Backpressure``: too much, too fast: slow down; ``retry_after`` (seconds), when known, says how
  long to wait.

Context travels as attributes, never inside the message alone: whoever decides on an error (the
API's status, a retry loop) reads its type and attributes, not its text. Domain errors keep the
builtin base they had (``ValueError``, ``LookupError``, ``RuntimeError``) next to their kind, so an
existing ``except ValueError`` still catches them.

This module imports nothing of the project.
"""

from __future__ import annotations


class StripemeterError(Exception):
    """Base of every error the project defines; ``code`` is a stable name for it."""

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class Invalid(StripemeterError):
    """The input is wrong: ``field`` names it (None for the whole input), ``detail`` says what is wrong.

    The message is ``"{field}: {detail}"`` (``detail`` alone without a field) unless one is given.
    """

    code = "invalid_parameter"

    def __init__(
        self, field: str | None, detail: str, *, code: str | None = None, message: str | None = None
    ) -> None:
        if message is None:
            message = f"{field}: {detail}" if field else detail
        super().__init__(message, code=code)
        self.field = field
        self.detail = detail


class Conflict(Invalid, ValueError):
    """The input is well formed but contradicts what is stored (another mapping, counted usage):
    refused with nothing changed. ``field`` names the input that would have to change."""

    code = "conflict"


class NotFound(Invalid, LookupError):
    """The input names something that does not exist (``field`` names it)."""

    code = "not_found"


class Forbidden(Invalid, PermissionError):
    """The caller may not do this (``field`` names the input it may not use): another tenant's object, or a
    power over the shared Stripe account that only an operator has."""

    code = "forbidden"


class Transient(StripemeterError):
    """It may succeed later: retry the same thing (after ``retry_after`` seconds, when known)."""

    code = "unavailable"

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Permanent(StripemeterError):
    """It will not succeed by retrying: something has to change first."""

    code = "failed"


class Backpressure(StripemeterError):
    """Too much, too fast: slow down, and wait ``retry_after`` seconds when it is known."""

    code = "rate_limited"

    def __init__(self, message: str, *, code: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Busy(Transient):
    """The thing asked for is being done right now by another request (a replay or reconciliation of
    the same tenant, an adjustment with the same key): ask again after ``retry_after`` seconds."""

    code = "busy"
