"""Dead-letter records (contract shape) for inputs that can never be counted."""

from __future__ import annotations

import base64
from typing import Any

import orjson

from stripemeter.schemas.events import InvalidEvent
from stripemeter.schemas.held_json import dumps_held

# A dead letter carries at most this much of the raw value: a message of up to 16 MiB (which the
# events topic takes so that it can be dead-lettered) would not fit the dead-letter topic, base64 and
# all. The ledger keeps the first 64 KiB anyway.
RAW_LIMIT_BYTES = 1024 * 1024


def dead_letter(error: InvalidEvent, topic: str, partition: int, offset: int, raw: bytes | None) -> bytes:
    """``{"error", "topic", "partition", "offset", "raw"}``; raw is the original value as a string.

    A value that is not UTF-8 is carried as base64 with ``"rawEncoding": "base64"`` so nothing is
    lost. For one bad element of an array message, ``raw`` is that element and ``index`` its place
    (the whole message when the element is nested too deeply to be written on its own). A value over
    ``RAW_LIMIT_BYTES`` is cut there, with ``"rawTruncated": true`` and its size in ``rawBytes``.
    """
    record: dict[str, Any] = {
        "error": error.as_error(),
        "topic": topic,
        "partition": partition,
        "offset": offset,
    }
    if error.index is not None:
        record["index"] = error.index
    if error.index is not None and (item := _encoded(error.raw_item)) is not None:
        record["raw"] = item
    elif raw is None:
        record["raw"] = None
    else:
        kept = raw[:RAW_LIMIT_BYTES]
        if len(kept) < len(raw):
            record["rawTruncated"], record["rawBytes"] = True, len(raw)
        try:
            record["raw"] = kept.decode("utf-8")
        except UnicodeDecodeError:
            record["raw"] = base64.b64encode(kept).decode()
            record["rawEncoding"] = "base64"
    return dumps_held(record)


def _encoded(item: Any) -> str | None:
    """The element as JSON; None when nested deeper than orjson writes (then raw is the message)."""
    try:
        return orjson.dumps(item).decode()
    except orjson.JSONEncodeError:
        return None
