"""The Stripe side of the pre-invoice guard: reading invoices, their lines, prices and test clocks, and
holding, handing back or finalizing a draft.

Every call goes through the reader's budget and retries (adapters/stripe/calls.py), shared with the
writer and reconciliation. Each write carries an idempotency key derived from the invoice and the
number of such requests the guard recorded before sending it, so a guard killed after recording and
before (or after) calling sends the same request again, and Stripe answers it once.
"""

from __future__ import annotations

from typing import Any

from stripemeter.adapters.stripe.reader import StripeReader

PAGE = 100


class StripeInvoices:
    def __init__(self, reader: StripeReader):
        self.reader = reader
        self.client = reader.client
        self._prices: dict[str, dict[str, Any]] = {}  # a price's meter and amount never change

    async def invoice(self, invoice_id: str) -> dict[str, Any]:
        """The invoice as Stripe holds it now, with every line (the first page is embedded; the rest
        are listed)."""
        found = await self.reader.bounded(self.client.v1.invoices.retrieve_async, invoice_id)
        invoice: dict[str, Any] = found.to_dict()
        lines = invoice.get("lines") or {}
        if lines.get("has_more"):
            invoice["lines"] = {"data": await self._all_lines(invoice_id), "has_more": False}
        return invoice

    async def _all_lines(self, invoice_id: str) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": PAGE}
        out: list[dict[str, Any]] = []
        while True:
            page = await self.reader.bounded(
                self.client.v1.invoices.line_items.list_async, invoice_id, params
            )
            out.extend(item.to_dict() for item in page.data)
            if not page.has_more or not page.data:
                return out
            params = {**params, "starting_after": page.data[-1].id}

    async def price(self, price_id: str) -> dict[str, Any]:
        if price_id not in self._prices:
            found = await self.reader.bounded(self.client.v1.prices.retrieve_async, price_id)
            self._prices[price_id] = found.to_dict()
        return self._prices[price_id]

    async def meter_of_price(self, price_id: str) -> str | None:
        """The meter a metered price bills (``recurring.meter``); None for other prices."""
        recurring = (await self.price(price_id)).get("recurring") or {}
        meter = recurring.get("meter") if recurring.get("usage_type") == "metered" else None
        return str(meter) if meter else None

    async def carry(
        self, customer: str, price_id: str, units: int, description: str, key: str, metadata: dict[str, str]
    ) -> dict[str, Any]:
        """An invoice item for ``units`` at the price's unit amount, pending until the customer's next
        invoice; ``key`` makes it once."""
        price = await self.price(price_id)
        params: dict[str, Any] = {
            "customer": customer,
            "currency": price["currency"],
            "quantity": units,
            "unit_amount_decimal": str(price.get("unit_amount_decimal") or price.get("unit_amount") or 0),
            "description": description,
            "metadata": metadata,
        }
        create = self.client.v1.invoice_items.create_async
        found = await self.reader.bounded(create, params, {"idempotency_key": key})
        result: dict[str, Any] = found.to_dict()
        return result

    async def event_names(self, meter_ids: set[str]) -> dict[str, str]:
        """Meter id -> event name: from the meters the reader knows (reconciliation reads them every
        run), read again only when one of ``meter_ids`` is not among them."""
        known = {meter.id: name for name, meter in self.reader.meters.all().items()}
        if not meter_ids <= known.keys():
            known = {meter.id: name for name, meter in (await self.reader.meters_by_event_name()).items()}
        return known

    async def clock_time(self, test_clock: str) -> int:
        """A test clock's frozen time: Stripe's "now" for the customers on it."""
        clocks = self.client.v1.test_helpers.test_clocks
        return int((await self.reader.bounded(clocks.retrieve_async, test_clock)).frozen_time)

    async def hold(self, invoice_id: str, request: int) -> dict[str, Any]:
        """``auto_advance=false``: Stripe keeps the draft until told otherwise."""
        return await self._update(invoice_id, {"auto_advance": False}, f"smguard_{invoice_id}_hold_{request}")

    async def hand_back(self, invoice_id: str, request: int) -> dict[str, Any]:
        """``auto_advance=true``: Stripe finalizes the draft on its own schedule."""
        return await self._update(
            invoice_id, {"auto_advance": True}, f"smguard_{invoice_id}_release_{request}"
        )

    async def finalize(self, invoice_id: str, request: int) -> dict[str, Any]:
        options = {"idempotency_key": f"smguard_{invoice_id}_finalize_{request}"}
        finalize = self.client.v1.invoices.finalize_invoice_async
        found = await self.reader.bounded(finalize, invoice_id, {"auto_advance": True}, options)
        result: dict[str, Any] = found.to_dict()
        return result

    async def _update(self, invoice_id: str, params: dict[str, Any], key: str) -> dict[str, Any]:
        update = self.client.v1.invoices.update_async
        found = await self.reader.bounded(update, invoice_id, params, {"idempotency_key": key})
        result: dict[str, Any] = found.to_dict()
        return result
