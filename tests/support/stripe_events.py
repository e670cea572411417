"""Stripe webhook events as Stripe sends them, for the webhook tests.

:class:`Events` builds event dicts in Stripe's shape (API version 2025-03-31 and later: the
billing period on the subscription item, the invoice's subscription under ``parent``; the
``legacy=True`` variants use the older shape) with unique ids and ``created`` times that the
test controls. :func:`deliver` signs one with :func:`usageflow.testing.sign_stripe_payload`
and hands the raw body and header to ``flow.handle_webhook``, as an endpoint would.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from typing import Any

from usageflow.testing import sign_stripe_payload

SECRET = "whsec_test_3cf1d2a0b7e94e5c8f0a"
#: 2024-01-15 12:00 UTC, the fake clock's start (tests/conftest.py).
T0 = int(datetime(2024, 1, 15, 12, 0, tzinfo=timezone.utc).timestamp())
DAY = 86_400
MONTH = 31 * DAY


def deliver(flow: Any, event: dict[str, Any], secret: str = SECRET) -> Any:
    body, header = sign_stripe_payload(event, secret)
    return flow.handle_webhook(body.encode(), header)


class Events:
    """Builds events; ``suffix`` keeps ids of parallel scenarios in one store apart."""

    def __init__(self, suffix: str = "") -> None:
        self.suffix = suffix
        self._ids = itertools.count(1)

    def event(self, type: str, obj: dict[str, Any], created: int) -> dict[str, Any]:
        return {
            "id": f"evt_{next(self._ids):05d}{self.suffix}",
            "object": "event",
            "api_version": "2025-03-31.basil",
            "created": created,
            "data": {"object": obj},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": type,
        }

    def price(
        self, type: str, price_id: str, unit_amount: int, created: int, currency: str = "usd"
    ) -> dict[str, Any]:
        return self.event(
            type,
            {
                "id": price_id,
                "object": "price",
                "active": type != "price.deleted",
                "currency": currency,
                "product": "prod_x",
                "recurring": {"interval": "month", "interval_count": 1},
                "type": "recurring",
                "unit_amount": unit_amount,
                "unit_amount_decimal": str(unit_amount),
            },
            created,
        )

    def checkout(
        self,
        customer: str,
        created: int,
        client_reference_id: str | None = None,
        email: str | None = None,
        subscription: str | None = None,
    ) -> dict[str, Any]:
        return self.event(
            "checkout.session.completed",
            {
                "id": f"cs_test_{customer}{self.suffix}",
                "object": "checkout.session",
                "client_reference_id": client_reference_id,
                "customer": customer,
                "customer_details": {"email": email, "name": "Ada"},
                "customer_email": None,
                "mode": "subscription",
                "payment_link": "plink_1",
                "payment_status": "paid",
                "status": "complete",
                "subscription": subscription,
            },
            created,
        )

    def pack_checkout(
        self,
        session: str,
        created: int,
        *,
        type: str = "checkout.session.completed",
        payment_link: str | None = "plink_pack",
        client_reference_id: str | None = None,
        customer: str | None = None,
        email: str | None = None,
        payment_status: str = "paid",
        payment_intent: str | None = None,
        line_items: list[tuple[str, int]] | None = None,
    ) -> dict[str, Any]:
        """A one-time (``mode: payment``) Checkout Session, as a credit pack's Payment Link
        makes it; ``line_items`` (price, quantity) as when the session is expanded."""
        obj: dict[str, Any] = {
            "id": f"cs_test_{session}{self.suffix}",
            "object": "checkout.session",
            "amount_total": 500,
            "client_reference_id": client_reference_id,
            "created": created,
            "currency": "usd",
            "customer": customer,
            "customer_details": {"email": email, "name": "Ada"},
            "customer_email": None,
            "mode": "payment",
            "payment_intent": payment_intent or f"pi_{session}{self.suffix}",
            "payment_link": payment_link,
            "payment_status": payment_status,
            "status": "complete",
            "subscription": None,
        }
        if line_items is not None:
            obj["line_items"] = {
                "object": "list",
                "data": [
                    {"id": f"li_{i}", "object": "item", "price": {"id": p}, "quantity": q}
                    for i, (p, q) in enumerate(line_items)
                ],
            }
        return self.event(type, obj, created)

    def charge_refunded(
        self, payment_intent: str, refunded: int, created: int, amount: int = 500
    ) -> dict[str, Any]:
        """``charge.refunded``: ``refunded`` of ``amount`` (cumulative) given back."""
        return self.event(
            "charge.refunded",
            {
                "id": f"ch_{payment_intent}",
                "object": "charge",
                "amount": amount,
                "amount_captured": amount,
                "amount_refunded": refunded,
                "currency": "usd",
                "payment_intent": payment_intent,
                "refunded": refunded >= amount,
                "status": "succeeded",
            },
            created,
        )

    def subscription(
        self,
        type: str,
        sub_id: str,
        customer: str,
        price: str,
        status: str,
        period: tuple[int, int],
        created: int,
        *,
        started: int = T0,
        legacy: bool = False,
    ) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": f"si_{sub_id}",
            "object": "subscription_item",
            "price": {"id": price, "object": "price", "currency": "usd"},
            "quantity": 1,
            "subscription": sub_id,
        }
        sub: dict[str, Any] = {
            "id": sub_id,
            "object": "subscription",
            "customer": customer,
            "status": status,
            "created": started,
            "start_date": started,
            "cancel_at_period_end": False,
            "items": {"object": "list", "data": [item], "has_more": False},
        }
        where = sub if legacy else item
        where["current_period_start"], where["current_period_end"] = period
        return self.event(type, sub, created)

    def invoice_paid(
        self,
        sub_id: str,
        customer: str,
        price: str,
        period: tuple[int, int],
        created: int,
        *,
        legacy: bool = False,
    ) -> dict[str, Any]:
        line: dict[str, Any] = {
            "id": f"il_{sub_id}_{period[0]}",
            "object": "line_item",
            "amount": 2000,
            "period": {"start": period[0], "end": period[1]},
        }
        invoice: dict[str, Any] = {
            "id": f"in_{sub_id}_{period[0]}",
            "object": "invoice",
            "customer": customer,
            "status": "paid",
            "billing_reason": "subscription_cycle",
            "lines": {"object": "list", "data": [line], "has_more": False},
        }
        if legacy:
            invoice["subscription"] = sub_id
            line.update(type="subscription", proration=False, price={"id": price})
        else:
            invoice["parent"] = {
                "type": "subscription_details",
                "subscription_details": {"subscription": sub_id, "metadata": {}},
            }
            line["parent"] = {
                "type": "subscription_item_details",
                "subscription_item_details": {
                    "proration": False,
                    "subscription": sub_id,
                    "subscription_item": f"si_{sub_id}",
                },
            }
            line["pricing"] = {
                "type": "price_details",
                "price_details": {"price": price, "product": "prod_x"},
            }
        return self.event("invoice.paid", invoice, created)
