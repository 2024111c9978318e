"""Reading an ingest body: the events array, each element judged on its own as intake would.

The body is parsed with orjson, like every usage.events message. When orjson refuses the whole body,
the fault may lie inside one event (a NaN, a lone surrogate, invalid UTF-8, a number beyond a double,
nesting beyond 1024 levels): then the body's outline is read with the standard library's lenient
scanner, the bytes of each element are cut out exactly as the client sent them, and each is parsed
with orjson alone. An element orjson refuses is rejected as ``not_json`` (what intake answers for such
a message), naming the top-level field where the fault is; the others are judged as usual. A body
whose outline (outside the events) is not JSON is a 400.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import orjson

from stripemeter.domain.errors import Invalid
from stripemeter.schemas.events import InvalidEvent

_WS = re.compile(r"[ \t\n\r]*")
# only the outline matters here: numbers, constants and objects are read cheaply and thrown away
_LENIENT = json.JSONDecoder(
    strict=False,  # control characters inside strings
    parse_constant=lambda _name: None,  # NaN, Infinity, -Infinity
    parse_int=lambda _digits: 0,  # any number of digits
    parse_float=lambda _text: 0.0,
    object_pairs_hook=lambda _pairs: None,
)


class Unreadable(Invalid, ValueError):
    """The body's outline is not JSON: the whole body is refused (``field`` is ``body``, ``code``
    ``invalid_json``; the message, which is also the detail, says where)."""

    code = "invalid_json"
    member: tuple[str, int] | None = None  # (key, value start) of the member whose value was unreadable

    def __init__(self, detail: str) -> None:
        super().__init__("body", detail, message=detail)


def _skip(text: str, at: int) -> int:
    match = _WS.match(text, at)
    assert match is not None  # `[...]*` matches, if only the empty string
    return match.end()


def _value_end(text: str, at: int) -> int:
    try:
        return _LENIENT.raw_decode(text, at)[1]
    except (ValueError, RecursionError) as exc:
        raise Unreadable(f"no JSON value at character {at}") from exc


def object_members(text: str, at: int = 0) -> tuple[list[tuple[str, int, int]], int]:
    """The members of the object starting at ``text[at]``: (key, value start, value end), and its end."""
    members: list[tuple[str, int, int]] = []
    for key, start, end in _members(text, at):
        if key is None:
            return members, end
        members.append((key, start, end))
    raise AssertionError("unreachable")  # pragma: no cover


def _members(text: str, at: int) -> Iterator[tuple[str | None, int, int]]:
    """Yield (key, value start, value end) per member, then (None, 0, end of the object).

    A value that cannot be read raises Unreadable with ``.member`` = (key, value start)."""
    if text[at : at + 1] != "{":
        raise Unreadable(f"no object at character {at}")
    at = _skip(text, at + 1)
    if text[at : at + 1] == "}":
        yield None, 0, at + 1
        return
    while True:
        if text[at : at + 1] != '"':
            raise Unreadable(f"no member name at character {at}")
        try:
            key, at = _LENIENT.raw_decode(text, at)
        except ValueError as exc:
            raise Unreadable(f"unterminated member name at character {at}") from exc
        at = _skip(text, at)
        if text[at : at + 1] != ":":
            raise Unreadable(f"no ':' at character {at}")
        start = _skip(text, at + 1)
        try:
            end = _value_end(text, start)
        except Unreadable as exc:
            exc.member = (key, start)
            raise
        yield key, start, end
        at = _skip(text, end)
        if text[at : at + 1] == "}":
            yield None, 0, at + 1
            return
        if text[at : at + 1] != ",":
            raise Unreadable(f"no ',' or '}}' at character {at}")
        at = _skip(text, at + 1)


def array_elements(text: str, at: int) -> list[tuple[int, int]]:
    """(start, end) of each element of the array starting at ``text[at]``."""
    if text[at : at + 1] != "[":
        raise Unreadable(f"no array at character {at}")
    elements: list[tuple[int, int]] = []
    at = _skip(text, at + 1)
    if text[at : at + 1] == "]":
        return elements
    while True:
        end = _value_end(text, at)
        elements.append((at, end))
        at = _skip(text, end)
        if text[at : at + 1] == "]":
            return elements
        if text[at : at + 1] != ",":
            raise Unreadable(f"no ',' or ']' at character {at}")
        at = _skip(text, at + 1)


def split_events(raw: bytes) -> tuple[Any, list[bytes]]:
    """The body without its events (each replaced by 0, parsed by orjson) and the raw bytes of each
    event, as the client sent them. Raises Unreadable when the body's outline is not JSON."""
    text = raw.decode("utf-8", "surrogateescape")  # invalid bytes survive the round trip exactly
    start = _skip(text, 0)
    members, end = object_members(text, start)
    if _skip(text, end) != len(text):
        raise Unreadable(f"data after the body at character {end}")
    spans = [(s, e) for key, s, e in members if key == "events"][-1:]  # the last one counts, as in orjson
    elements = array_elements(text, spans[0][0]) if spans and text[spans[0][0]] == "[" else []
    outline, at = [], 0
    for s, e in elements:
        outline += [text[at:s], "0"]
        at = e
    outline.append(text[at:])
    try:
        body = orjson.loads("".join(outline).encode("utf-8", "surrogateescape"))
    except orjson.JSONDecodeError as exc:
        raise Unreadable(str(exc)) from None
    return body, [text[s:e].encode("utf-8", "surrogateescape") for s, e in elements]


def decode_event(raw: bytes) -> Any:
    """One event's bytes as orjson reads them, or ``not_json`` naming the field at fault."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        text = raw.decode("utf-8", "surrogateescape")
        try:
            raw.decode("utf-8")
            position, reason = exc.pos, exc.msg
        except UnicodeDecodeError as bad:  # orjson says where only for valid UTF-8
            position = len(raw[: bad.start].decode("utf-8", "surrogateescape"))
            reason = f"byte 0x{raw[bad.start]:02x} is not UTF-8"
        field = field_at(text, position)
        where = f"{field}: " if field is not None else ""
        return InvalidEvent("not_json", f"{where}not valid JSON ({reason})", field)


def field_at(text: str, position: int) -> str | None:
    """The top-level member of the object ``text`` whose value holds ``position``, if any."""
    found: str | None = None
    try:
        for key, start, end in _members(text, _skip(text, 0)):
            if key is not None and start <= position < end:
                found = key
                break
    except Unreadable as exc:
        if exc.member is not None and position >= exc.member[1]:
            found = exc.member[0]
    # the answer is written as JSON: no lone surrogate may remain in it
    return None if found is None else found.encode("utf-8", "backslashreplace").decode()
