"""A failed command prints a sentence, never a Python exception's class name."""

from __future__ import annotations

import argparse
import io
import urllib.error
from email.message import Message

import pytest
from aiokafka.errors import KafkaTimeoutError

from stripemeter.cli import main, stack
from stripemeter.cli.errors import error_message
from stripemeter.domain.config import Settings


def test_connection_failures_say_why_and_http_errors_say_who_answered_what() -> None:
    refused = urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))
    assert error_message(refused) == "Connection refused"
    answer = urllib.error.HTTPError(
        "http://127.0.0.1:3000/v1/x", 422, "Unprocessable Entity", Message(), io.BytesIO(b'{"code":"no"}')
    )
    assert (
        error_message(answer) == 'http://127.0.0.1:3000/v1/x answered 422 Unprocessable Entity: {"code":"no"}'
    )
    assert (
        error_message(FileNotFoundError(2, "No such file or directory", "/x"))
        == "No such file or directory: /x"
    )


def test_an_error_without_words_is_named_in_plain_words() -> None:
    assert error_message(KafkaTimeoutError()) == "kafka timeout"
    assert error_message(RuntimeError("the broker went away")) == "the broker went away"


def test_the_cli_prints_the_message_not_the_class(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fails(settings: Settings, args: argparse.Namespace) -> int:
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(stack, "cmd_stack_status", fails)
    monkeypatch.setenv("STRIPEMETER_LOG_LEVEL", "INFO")
    assert main(["stack", "status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("stripemeter stack: Connection refused") and "URLError" not in err
