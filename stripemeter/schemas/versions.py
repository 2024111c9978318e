"""Versions of the internal records and changelog values, so that two releases can share the topics.

Every record a worker writes for itself or for the next stage says which format it is in:
- an array message (a keyed message of events, a ledger record): the array's first element is the
  version, ``[2, item, item, ...]``; format 1 has items only (``[item, ...]``, every item an array);
- an object record (a control message, a mapping update, a usage.deltas, usage.late or
  reconciliation.drift record): a ``"v"`` field; format 1 has none;
- a changelog value (the worker's dedupe, counters and watermarks tables): a JSON array whose first
  element is the version as a string, ``["v2", ...]`` (Faust restores tables from their changelogs as
  JSON, so a value stays JSON); format 1 is the bare array (first element a number or null) or, for a
  watermark, the bare number.

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
    if version.__class__ is not int or version < READABLE[0]:
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
# Faust decodes changelog values as JSON when it restores a table, so a value stays one JSON document:
# an array whose first element is the version as a string (``["v2", ...]``); format 1 is an array that
# starts with a number or null, or a bare number (a watermark).

_VALUE_HEAD = b'["v'
_VALUE_V2 = b'["v2",'


def dump_value(value: list[Any]) -> bytes:
    """A changelog value (a non-empty JSON array) in the written format."""
    if _write >= CURRENT:
        return _VALUE_V2 + orjson.dumps(value)[1:]
    return orjson.dumps(value)


def _value_version(raw: bytes) -> int:
    end = raw.find(b'"', 3)
    digits = raw[3:end]
    if end < 0 or not digits.isdigit():
        raise ValueError(f"a changelog value has an invalid record version {raw[:12]!r}")
    return check(int(digits), "a changelog value")


def load_value(raw: bytes) -> Any:
    """A JSON changelog value of either format (an array: the version dropped)."""
    value = orjson.loads(raw)
    if raw.startswith(_VALUE_HEAD):
        if not raw.startswith(_VALUE_V2):  # the common case needs no parsing of the version
            _value_version(raw)
        del value[0]
    return value


def dump_int(value: int) -> bytes:
    """An integer changelog value (a watermark) in the written format."""
    if _write >= CURRENT:
        return b'["v2",%d]' % value
    return str(value).encode()


def load_int(raw: bytes) -> int:
    if raw.startswith(_VALUE_HEAD):
        if not raw.startswith(_VALUE_V2):
            _value_version(raw)
        return int(raw[6:-1])  # ["v2",N]
    return int(raw)
