"""A stand-in for Faust's RocksDB store over a real RocksDB: the parts the changelog reader uses (the
persisted-offset key, the partition's database, the persisted offset)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import rocksdict
from faust.types import TP

OFFSET_KEY = b"__faust\0offset__"  # Faust's RocksDB store: the persisted changelog offset


class Store:
    offset_key = OFFSET_KEY

    def __init__(self, path: Path):
        self.db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))

    def _db_for_partition(self, partition: int) -> Any:
        return self.db

    def persisted_offset(self, tp: TP) -> int | None:
        raw = self.db.get(OFFSET_KEY)
        return None if raw is None else int(raw)
