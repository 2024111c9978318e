from __future__ import annotations

import orjson
import pytest

from stripemeter.schemas.packing import ItemTooLarge, pack_arrays


def test_arrays_are_packed_up_to_the_limit_in_order_and_read_back_whole() -> None:
    items = [orjson.dumps({"i": i, "meta": "x" * (i % 50)}) for i in range(1000)]
    messages = pack_arrays(items, 4096)
    assert all(len(m) <= 4096 for m in messages)
    assert [x for m in messages for x in orjson.loads(m)] == [orjson.loads(i) for i in items]
    assert len(messages) == pytest.approx(sum(len(i) + 1 for i in items) / 4096, abs=2)


def test_an_item_that_fits_no_message_is_named() -> None:
    with pytest.raises(ItemTooLarge) as info:
        pack_arrays([b"1", b"x" * 5000], 4096)
    assert (info.value.index, info.value.size) == (1, 5000)


def test_one_item_exactly_at_the_limit_fits() -> None:
    assert pack_arrays([b"x" * 4094], 4096) == [b"[" + b"x" * 4094 + b"]"]
    assert pack_arrays([], 10) == []
