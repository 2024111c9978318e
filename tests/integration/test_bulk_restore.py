"""A takeover restored in bulk counts exactly and rebuilds the owner's stores byte for byte.

A worker with no local state restores its tables' changelog partitions with its own consumer before
Faust's recovery reads them (stripemeter/adapters/kafka/bulk_restore.py). The first worker counts part
of a stream and leaves; a second, on another machine (no local files), takes both partitions over
mid-stream, and the oracle must hold. Then a third, also with no local files, restores what the second
wrote: its dedupe entries, counters and watermarks, and the persisted offsets Faust resumes from, must
equal the second's stores, as the owner left them.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import rocksdict

from stripemeter.domain.config import Settings
from stripemeter.schemas.topics import TABLES
from tests.integration.client import eventually, outcomes_of
from tests.integration.harness import StartWorker, WorkerProcess, assigned_partitions, table_stores
from tests.integration.test_exactly_once import assert_matches_oracle, during, send_anchors, stream_slowly
from tests.integration.workload import build

pytestmark = pytest.mark.exactly_once  # never rerun by CI; repeated by ./dev soak

OFFSET_KEY = b"__faust\0offset__"  # Faust's RocksDB store: the persisted changelog offset


def contents(store: Path) -> dict[bytes, bytes]:
    options = rocksdict.Options(raw_mode=True)
    db = rocksdict.Rdict(str(store), options=options, access_type=rocksdict.AccessType.read_only())
    try:
        return {bytes(k): bytes(v) for k, v in db.items()}  # type: ignore[arg-type]  # raw mode: bytes
    finally:
        db.close()


def restored_in_bulk(worker: WorkerProcess) -> bool:
    return "records applied" in worker.log_path.read_text(errors="replace")


async def test_a_takeover_restored_in_bulk_counts_exactly_and_equals_the_owner(
    env: Settings, start_worker: StartWorker
) -> None:
    w = build(f"br-{uuid.uuid4().hex[:6]}", events=5000)
    first = start_worker("a")
    first.wait_ready()
    await send_anchors(env, w)
    takers: list[WorkerProcess] = []

    async def chaos() -> None:
        async def streaming() -> bool:
            return (await outcomes_of(env, w.tenant)).get("counted", 0) >= len(w.anchors) + 1500

        await eventually(streaming, timeout=60, what="events of the stream counted")
        first.stop()
        takers.append(start_worker("b"))  # another machine: no local state, restores from the changelogs

        async def both_on_second() -> bool:
            try:
                return assigned_partitions(takers[0]) == 2
            except OSError:
                return False

        await eventually(both_on_second, timeout=120, what="the second worker holding both partitions")

    await during(stream_slowly(env, w, seconds=15), chaos)
    await assert_matches_oracle(env, w)
    second = takers[0]
    assert restored_in_bulk(second), second.log_tail()
    second.stop()

    third = start_worker("c")  # no local state again: restores all the second wrote
    await asyncio.to_thread(third.wait_ready, 120)
    assert restored_in_bulk(third), third.log_tail()
    third.stop()
    for table in TABLES:
        owner, restored = table_stores(second, table), table_stores(third, table)
        assert set(restored) == set(owner) == {0, 1}, table
        for partition, store in owner.items():
            expected, got = contents(store), contents(restored[partition])
            assert expected.get(OFFSET_KEY) == got.get(OFFSET_KEY), (table, partition)
            assert len(got) == len(expected) and got == expected, (
                f"{table}[{partition}]: {len(expected.keys() - got.keys())} keys missing,"
                f" {len(got.keys() - expected.keys())} extra,"
                f" {sum(got[k] != v for k, v in expected.items() if k in got)} values differ"
            )
        if table == "dedupe":
            assert sum(len(contents(s)) for s in owner.values()) > 1000  # the stream's entries
