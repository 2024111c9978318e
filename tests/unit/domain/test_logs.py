"""STRIPEMETER_LOG_FORMAT: text for people, or one JSON object per line for a log pipeline."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from stripemeter.domain.logs import FORMAT, JsonFormatter, StripemeterHandler, configure_logging


@pytest.fixture
def restore_root() -> Iterator[None]:
    """Takes back what a test's configure_logging installed, and the root level."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if isinstance(h, StripemeterHandler)]:
        root.removeHandler(handler)
    root.setLevel(level)


def fresh_root() -> logging.Logger:
    """The root logger without handlers, as a process starts (pytest adds its own after the fixtures;
    it removes them after the test, when they are gone already)."""
    root = logging.getLogger()
    root.handlers.clear()
    return root


def record(message: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    rec = logging.LogRecord("stripemeter.sink", logging.WARNING, __file__, 1, message, args, exc_info)
    rec.created = 1_780_000_000.25  # a fixed instant: the format, not the clock, is under test
    return rec


def test_a_json_line_has_time_level_logger_and_message() -> None:
    line = JsonFormatter().format(record("skipped %d records of %s", 3, "ledger"))
    assert "\n" not in line
    assert orjson.loads(line) == {
        "time": "2026-05-28T20:26:40.250000+00:00",
        "level": "WARNING",
        "logger": "stripemeter.sink",
        "message": "skipped 3 records of ledger",
    }


def test_an_exception_is_one_field_of_the_same_line() -> None:
    try:
        raise ValueError('bad "value"\non two lines')
    except ValueError as exc:
        line = JsonFormatter().format(record("writing failed", exc=exc))
    assert "\n" not in line
    entry = orjson.loads(line)
    assert entry["message"] == "writing failed"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].endswith('ValueError: bad "value"\non two lines')


def test_a_message_that_is_not_text_is_written_as_its_str() -> None:
    line = JsonFormatter().format(record({"partition": 3}))  # type: ignore[arg-type]
    assert orjson.loads(line)["message"] == "{'partition': 3}"


@pytest.mark.usefixtures("restore_root")
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_configure_logging_replaces_the_root_handlers_in_the_chosen_format(log_format: str) -> None:
    root = fresh_root()
    configure_logging("INFO", "text")  # a format chosen earlier in the process is replaced, not added to
    configure_logging("warning", log_format)
    assert len(root.handlers) == 1 and root.level == logging.WARNING
    out = io.StringIO()
    root.handlers[0].setStream(out)  # type: ignore[attr-defined]
    logging.getLogger("stripemeter.test").warning("hello %s", "there")
    logging.getLogger("stripemeter.test").info("not shown")
    [line] = out.getvalue().splitlines()
    if log_format == "json":
        assert orjson.loads(line)["message"] == "hello there"
    else:
        assert FORMAT.endswith("%(message)s") and line.endswith(" WARNING stripemeter.test: hello there")


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="yaml"):
        configure_logging("INFO", "yaml")


@pytest.mark.usefixtures("restore_root")
def test_logging_someone_else_configured_is_left_as_it_is() -> None:
    root = fresh_root()
    theirs = logging.StreamHandler(io.StringIO())
    root.addHandler(theirs)
    root.setLevel(logging.ERROR)
    configure_logging("DEBUG", "json")
    assert root.handlers == [theirs] and root.level == logging.ERROR
    root.removeHandler(theirs)
