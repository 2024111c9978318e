from __future__ import annotations

import pytest

from stripemeter.domain.policy import MetricPolicy
from stripemeter.schemas.corrections import is_control
from stripemeter.schemas.policy_updates import (
    PolicyUpdate,
    decode_policy_update,
    encode_policy_update,
    is_policy_update,
)


def test_a_policy_update_round_trips_and_is_a_control_message() -> None:
    update = PolicyUpdate("t", "m:x", 12, "count", 3_600_000, 1_700_000_000_000, 1_690_000_000_000)
    raw = encode_policy_update(update)
    assert is_control(raw) and is_policy_update(raw)
    assert decode_policy_update(raw) == update
    assert update.policy() == MetricPolicy("count", 3_600_000, 1_700_000_000_000, 12)
    plain = PolicyUpdate("t", "m", 1, "sum", 0, None)
    assert decode_policy_update(encode_policy_update(plain)).policy().horizon_ms == -(2**63)


def test_an_unknown_aggregation_is_refused() -> None:
    raw = encode_policy_update(PolicyUpdate("t", "m", 1, "sum", 0, None)).replace(b'"sum"', b'"max"')
    with pytest.raises(ValueError, match="aggregation"):
        decode_policy_update(raw)


@pytest.mark.parametrize("lateness_ms", [35 * 24 * 3_600_000 + 1, -1])
def test_a_lateness_beyond_35_days_is_refused(lateness_ms: int) -> None:
    """Only the API writes policy updates, and it refuses more than 35 days: a message saying otherwise
    was not written by it."""
    raw = encode_policy_update(PolicyUpdate("t", "m", 1, "sum", lateness_ms, None))
    with pytest.raises(ValueError, match="latenessMs"):
        decode_policy_update(raw)
    assert decode_policy_update(
        encode_policy_update(PolicyUpdate("t", "m", 1, "sum", 35 * 24 * 3_600_000, None))
    )
