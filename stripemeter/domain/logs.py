"""One logging format for every process: text for people (the default), or JSON lines for a log
pipeline (STRIPEMETER_LOG_FORMAT=json)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (RFC 3339, UTC, microseconds), ``level``, ``logger``,
    ``message``, and ``exception`` (the traceback text) or ``stack`` when the record carries one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # a message that is not text (an object logged as is) is written as its str()
        return orjson.dumps(entry, default=str).decode()


def formatter(log_format: str = "text") -> logging.Formatter:
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(FORMATS)}")
    return JsonFormatter() if log_format == "json" else logging.Formatter(FORMAT)


class StripemeterHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler ``configure_logging`` installs (to stderr), told apart from anyone else's."""


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    """The root logger writes to stderr in ``log_format`` (a Faust worker keeps it in JSON only: see
    cli/processes.py). As ``logging.basicConfig``, a process whose logging someone else configured
    (a test runner calling the CLI in-process) is left as it is; a second call replaces the first."""
    root = logging.getLogger()
    chosen = formatter(log_format)
    for handler in [h for h in root.handlers if isinstance(h, StripemeterHandler)]:
        root.removeHandler(handler)
    if not root.handlers:
        handler = StripemeterHandler()
        handler.setFormatter(chosen)
        root.addHandler(handler)
        root.setLevel(level.upper())
    # aiokafka is chatty about transient coordinator moves at INFO.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    # stripe logs every error response at INFO; the writer logs what it does about them
    logging.getLogger("stripe").setLevel(logging.WARNING)
