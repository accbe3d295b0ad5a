"""Pings (SPEC 7.2): ask a buyer for a bid through its `ping` adapter, without the lead's PII.

A ping is an HTTP exchange like a delivery (same request building, network guard, retries and
response rules), so it reuses the HTTP adapter with the buyer's `ping` block. Without a
`mapping` the body is every lead field EXCEPT names, emails, phones and street addresses (the
standard fields, and custom fields typed email or phone); a mapping sends exactly what it
names, so an operator who maps `{{lead.email}}` into a ping has chosen to. The bid is the
response's `price_path`, its id the `reference_path`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import aiohttp

from delivery_service.http_adapter import DeliveryResult, HttpAdapter
from leadflow.config import Buyer, Config, HttpDelivery
from leadflow.context import lead_context
from leadflow.delivery.v1 import delivery_service_pb2
from leadflow.templates import TemplateError
from leadflow.wire import LeadData, outcome_to_proto, to_proto

log = logging.getLogger(__name__)

PII_FIELDS = frozenset(
    {
        "first_name",
        "last_name",
        "name",
        "full_name",
        "email",
        "phone_1",
        "phone_2",
        "address_1",
        "address_2",
    }
)
PII_KINDS = frozenset({"email", "phone"})


def without_pii(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The lead's fields a ping may carry by default: no name, email, phone or street."""
    kept: dict[str, Any] = {}
    for name, value in fields.items():
        if name in PII_FIELDS:
            continue
        if isinstance(value, Mapping) and value.get("kind") in PII_KINDS:
            continue
        kept[name] = value
    return kept


class Pinger:
    """One HTTP adapter per buyer with an HTTP `ping`, on the process's shared session."""

    def __init__(self, config: Config, session: aiohttp.ClientSession) -> None:
        self._config = config
        allow_private = config.account.allow_private_network_delivery
        self._adapters = {
            buyer.id: HttpAdapter(
                buyer.id, buyer.ping, session, allow_private_network=allow_private
            )
            for buyer in config.buyers
            if isinstance(buyer.ping, HttpDelivery)
        }

    def pings(self, buyer_id: str) -> bool:
        return buyer_id in self._adapters

    async def ping(
        self, buyer: Buyer, lead: LeadData, purchase_price: Decimal | None, message_id: str
    ) -> DeliveryResult:
        adapter = self._adapters.get(buyer.id)
        if adapter is None:
            return DeliveryResult("error", f"buyer {buyer.id!r} has no ping")
        context = lead_context(self._config, lead, buyer=buyer, purchase_price=purchase_price)
        try:
            return await adapter.deliver(without_pii(lead.fields), context, message_id)
        except TemplateError as exc:
            return DeliveryResult("error", f"cannot build the ping: {exc}")
        except Exception:
            # One broken ping must not take the call down with an opaque status.
            log.exception("ping of lead %s to buyer %s failed", lead.id, buyer.id)
            return DeliveryResult("error", "internal error while pinging")


def ping_response(result: DeliveryResult, currency: str) -> delivery_service_pb2.PingBuyerResponse:
    """SUCCESS with the bid when the buyer answered with one; its reason otherwise."""
    response = delivery_service_pb2.PingBuyerResponse(
        outcome=outcome_to_proto(result.outcome),
        reason=result.reason,
        bid_id=result.reference,
        attempts=[attempt.to_proto() for attempt in result.attempts],
    )
    if result.price is not None:
        response.bid.CopyFrom(to_proto(result.price, currency))
    elif result.outcome == "success":
        response.reason = "No bid"
    return response
