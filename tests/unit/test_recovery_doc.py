"""docs/recovery.md names stripemeter commands an operator types during a restore: each must be one the
CLI accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from stripemeter.cli import build_parser

DOC = Path(__file__).resolve().parents[2] / "docs" / "recovery.md"
FENCED = re.compile(r"^```\w*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def commands() -> list[str]:
    text = DOC.read_text()
    found = [
        line.split("#")[0].strip()
        for block in FENCED.findall(text)
        for line in block.splitlines()
        if line.startswith("stripemeter ")
    ]
    found += [m.group(1) for m in re.finditer(r"`(stripemeter [^`]+)`", text)]
    return sorted(set(found))


def test_the_doc_names_the_recovery_commands() -> None:
    assert {
        "stripemeter sink-offsets",
        "stripemeter sink-rewind --to earliest",
        "stripemeter db migrate",
    } <= set(commands())


@pytest.mark.parametrize("command", commands())
def test_the_cli_accepts(command: str) -> None:
    argv = shlex.split(command)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"the CLI refuses `{command}`")
