"""Recovery commands: `sink-offsets` (where the PostgreSQL sink stands) and `sink-rewind`."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING

from stripemeter.cli.common import Subcommands, add_command, print_table, say
from stripemeter.domain.config import Settings

if TYPE_CHECKING:
    from stripemeter.services.sink_recovery import SinkPartition

HEADERS = ("topic", "partition", "database", "kafka committed", "log start", "log end", "state")


def _show(rows: list[SinkPartition]) -> None:
    def known(offset: int | None) -> object:
        return "-" if offset is None else offset

    print_table(
        HEADERS,
        [
            (
                row.topic,
                row.partition,
                known(row.database),
                known(row.committed),
                row.log_start,
                row.log_end,
                row.state,
            )
            for row in rows
        ],
    )


def cmd_sink_offsets(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.schemas.topics import TopicNames
    from stripemeter.services.sink_recovery import positions

    names = TopicNames(settings.topic_prefix, settings.app_id)
    _show(asyncio.run(positions(settings.kafka, settings.database_url.value, names)))
    return 0


def cmd_sink_rewind(settings: Settings, args: argparse.Namespace) -> int:
    from stripemeter.schemas.topics import TopicNames
    from stripemeter.services.sink_recovery import rewind_to_earliest

    names = TopicNames(settings.topic_prefix, settings.app_id)
    rows = asyncio.run(rewind_to_earliest(settings.kafka, settings.database_url.value, names))
    _show(rows)
    lost = [row for row in rows if row.log_start > 0]
    say(
        "rewound: the sink writes again what the topics hold when it starts"
        + (
            f"; {len(lost)} partition(s) no longer start at offset 0: rows of records retention removed"
            " come back only from a PostgreSQL backup"
            if lost
            else ""
        )
    )
    return 0


def add_recovery(sub: Subcommands) -> None:
    """`sink-offsets` and `sink-rewind`."""
    add_command(
        sub,
        "sink-offsets",
        cmd_sink_offsets,
        "show the PostgreSQL sink's offsets as the database stores them, Kafka's committed offsets and"
        " the logs' bounds, per partition",
    )
    rewind = add_command(
        sub,
        "sink-rewind",
        cmd_sink_rewind,
        "rebuild the ledger, watermarks and counters from Kafka: the sink's next start writes again"
        " everything the topics still hold (stop every sink first; rows still present stay as they are)",
    )
    rewind.add_argument(
        "--to",
        choices=["earliest"],
        required=True,
        help="earliest: the start of each topic partition (what retention kept)",
    )
