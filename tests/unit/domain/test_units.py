from __future__ import annotations

import pytest

from stripemeter.domain.units import (
    MICROS,
    floor_units,
    format_micros,
    micros_to_float,
    micros_to_number,
    round_units,
)


def test_one_unit_is_a_million_micro_units() -> None:
    assert MICROS == 1_000_000


@pytest.mark.parametrize(
    ("micros", "number"),
    [(0, 0), (2_000_000, 2), (-3_000_000, -3), (1_500_000, 1.5), (-1_500_000, -1.5), (1, 0.000001),
     (-1, -0.000001), (2**63 - 1, (2**63 - 1) / MICROS), (9_223_372_036_854 * MICROS, 9_223_372_036_854)],
)  # fmt: skip
def test_micros_to_number_is_an_int_when_whole(micros: int, number: int | float) -> None:
    converted = micros_to_number(micros)
    assert converted == number
    assert type(converted) is type(number)


def test_micros_to_float_is_always_a_float() -> None:
    assert micros_to_float(2_000_000) == 2.0
    assert type(micros_to_float(2_000_000)) is float
    assert micros_to_float(-1_500_000) == -1.5
    assert micros_to_float(0) == 0.0


@pytest.mark.parametrize(
    ("micros", "units"),
    [(0, 0), (999_999, 0), (1_000_000, 1), (1_999_999, 1), (-1, -1), (-1_000_000, -1), (-1_000_001, -2)],
)
def test_floor_units_rounds_towards_minus_infinity(micros: int, units: int) -> None:
    assert floor_units(micros) == units


@pytest.mark.parametrize(
    ("micros", "units"),
    [(0, 0), (499_999, 0), (500_000, 1), (1_499_999, 1), (1_500_000, 2), (-499_999, 0), (-500_000, 0),
     (-500_001, -1), (-1_500_000, -1)],
)  # fmt: skip
def test_round_units_rounds_half_up(micros: int, units: int) -> None:
    assert round_units(micros) == units


@pytest.mark.parametrize(
    ("micros", "text"),
    [(0, "0"), (1, "0.000001"), (-1, "-0.000001"), (1_500_000, "1.5"), (-2_000_000, "-2"),
     (2**63 - 1, "9223372036854.775807")],
)  # fmt: skip
def test_format_micros_is_exact(micros: int, text: str) -> None:
    assert format_micros(micros) == text
