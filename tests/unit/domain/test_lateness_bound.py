"""Lateness is at most Stripe's 35 days, in the setting as in a mapping (see also test_bounds.py)."""

from __future__ import annotations

import pytest

from stripemeter.domain.config import ConfigError, load_settings
from stripemeter.domain.policy import MAX_LATENESS_SECONDS


def test_max_lateness_is_stripes_35_days() -> None:
    assert MAX_LATENESS_SECONDS == 35 * 24 * 3600


@pytest.mark.parametrize("value", [str(MAX_LATENESS_SECONDS + 1), str(68 * 365 * 24 * 3600), "-1"])
def test_a_lateness_setting_beyond_35_days_stops_the_process_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"STRIPEMETER_LATENESS_SECONDS": value})
    assert "STRIPEMETER_LATENESS_SECONDS" in str(info.value)


def test_35_days_is_accepted() -> None:
    settings = load_settings({"STRIPEMETER_LATENESS_SECONDS": str(MAX_LATENESS_SECONDS)})
    assert settings.lateness_seconds == MAX_LATENESS_SECONDS
