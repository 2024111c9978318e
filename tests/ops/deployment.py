"""What the compose and Kubernetes tests share: the settings the code reads, and CLI commands
checked against the real argument parser."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from stripemeter.cli import build_parser
from stripemeter.domain.config import ENV_VARS

ROOT = Path(__file__).resolve().parents[2]
KNOWN_ENV = set(ENV_VARS)


def check_command(argv: list[str]) -> None:
    """``argv`` (or the `sh -c` script in it) runs only stripemeter commands the CLI accepts."""
    shell = argv[:2] == ["sh", "-c"]
    commands = [shlex.split(part) for part in argv[2].split("&&")] if shell else [argv]
    parser = build_parser()
    for command in commands:
        assert command[0] == "stripemeter", command
        try:
            parser.parse_args(command[1:])
        except SystemExit:
            pytest.fail(f"the CLI refuses {shlex.join(command)}")
