"""Quantities as integer micro-units (pure, no imports): one unit is ``MICROS`` micro-units, so that
sums are exact. Every conversion between micro-units and units lives here, named by how it rounds."""

from __future__ import annotations

MICROS = 1_000_000


def micros_to_number(micros: int) -> int | float:
    """The JSON number of units: an ``int`` when whole (``2_000_000`` -> ``2``), else a ``float``
    (``-1_500_000`` -> ``-1.5``)."""
    return micros // MICROS if micros % MICROS == 0 else micros / MICROS


def micros_to_float(micros: int) -> float:
    """Units as a ``float`` always, whole or not (``2_000_000`` -> ``2.0``)."""
    return micros / MICROS


def floor_units(micros: int) -> int:
    """Whole units, rounded towards minus infinity (``-1`` micro-unit -> ``-1``): fractions of negative
    corrections carry like positive ones."""
    return micros // MICROS


def round_units(micros: int) -> int:
    """Whole units, rounded to the nearest; a half rounds up, towards plus infinity
    (``500_000`` -> ``1``, ``-500_000`` -> ``0``)."""
    return (micros + MICROS // 2) // MICROS


def format_micros(micros: int) -> str:
    """Micro-units as a plain decimal string without trailing zeros."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS)
    return f"{sign}{whole}.{frac:06d}".rstrip("0").rstrip(".") if frac else f"{sign}{whole}"
