"""Memory-management settings for the pipeline's processes: the garbage collector and glibc's malloc.

The hot path builds and drops millions of short-lived containers (decoded events, keyed items,
ledger rows). With CPython's default thresholds a young collection runs every 700 allocations and
keeps walking the batch that is still alive: about a fifth of the intake's time here. Collecting
young objects every 50,000 allocations, with the start-up heap frozen out of full collections, costs
a fraction of that; the cycles it leaves are the subject of the last paragraph.

glibc's defaults let a long-running worker's RSS creep up with nothing leaking. RocksDB's memtables
and cached blocks, and Python's large buffers (fetched record batches, COPY text), come and go in
pieces of 128 KiB to a few MiB; glibc raises its mmap threshold each time such a piece is freed, so
they end up in the heap, where the holes they leave are rarely given back. Measured at 10,000
events/s over 5 minutes: 120 MiB of free but unreturnable heap, RSS 124 -> 304 MiB. With the
threshold pinned at 128 KiB (big pieces are mapped and unmapped whole) and two arenas, the free
heap stayed under 25 MiB. ``malloc_trim`` on a timer alone did not help: those holes were not whole pages.

With a young threshold that high, and CPython counting allocations minus deallocations towards it,
the older generations are almost never collected, so reference cycles that libraries leave behind
are never freed. A stopped aiokafka consumer is such a cycle, and it holds the record batches it
fetched: the worker's lag measurement (a consumer every 15 s) kept them all, 150-700 KiB each, and
RSS outside RocksDB's cache grew 154-167 MiB in 10 minutes at 10,000 events/s. ``collect_cycles``
runs a full collection every ``CYCLE_INTERVAL`` seconds from each process's event loop, then
``malloc_trim`` (20-50 ms together here, with the start-up heap frozen out of the collection): the
freed batches leave holes of whole pages, which trimming gives back (without it the free heap grew
16-18 -> 56-74 MiB in 10 minutes).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import logging
import time
from collections.abc import Awaitable

from stripemeter.domain import metrics

log = logging.getLogger(__name__)

YOUNG_THRESHOLD = 50_000
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # mallopt parameters, from glibc's malloc.h
MMAP_THRESHOLD = 128 * 1024
ARENA_MAX = 2
CYCLE_INTERVAL = 10.0  # seconds between full collections


def tune() -> None:
    """Call once at the start of a pipeline process, after its imports and before its threads."""
    tune_malloc()
    gc.collect()
    gc.freeze()  # what start-up built lives as long as the process: never walk it again
    gc.set_threshold(YOUNG_THRESHOLD, 10, 10)  # so cycles need collect_cycles: see the module's note


def collect_cycles() -> int:
    """One full collection now, then the freed pages back to the system; from the event loop's thread
    (finalizers of asyncio objects are not thread-safe). Returns the unreachable objects found."""
    started = time.perf_counter()
    found = gc.collect()
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)
    metrics.GC_SECONDS.observe(time.perf_counter() - started)
    metrics.GC_COLLECTED.inc(found)
    return found


async def run_collecting_cycles(main: Awaitable[None], interval: float = CYCLE_INTERVAL) -> None:
    """Await ``main`` (a plain-asyncio stage) with ``collect_cycles`` every ``interval`` seconds."""

    async def collect_forever() -> None:
        while True:
            await asyncio.sleep(interval)
            collect_cycles()

    collector = asyncio.create_task(collect_forever())
    try:
        await main
    finally:
        collector.cancel()


_MALLINFO2_FIELDS = (
    *("arena", "ordblks", "smblks", "hblks", "hblkhd"),
    *("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"),
)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, loaded once: ``find_library`` runs ``ldconfig`` in a subprocess (1.5 ms here), and
    the worker reads the heap every 5 s from its event loop."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    mallinfo2 = getattr(libc, "mallinfo2", None)
    if mallinfo2 is not None:
        mallinfo2.restype = _MallInfo2
    return libc


def tune_malloc() -> bool:
    """Pin glibc's mmap threshold and cap its arenas; False where there is no glibc (musl, macOS)."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_ARENA_MAX, ARENA_MAX))
    if not ok:
        log.warning("malloc settings not applied: this C library refused mallopt")
    return ok


def heap_usage() -> dict[str, int] | None:
    """glibc's heap by kind: in_use, free (held but unused: fragmentation), mapped (big pieces on their
    own mappings); None without glibc 2.33+."""
    mallinfo2 = getattr(_libc(), "mallinfo2", None)
    if mallinfo2 is None:
        return None
    info = mallinfo2()
    return {"in_use": info.uordblks, "free": info.fordblks, "mapped": info.hblkhd}
