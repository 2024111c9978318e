from __future__ import annotations

import orjson
import pytest

from stripemeter.schemas import versions
from stripemeter.schemas.packing import ItemTooLarge, pack_arrays
from stripemeter.schemas.records import decode_batch


def test_arrays_are_packed_up_to_the_limit_in_order_and_read_back_whole() -> None:
    items = [orjson.dumps({"i": i, "meta": "x" * (i % 50)}) for i in range(1000)]
    messages = pack_arrays(items, 4096)
    assert all(len(m) <= 4096 for m in messages)
    assert [x for m in messages for x in orjson.loads(m)[1:]] == [orjson.loads(i) for i in items]
    assert len(messages) == pytest.approx(sum(len(i) + 1 for i in items) / 4096, abs=2)


def test_an_item_that_fits_no_message_is_named() -> None:
    with pytest.raises(ItemTooLarge) as info:
        pack_arrays([b"1", b"x" * 5000], 4096)
    assert (info.value.index, info.value.size) == (1, 5000)


def test_one_item_exactly_at_the_limit_fits() -> None:
    assert pack_arrays([b"x" * 4092], 4096) == [b"[2," + b"x" * 4092 + b"]"]  # after the version
    with pytest.raises(ItemTooLarge):
        pack_arrays([b"x" * 4093], 4096)
    assert pack_arrays([], 10) == []


def test_the_previous_format_is_packed_while_it_is_the_write_version() -> None:
    versions.use_write_version(versions.PREVIOUS)
    try:
        assert pack_arrays([b"x" * 4094], 4096) == [b"[" + b"x" * 4094 + b"]"]
        old = pack_arrays([b"[1]", b"[2]"], 4096)
    finally:
        versions.use_write_version(versions.CURRENT)
    new = pack_arrays([b"[1]", b"[2]"], 4096)
    assert (old, new) == ([b"[[1],[2]]"], [b"[2,[1],[2]]"])
    assert decode_batch(old[0]) == decode_batch(new[0]) == [[1], [2]]
