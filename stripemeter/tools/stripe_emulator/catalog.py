"""Products and prices: the shape checks and objects of `POST /v1/products` and `POST /v1/prices`.

A price has a `currency` (three letters, shown in lower case), a `product`, and `unit_amount` (whole
cents, 0 or more) or `unit_amount_decimal` (at most 12 decimal places), never both. A recurring price
has `recurring[interval]` (day, week, month, year), `recurring[interval_count]` (default 1; at most
three years in all) and `recurring[usage_type]` (`licensed` by default, or `metered`); a metered price
needs `recurring[meter]`, a meter of the account, and only a metered price may name one. The checks
that need the account (the product and the meter exist) are the state's.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from stripemeter.tools.stripe_emulator.periods import INTERVALS, MAX_INTERVAL_COUNT
from stripemeter.tools.stripe_emulator.stripe_errors import (
    check_metadata,
    decimal_text,
    invalid,
    merge_metadata,
    optional_string,
    parse_bool,
    parse_decimal,
    parse_int,
    reject_unknown,
    required,
)

PRODUCT_PARAMS = {"name", "description", "metadata", "active"}
PRICE_PARAMS = {
    "currency",
    "product",
    "unit_amount",
    "unit_amount_decimal",
    "recurring",
    "metadata",
    "nickname",
    "active",
}
RECURRING_PARAMS = {"interval", "interval_count", "usage_type", "meter"}
PRICE_LIST_PARAMS = {
    "active",
    "currency",
    "product",
    "type",
    "recurring",
    "limit",
    "starting_after",
    "ending_before",
}
_CURRENCY = re.compile(r"[a-z]{3}")


def check_product(params: dict[str, Any]) -> dict[str, Any]:
    reject_unknown(params, PRODUCT_PARAMS)
    name = required(params, "name")
    if len(name) > 5000:
        raise invalid("Invalid name: must be at most 5000 characters.", param="name")
    return {
        "name": name,
        "description": optional_string(params, "description", 40000),
        "metadata": merge_metadata({}, check_metadata(params)),
        "active": parse_bool(params["active"], "active") if "active" in params else True,
    }


def new_product(params: dict[str, Any], product_id: str, now: int) -> dict[str, Any]:
    settings = check_product(params)
    return {
        "id": product_id,
        "object": "product",
        "active": settings["active"],
        "created": now,
        "default_price": None,
        "description": settings["description"],
        "images": [],
        "livemode": False,
        "marketing_features": [],
        "metadata": settings["metadata"],
        "name": settings["name"],
        "package_dimensions": None,
        "shippable": None,
        "statement_descriptor": None,
        "tax_code": None,
        "type": "service",
        "unit_label": None,
        "updated": now,
        "url": None,
    }


def check_currency(raw: Any, param: str = "currency") -> str:
    if not isinstance(raw, str) or not _CURRENCY.fullmatch(raw.lower()):
        raise invalid(f"Invalid currency: {raw!r}. Stripe takes three-letter ISO codes.", param=param)
    return raw.lower()


def _recurring(params: dict[str, Any]) -> dict[str, Any] | None:
    recurring = params.get("recurring")
    if recurring is None:
        return None
    if not isinstance(recurring, dict):
        raise invalid("Invalid recurring: must be an object.", param="recurring")
    if recurring.get("interval") in (None, ""):
        raise invalid(
            "Missing required param: recurring[interval].", "recurring[interval]", "parameter_missing"
        )
    reject_unknown(recurring, RECURRING_PARAMS, prefix="recurring")
    interval = recurring["interval"]
    if interval not in INTERVALS:
        raise invalid(
            f"Invalid recurring[interval]: must be one of {', '.join(INTERVALS)}", "recurring[interval]"
        )
    count = parse_int(recurring.get("interval_count", "1"), "recurring[interval_count]")
    if not 1 <= count <= MAX_INTERVAL_COUNT[interval]:
        raise invalid(
            "Invalid recurring[interval_count]: the longest billing interval is three years "
            f"({MAX_INTERVAL_COUNT[interval]} {interval}s).",
            "recurring[interval_count]",
        )
    usage_type = recurring.get("usage_type", "licensed")
    if usage_type not in ("licensed", "metered"):
        raise invalid(
            "Invalid recurring[usage_type]: must be one of licensed, metered", "recurring[usage_type]"
        )
    meter = optional_string(recurring, "meter", label="recurring[meter]") or None
    if usage_type == "metered" and meter is None:
        raise invalid(
            "Missing required param: recurring[meter]. A metered price bills a meter's usage.",
            "recurring[meter]",
            "parameter_missing",
        )
    if usage_type != "metered" and meter is not None:
        raise invalid(
            "Invalid recurring[meter]: only a price with recurring[usage_type]=metered can have a meter.",
            "recurring[meter]",
        )
    return {
        "interval": interval,
        "interval_count": count,
        "meter": meter,
        "trial_period_days": None,
        "usage_type": usage_type,
    }


def check_price(params: dict[str, Any]) -> dict[str, Any]:
    """The shape checks of `POST /v1/prices`; returns the settings the price is made of."""
    reject_unknown(params, PRICE_PARAMS)
    currency = check_currency(required(params, "currency"))
    product = required(params, "product")
    if "unit_amount" in params and "unit_amount_decimal" in params:
        raise invalid(
            "You may only specify one of these parameters: unit_amount, unit_amount_decimal.",
            param="unit_amount_decimal",
        )
    unit_amount: int | None
    if "unit_amount" in params:
        whole = parse_int(params["unit_amount"], "unit_amount")
        if whole < 0:
            raise invalid("Invalid unit_amount: must be 0 or more.", param="unit_amount")
        unit_amount, decimal = whole, Decimal(whole)
    elif "unit_amount_decimal" in params:
        decimal = parse_decimal(params["unit_amount_decimal"], "unit_amount_decimal")
        if decimal < 0:
            raise invalid("Invalid unit_amount_decimal: must be 0 or more.", param="unit_amount_decimal")
        unit_amount = int(decimal) if decimal == decimal.to_integral_value() else None
    else:
        raise invalid(
            "Missing required param: unit_amount. A per-unit price needs unit_amount or unit_amount_decimal.",
            "unit_amount",
            "parameter_missing",
        )
    return {
        "currency": currency,
        "product": product,
        "unit_amount": unit_amount,
        "unit_amount_decimal": decimal_text(decimal),
        "recurring": _recurring(params),
        "metadata": merge_metadata({}, check_metadata(params)),
        "nickname": optional_string(params, "nickname"),
        "active": parse_bool(params["active"], "active") if "active" in params else True,
    }


def new_price(settings: dict[str, Any], price_id: str, now: int) -> dict[str, Any]:
    return {
        "id": price_id,
        "object": "price",
        "active": settings["active"],
        "billing_scheme": "per_unit",
        "created": now,
        "currency": settings["currency"],
        "currency_options": None,
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": None,
        "metadata": settings["metadata"],
        "nickname": settings["nickname"],
        "product": settings["product"],
        "recurring": settings["recurring"],
        "tax_behavior": "unspecified",
        "tiers_mode": None,
        "transform_quantity": None,
        "type": "one_time" if settings["recurring"] is None else "recurring",
        "unit_amount": settings["unit_amount"],
        "unit_amount_decimal": settings["unit_amount_decimal"],
    }


def check_price_list(params: dict[str, Any]) -> dict[str, Any]:
    """The filters of `GET /v1/prices`: what each listed price must match."""
    reject_unknown(params, PRICE_LIST_PARAMS)
    wanted: dict[str, Any] = {}
    if "active" in params:
        wanted["active"] = parse_bool(params["active"], "active")
    if "currency" in params:
        wanted["currency"] = check_currency(params["currency"])
    if "product" in params:
        wanted["product"] = required(params, "product")
    if "type" in params:
        if params["type"] not in ("one_time", "recurring"):
            raise invalid("Invalid type: must be one of one_time, recurring", param="type")
        wanted["type"] = params["type"]
    recurring = params.get("recurring")
    if recurring is not None:
        if not isinstance(recurring, dict):
            raise invalid("Invalid recurring: must be an object.", param="recurring")
        reject_unknown(recurring, {"interval", "meter", "usage_type"}, prefix="recurring")
        wanted["recurring"] = recurring
    return wanted


def price_matches(price: dict[str, Any], wanted: dict[str, Any]) -> bool:
    for key in ("active", "currency", "product", "type"):
        if key in wanted and price[key] != wanted[key]:
            return False
    recurring = price["recurring"] or {}
    return all(recurring.get(k) == v for k, v in wanted.get("recurring", {}).items())
