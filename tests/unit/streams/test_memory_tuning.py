"""glibc's malloc settings and heap gauge (this machine runs glibc; elsewhere they step aside)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from stripemeter.domain import metrics
from stripemeter.streams import memory_tuning


def test_malloc_settings_apply_and_big_pieces_get_their_own_mappings() -> None:
    # in a child: the settings last for the process
    script = """
from stripemeter.streams import memory_tuning
big = bytearray(4_000_000)
del big  # freeing a mapped piece raises glibc's own threshold to its size...
assert memory_tuning.tune_malloc()  # ...which the settings pin back at 128 KiB
before = memory_tuning.heap_usage()
held = [bytearray(200_000) for _ in range(20)]  # over the 128 KiB threshold: mapped, not heap
after = memory_tuning.heap_usage()
assert after["mapped"] - before["mapped"] >= 20 * 200_000, (before, after)
del held
assert memory_tuning.heap_usage()["mapped"] < after["mapped"]  # unmapped whole when freed
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_heap_usage_reports_in_use_free_and_mapped_bytes() -> None:
    usage = memory_tuning.heap_usage()
    assert usage is not None and set(usage) == {"in_use", "free", "mapped"}
    assert usage["in_use"] > 0


def test_collect_cycles_frees_what_the_tuned_thresholds_leave_behind() -> None:
    # in a child: tune() freezes the heap and changes the thresholds for the whole process
    script = """
import weakref
from stripemeter.streams import memory_tuning
memory_tuning.tune()

class Client:  # like a stopped aiokafka consumer: a cycle holding what it fetched
    pass

client = Client()
client.me, client.fetched = client, bytes(8_000_000)
alive = weakref.ref(client)
del client
for _ in range(200_000):
    [()]  # short-lived containers: under the tuned thresholds no collection frees the cycle
assert alive() is not None
assert memory_tuning.collect_cycles() >= 1
assert alive() is None
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


async def test_run_collecting_cycles_collects_while_the_stage_runs_and_stops_with_it() -> None:
    def runs() -> float:
        family = next(iter(metrics.GC_SECONDS.collect()))
        return next(s.value for s in family.samples if s.name.endswith("_count"))

    before = runs()
    await memory_tuning.run_collecting_cycles(asyncio.sleep(0.3), interval=0.02)
    during = runs() - before
    assert during >= 1  # each full collection of the test process takes tens of ms
    await asyncio.sleep(0.1)
    assert runs() - before == during  # the collector stopped with the stage
