"""Which Stripe customers a tenant's own key may bind to its customerRefs.

Tenants share one Stripe account, and a Stripe customer is bound to at most one tenant
(services/configuration.py): whoever binds it first has it. A customer whose metadata names a tenant
(``stripemeter_tenant``) is that tenant's alone. With ``STRIPEMETER_CUSTOMER_OWNERSHIP=stripe-metadata``
a tenant's own key binds only customers whose metadata names it, so no tenant can take a customer it
does not own before its owner binds it; whoever creates a tenant's Stripe customers sets the field.
Operators' keys bind any customer. The check reads the customer from Stripe when it is bound; what
was bound before stays bound.
"""

from __future__ import annotations

import logging

import stripe

from stripemeter.adapters.stripe.reader import StripeReader
from stripemeter.domain.errors import Forbidden, Transient

log = logging.getLogger(__name__)

TENANT_METADATA_KEY = "stripemeter_tenant"
FIRST_BINDING, STRIPE_METADATA = "first-binding", "stripe-metadata"
RETRY_AFTER_SECONDS = 5.0


async def check(reader: StripeReader | None, ownership: str, tenant: str, customer: str) -> None:
    """Refuse (403 naming ``stripeCustomerId``) a Stripe customer that is not ``tenant``'s to bind."""
    required = ownership == STRIPE_METADATA
    if reader is None:
        if required:
            raise Transient(
                f"stripeCustomerId: STRIPEMETER_CUSTOMER_OWNERSHIP={STRIPE_METADATA} reads the customer from"
                " Stripe, which is not configured"
            )
        return
    try:
        metadata = await reader.customer_metadata(customer)
    except stripe.StripeError as exc:
        if required:
            raise Transient(
                f"stripeCustomerId: Stripe could not be read ({type(exc).__name__}); retry",
                retry_after=RETRY_AFTER_SECONDS,
            ) from exc
        log.warning("Stripe customer %s of tenant %s bound unread: %s", customer, tenant, type(exc).__name__)
        return
    owner = (metadata or {}).get(TENANT_METADATA_KEY) or None
    if owner is not None and owner != tenant:
        raise Forbidden(
            "stripeCustomerId",
            f"the Stripe customer {customer} belongs to another tenant (its metadata {TENANT_METADATA_KEY})",
            code="stripe_customer_forbidden",
        )
    if required and owner is None:
        missing = (
            "Stripe has no such customer" if metadata is None else "its metadata does not name the tenant"
        )
        raise Forbidden(
            "stripeCustomerId",
            f"the Stripe customer {customer} must carry metadata {TENANT_METADATA_KEY}={tenant}"
            f" (STRIPEMETER_CUSTOMER_OWNERSHIP={STRIPE_METADATA}); {missing}",
            code="stripe_customer_not_owned",
        )
