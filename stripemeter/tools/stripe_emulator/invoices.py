"""Invoices, their line items and invoice items as API version 2026-10-28.endive shows them, and the
shape checks of their routes. Pure: billing.py decides when they are made and what they hold.

A line's `amount` is its quantity times the price's unit amount; with a fractional
`unit_amount_decimal` the product is rounded half up to whole cents (the emulator's choice: Stripe
does not document its rounding). An invoice's `subtotal`, `total` and `amount_due` are the sum of its
lines (no tax, discounts or customer balance are emulated).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from stripemeter.tools.stripe_emulator.catalog import check_currency
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

Params = dict[str, Any]
FINALIZATION_GRACE_SECONDS = 3600  # Stripe finalizes an automatic draft an hour after creating it
LINES_SHOWN = 10  # an invoice shows its first lines; GET /v1/invoices/{id}/lines pages through all
STATUSES = ("draft", "open", "paid", "uncollectible", "void")
PAGING = {"limit", "starting_after", "ending_before"}


def amount(quantity: int, unit_amount_decimal: str) -> int:
    cents = Decimal(quantity) * Decimal(unit_amount_decimal)
    return int(cents.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def price_pricing(price: Params | None, unit_amount_decimal: str) -> Params:
    details = None if price is None else {"price": price["id"], "product": price["product"]}
    return {"type": "price_details", "price_details": details, "unit_amount_decimal": unit_amount_decimal}


def subscription_line(
    line_id: str,
    invoice_id: str,
    item: Params,
    price: Params,
    period: tuple[int, int],
    quantity: int,
    description: str,
) -> Params:
    """The line of one metered subscription item."""
    subscription = item["subscription"]
    return {
        "id": line_id,
        "object": "line_item",
        "amount": amount(quantity, price["unit_amount_decimal"]),
        "currency": price["currency"],
        "description": description,
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "invoice": invoice_id,
        "livemode": False,
        "metadata": {},
        "parent": {
            "type": "subscription_item_details",
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": None,
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": subscription,
                "subscription_item": item["id"],
            },
        },
        "period": {"start": period[0], "end": period[1]},
        "pretax_credit_amounts": [],
        "pricing": price_pricing(price, price["unit_amount_decimal"]),
        "quantity": quantity,
        "quantity_decimal": str(quantity),
        "subscription": subscription,
        "subtotal": amount(quantity, price["unit_amount_decimal"]),
        "taxes": [],
    }


def item_line(line_id: str, invoice_id: str, invoice_item: Params) -> Params:
    """The line of one invoice item."""
    return {
        "id": line_id,
        "object": "line_item",
        "amount": invoice_item["amount"],
        "currency": invoice_item["currency"],
        "description": invoice_item["description"],
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "invoice": invoice_id,
        "livemode": False,
        "metadata": invoice_item["metadata"],
        "parent": {
            "type": "invoice_item_details",
            "invoice_item_details": {
                "invoice_item": invoice_item["id"],
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": None,
            },
            "subscription_item_details": None,
        },
        "period": invoice_item["period"],
        "pretax_credit_amounts": [],
        "pricing": invoice_item["pricing"],
        "quantity": invoice_item["quantity"],
        "quantity_decimal": invoice_item["quantity_decimal"],
        "subscription": None,
        "subtotal": invoice_item["amount"],
        "taxes": [],
    }


def new_invoice(
    invoice_id: str,
    customer: Params,
    subscription: Params,
    billing_reason: str,
    period: tuple[int, int],
    created: int,
) -> Params:
    """A draft invoice of a subscription, without lines (`with_lines` adds them and the totals)."""
    return {
        "id": invoice_id,
        "object": "invoice",
        "account_country": None,
        "account_name": None,
        "account_tax_ids": None,
        "amount_due": 0,
        "amount_overpaid": 0,
        "amount_paid": 0,
        "amount_remaining": 0,
        "amount_shipping": 0,
        "application": None,
        "attempt_count": 0,
        "attempted": False,
        "auto_advance": True,
        "automatic_tax": {
            "disabled_reason": None,
            "enabled": False,
            "liability": None,
            "provider": None,
            "status": None,
        },
        "automatically_finalizes_at": created + FINALIZATION_GRACE_SECONDS,
        "billing_reason": billing_reason,
        "collection_method": "charge_automatically",
        "confirmation_secret": None,
        "created": created,
        "currency": subscription["currency"],
        "custom_fields": None,
        "customer": customer["id"],
        "customer_account": None,
        "customer_address": None,
        "customer_email": customer["email"],
        "customer_name": customer["name"],
        "customer_phone": None,
        "customer_shipping": None,
        "customer_tax_exempt": "none",
        "customer_tax_ids": [],
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [],
        "due_date": None,
        "effective_at": None,
        "ending_balance": None,
        "footer": None,
        "from_invoice": None,
        "hosted_invoice_url": None,
        "invoice_pdf": None,
        "issuer": {"type": "self"},
        "last_finalization_error": None,
        "latest_revision": None,
        "lines": {"object": "list", "data": [], "has_more": False, "total_count": 0, "url": ""},
        "livemode": False,
        "metadata": {},
        "next_payment_attempt": None,
        "number": None,
        "on_behalf_of": None,
        "parent": {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {
                "metadata": subscription["metadata"],
                "subscription": subscription["id"],
                "subscription_proration_date": None,
            },
        },
        "payment_settings": {
            "default_mandate": None,
            "payment_method_options": None,
            "payment_method_types": None,
        },
        "period_end": period[1],
        "period_start": period[0],
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "receipt_number": None,
        "rendering": None,
        "shipping_cost": None,
        "shipping_details": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "status": "draft",
        "status_transitions": {
            "finalized_at": None,
            "marked_uncollectible_at": None,
            "paid_at": None,
            "voided_at": None,
        },
        "subtotal": 0,
        "subtotal_excluding_tax": 0,
        "test_clock": subscription["test_clock"],
        "threshold_reason": None,
        "total": 0,
        "total_discount_amounts": [],
        "total_excluding_tax": 0,
        "total_pretax_credit_amounts": [],
        "total_taxes": [],
        "webhooks_delivered_at": None,
    }


def with_lines(invoice: Params, lines: list[Params]) -> Params:
    """The invoice showing `lines` (its first ones) and the totals of all of them."""
    total = sum(line["amount"] for line in lines)
    paid = invoice["amount_paid"]
    return {
        **invoice,
        "amount_due": total,
        "amount_remaining": total - paid,
        "lines": {
            "object": "list",
            "data": lines[:LINES_SHOWN],
            "has_more": len(lines) > LINES_SHOWN,
            "total_count": len(lines),
            "url": f"/v1/invoices/{invoice['id']}/lines",
        },
        "subtotal": total,
        "subtotal_excluding_tax": total,
        "total": total,
        "total_excluding_tax": total,
    }


def finalized(invoice: Params, at: int, number: str) -> Params:
    """The invoice finalized at `at`: `open`, or `paid` at once when nothing is due (as Stripe marks a
    0 invoice paid on finalization). Payments are not emulated: an open invoice stays open."""
    paid = invoice["amount_due"] == 0
    return {
        **invoice,
        "automatically_finalizes_at": None,
        "effective_at": at,
        "ending_balance": 0,
        "number": number,
        "status": "paid" if paid else "open",
        "status_transitions": {
            **invoice["status_transitions"],
            "finalized_at": at,
            "paid_at": at if paid else None,
        },
    }


# --- invoice routes ----------------------------------------------------------------------------


def check_update(params: Params) -> Params:
    """`POST /v1/invoices/{id}`: the changes (`auto_advance`, `metadata`)."""
    reject_unknown(params, {"auto_advance", "metadata"})
    changes: Params = {}
    if "auto_advance" in params:
        changes["auto_advance"] = parse_bool(params["auto_advance"], "auto_advance")
    metadata = check_metadata(params)
    if metadata is not None:
        changes["metadata"] = metadata
    return changes


def check_finalize(params: Params) -> bool | None:
    """`POST /v1/invoices/{id}/finalize`: the optional `auto_advance`."""
    reject_unknown(params, {"auto_advance"})
    return parse_bool(params["auto_advance"], "auto_advance") if "auto_advance" in params else None


def check_list(params: Params) -> Params:
    """`GET /v1/invoices`: the filters (`customer`, `subscription`, `status`)."""
    reject_unknown(params, {"customer", "subscription", "status", *PAGING})
    wanted: Params = {k: required(params, k) for k in ("customer", "subscription", "status") if k in params}
    if "status" in wanted and wanted["status"] not in STATUSES:
        raise invalid(f"Invalid status: must be one of {', '.join(STATUSES)}", param="status")
    return wanted


def check_lines_list(params: Params) -> None:
    reject_unknown(params, PAGING)


# --- invoice items -----------------------------------------------------------------------------

ITEM_PARAMS = {
    "customer",
    "currency",
    "amount",
    "pricing",
    "quantity",
    "unit_amount_decimal",
    "description",
    "period",
    "metadata",
}


def check_invoice_item(params: Params) -> Params:
    """`POST /v1/invoiceitems`: exactly one of `amount`, `pricing[price]` (with `quantity`, default 1)
    or `unit_amount_decimal` (with `quantity`); `currency` unless a price gives it; `period` with
    `start` <= `end`. Returns the settings (the price and customer are checked by the state)."""
    reject_unknown(params, ITEM_PARAMS)
    customer = required(params, "customer")
    pricing = params.get("pricing")
    price = None
    if pricing is not None:
        if not isinstance(pricing, dict):
            raise invalid("Invalid pricing: must be an object.", param="pricing")
        reject_unknown(pricing, {"price"}, prefix="pricing")
        price = required(pricing, "price", "pricing[price]")
    given = [k for k in ("amount", "unit_amount_decimal") if k in params] + (["pricing"] if price else [])
    if len(given) > 1:
        raise invalid(
            "You may only specify one of these parameters: amount, pricing[price], unit_amount_decimal.",
            param=given[1],
        )
    if not given:
        raise invalid(
            "Missing required param: amount. An invoice item needs amount, pricing[price] or "
            "unit_amount_decimal.",
            "amount",
            "parameter_missing",
        )
    quantity = parse_int(params["quantity"], "quantity") if "quantity" in params else 1
    if quantity < 0:
        raise invalid("Invalid quantity: must be a non-negative integer.", param="quantity")
    if "amount" in params and "quantity" in params:
        raise invalid("Invalid quantity: an invoice item with an amount has no quantity.", param="quantity")
    currency = check_currency(params["currency"]) if "currency" in params else None
    if currency is None and price is None:
        raise invalid("Missing required param: currency.", "currency", "parameter_missing")
    period = params.get("period")
    if period is not None:
        if not isinstance(period, dict):
            raise invalid("Invalid period: must be an object.", param="period")
        for key in ("end", "start"):
            if period.get(key) in (None, ""):
                raise invalid(
                    f"Missing required param: period[{key}].", f"period[{key}]", "parameter_missing"
                )
        reject_unknown(period, {"start", "end"}, prefix="period")
        period = (parse_int(period["start"], "period[start]"), parse_int(period["end"], "period[end]"))
        if period[1] < period[0]:
            raise invalid("Invalid period[end]: must be at or after period[start].", param="period[end]")
    return {
        "customer": customer,
        "currency": currency,
        "amount": parse_int(params["amount"], "amount") if "amount" in params else None,
        "price": price,
        "unit_amount_decimal": (
            parse_decimal(params["unit_amount_decimal"], "unit_amount_decimal")
            if "unit_amount_decimal" in params
            else None
        ),
        "quantity": quantity,
        "description": optional_string(params, "description"),
        "period": period,
        "metadata": merge_metadata({}, check_metadata(params)),
    }


def new_invoice_item(
    item_id: str, settings: Params, price: Params | None, date: int, test_clock: str | None
) -> Params:
    """The pending `invoiceitem` (`invoice` is set when an invoice takes it)."""
    quantity = settings["quantity"]
    if price is not None:
        unit, currency = price["unit_amount_decimal"], price["currency"]
        total = amount(quantity, unit)
    elif settings["unit_amount_decimal"] is not None:
        unit, currency = decimal_text(settings["unit_amount_decimal"]), settings["currency"]
        total = amount(quantity, unit)
    else:
        total, currency = settings["amount"], settings["currency"]
        unit = str(total)
    period = settings["period"] or (date, date)
    return {
        "id": item_id,
        "object": "invoiceitem",
        "amount": total,
        "currency": currency,
        "customer": settings["customer"],
        "customer_account": None,
        "date": date,
        "description": settings["description"],
        "discountable": True,
        "discounts": [],
        "invoice": None,
        "livemode": False,
        "metadata": settings["metadata"],
        "net_amount": total,
        "parent": None,
        "period": {"start": period[0], "end": period[1]},
        "pricing": price_pricing(price, unit),
        "proration": False,
        "proration_details": {"credited_items": None},
        "quantity": quantity,
        "quantity_decimal": str(quantity),
        "tax_rates": [],
        "test_clock": test_clock,
    }


def check_invoice_item_list(params: Params) -> Params:
    """`GET /v1/invoiceitems`: `customer`, `invoice`, `pending` (true: not yet on an invoice)."""
    reject_unknown(params, {"customer", "invoice", "pending", *PAGING})
    wanted: Params = {k: required(params, k) for k in ("customer", "invoice") if k in params}
    if "pending" in params:
        wanted["pending"] = parse_bool(params["pending"], "pending")
    return wanted
