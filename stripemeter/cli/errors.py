"""What a failed command prints: a sentence for the terminal, not an exception's class name."""

from __future__ import annotations

import re
import urllib.error


def error_message(exc: BaseException) -> str:
    """The error's own words; a connection that failed says why; one with no words of its own is named
    in plain words (``KafkaTimeoutError()`` -> ``kafka timeout``)."""
    if isinstance(exc, urllib.error.HTTPError):
        body = exc.read()[:300].decode(errors="replace").strip() if exc.fp is not None else ""
        return f"{exc.url} answered {exc.code} {exc.reason}" + (f": {body}" if body else "")
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return error_message(reason) if isinstance(reason, BaseException) else str(reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f": {exc.filename}" if exc.filename else "")
    name = type(exc).__name__
    text = str(exc).strip().removeprefix(name).removeprefix(":").strip()  # aiokafka's start with it
    if text:
        return text
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).lower().split()
    return " ".join(w for w in words if w not in ("error", "exception")) or "failed"
