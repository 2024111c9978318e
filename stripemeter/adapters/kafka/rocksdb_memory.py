"""One memory budget for all of the worker's RocksDB tables.

Faust opens one RocksDB per table partition (three tables x N partitions), each with its own block
cache, and RocksDB keeps the index and filter blocks of every SST file outside any cache: memory then
grows with the dedupe state, which holds 48 h of idempotency keys. Here every database shares one LRU
cache that also holds index and filter blocks, and one write-buffer manager charges all memtables to
that same cache, so the tables use about ``STRIPEMETER_ROCKSDB_MEMORY_MB`` whatever their size on disk.
"""

from __future__ import annotations

import rocksdict
from faust.stores import rocksdb as faust_rocksdb

MIB = 1024 * 1024
_budget_bytes = 192 * MIB
_shared: tuple[rocksdict.Cache, rocksdict.WriteBufferManager] | None = None


def _budget() -> tuple[rocksdict.Cache, rocksdict.WriteBufferManager]:
    """One cache of the whole budget; memtables may take a third of it."""
    global _shared
    if _shared is None:
        cache = rocksdict.Cache(_budget_bytes)
        buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            _budget_bytes // 3, False, cache
        )
        _shared = (cache, buffers)
    return _shared


def bounded_options(self: faust_rocksdb.RocksDBOptions) -> rocksdict.Options:
    """Faust's rocksdict options, with the shared cache and write-buffer manager."""
    cache, buffers = _budget()
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    if self.max_open_files is not None:  # None: no limit known (RocksDB's default, -1, is none)
        options.set_max_open_files(self.max_open_files)
    options.set_write_buffer_size(self.write_buffer_size)
    options.set_target_file_size_base(self.target_file_size_base)
    options.set_max_write_buffer_number(self.max_write_buffer_number)
    options.set_write_buffer_manager(buffers)
    table = rocksdict.BlockBasedOptions()
    table.set_bloom_filter(self.bloom_filter_size, block_based=True)
    table.set_block_cache(cache)
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
    options.set_block_based_table_factory(table)
    return options


def install(budget_mb: int) -> None:
    """Make Faust open every RocksDB table with one shared budget (rocksdict driver only)."""
    global _budget_bytes
    _budget_bytes = budget_mb * MIB
    # deliberately replaces Faust's method (its store builds RocksDBOptions itself; no hook to pass ours)
    faust_rocksdb.RocksDBOptions.as_options = bounded_options  # type: ignore[method-assign]


PROPERTIES = {
    "memtables": "rocksdb.cur-size-all-mem-tables",
    "table_readers": "rocksdb.estimate-table-readers-mem",
}


def usage(databases: list[rocksdict.Rdict]) -> dict[str, int]:
    """Memory by kind over ``databases``; the cache is shared, so it is counted once."""
    totals = dict.fromkeys(["block_cache", "pinned", *PROPERTIES], 0)
    for db in databases:
        for kind, name in PROPERTIES.items():
            totals[kind] += db.property_int_value(name) or 0
    if databases:
        totals["block_cache"] = databases[0].property_int_value("rocksdb.block-cache-usage") or 0
        totals["pinned"] = databases[0].property_int_value("rocksdb.block-cache-pinned-usage") or 0
    return totals
