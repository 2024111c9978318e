"""glibc's malloc settings and heap gauge (this machine runs glibc; elsewhere they step aside)."""

from __future__ import annotations

import subprocess
import sys


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
    from stripemeter.streams import memory_tuning

    usage = memory_tuning.heap_usage()
    assert usage is not None and set(usage) == {"in_use", "free", "mapped"}
    assert usage["in_use"] > 0
