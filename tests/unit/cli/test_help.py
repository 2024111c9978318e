"""Every command's --help renders: argparse formats help lines with %, so a stray % in one breaks the
--help of the command above it."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from stripemeter.cli import build_parser


def parsers(
    parser: argparse.ArgumentParser, path: str = "stripemeter"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, f"{path} {name}")


def test_every_commands_help_renders() -> None:
    found = list(parsers(build_parser()))
    assert len(found) > 20  # the walk reached the subcommands
    for path, parser in found:
        assert parser.format_help(), path
