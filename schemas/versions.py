"""Versions of the internal records and changelog values, so that two releases can share the topics.

Every record a worker writes for itself or for the next stage says which format it is in:
- an array message (a keyed message of events, a ledger record): the array's first element is the
  version, ``[2, item, item, ...]``; format 1 has items only (``[item, ...]``, every item an array);
- an object record (a control message, a mapping update, a usage.deltas, usage.late or
  reconciliation.drift record): a ``"v"`` field; format 1 has none;
- a changelog value (the worker's dedupe, counters and watermarks tables): one leading byte that is
  the version (``b"\\x02"``); format 1 starts with the JSON or the digits themselves.

Readers take format 1 and 2. A record of a later version than this release knows raises
``UnknownRecordVersion``, which is not one of the meter's poison errors: the stage stops instead of
dead-lettering or half-counting it (a release that writes it is already running: upgrade this one).

Which version is written is a process-wide setting (``STRIPEMETER_RECORD_WRITE_VERSION``, set once at
start-up by the CLI): during a rolling upgrade the new release writes the previous format until no
worker of the previous release is left (docs/upgrades.md).
"""

from __future__ import annotations

from typing import Any

import orjson

from stripemeter.domain.errors import Permanent

PREVIOUS = 1  # the format of the release before this one (records without a version)
CURRENT = 2
READABLE = (PREVIOUS, CURRENT)

_CHANGELOG_PREFIX = b"\x02"  # CURRENT as one byte
_FIRST_JSON_BYTE = 0x20  # a format-1 value starts with '[' '-' or a digit; a version byte is below


class UnknownRecordVersion(Permanent):
    """A record of a format this release cannot read (written by a later release). Deliberately not a
    ValueError: the meter sets aside what raises ValueError; this stops the stage instead."""

    def __init__(self, version: object, what: str):
        super().__init__(
            f"{what} of record format {version!r}; this release reads formats {READABLE[0]} to"
            f" {READABLE[-1]}: a later release wrote it (upgrade this worker, or pin"
            f" STRIPEMETER_RECORD_WRITE_VERSION={CURRENT} on the later release until every worker runs it)"
        )
        self.version = version


_write = CURRENT


def use_write_version(version: int) -> None:
    """Write ``version`` from now on (the process's setting)."""
    global _write
    if version not in READABLE:
        raise ValueError(f"record write version must be one of {READABLE}, not {version}")
    _write = version


def write_version() -> int:
    return _write


def check(version: Any, what: str) -> int:
    """``version`` if this release reads it; a later one raises ``UnknownRecordVersion``."""
    if version.__class__ is not int or version < CURRENT and version not in READABLE:
        raise ValueError(f"{what} has an invalid record version {version!r}")
    if version > CURRENT:
        raise UnknownRecordVersion(version, what)
    return int(version)


# --- array messages (keyed messages, ledger records) ---


def array_head() -> bytes:
    """What an array message starts with before its first item."""
    return b"[2," if _write >= CURRENT else b"["


def array_items(value: Any, what: str) -> list[Any]:
    """The items of a decoded array message of either format (the version element dropped)."""
    if not isinstance(value, list):
        raise TypeError(f"{what} holds a JSON array, not {type(value).__name__}")
    if value and value[0].__class__ is not list:
        check(value[0], what)
        del value[0]
    return value


def array_version(raw: bytes) -> int:
    """The format of an encoded array message, from its first bytes (no parsing)."""
    second = raw[1:2]
    if second in (b"[", b"]") or raw[:1] != b"[":
        return PREVIOUS
    end = 1
    while raw[end : end + 1].isdigit():
        end += 1
    if end == 1:
        return PREVIOUS  # not ours to judge: the reader refuses what is not an array of items
    return int(raw[1:end])


# --- object records ---


def stamp(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with the version field when the current format is written."""
    if _write >= CURRENT:
        record["v"] = CURRENT
    return record


def object_version(value: dict[str, Any], what: str) -> int:
    return check(value.get("v", PREVIOUS), what)


# --- changelog values ---


def dump_value(value: Any) -> bytes:
    """A changelog value (JSON) in the written format."""
    body = orjson.dumps(value)
    return _CHANGELOG_PREFIX + body if _write >= CURRENT else body


def load_value(raw: bytes) -> Any:
    """A JSON changelog value of either format."""
    first = raw[0]
    if first == CURRENT:
        return orjson.loads(raw[1:])
    if first < _FIRST_JSON_BYTE:
        raise UnknownRecordVersion(first, "a changelog value")
    return orjson.loads(raw)


def dump_int(value: int) -> bytes:
    """An integer changelog value (a watermark) in the written format."""
    body = str(value).encode()
    return _CHANGELOG_PREFIX + body if _write >= CURRENT else body


def load_int(raw: bytes) -> int:
    first = raw[0]
    if first == CURRENT:
        return int(raw[1:])
    if first < _FIRST_JSON_BYTE:
        raise UnknownRecordVersion(first, "a changelog value")
    return int(raw)
