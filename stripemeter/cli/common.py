"""What every command group shares: printing, and adding a command with its help as description."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TypeAlias

from stripemeter.domain.config import Settings

Command = Callable[[Settings, argparse.Namespace], int]
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def say(message: str) -> None:
    print(message, flush=True)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    say("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        say("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def add_command(parent: Subcommands, name: str, func: Command, help: str) -> argparse.ArgumentParser:
    """A subcommand running ``func``; its help line is also its --help description."""
    p = parent.add_parser(name, help=help, description=help)
    p.set_defaults(func=func)
    return p
