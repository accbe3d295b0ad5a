"""A lead's sale quotes as routing uses them: given with the purchase price, zero, or asked."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from leadflow.common.v1 import lead_pb2
from leadflow.wire import PriceAudit, from_proto
from routing_service.peers import Peers, Quote
from routing_service.routing import StepPlan

NO_PRICE = Quote(Decimal(0), PriceAudit(layer="none", amount=Decimal(0)))


class SaleQuotes:
    """One lead's sale quotes: those that came with its purchase price (rules alone), $0.00 for
    steps with no sale pricing, and a pricing service's quote, asked at most once per step."""

    def __init__(
        self,
        given: Mapping[tuple[int, int], Any],
        lead: lead_pb2.Lead,
        purchase_price: Decimal,
        peers: Peers,
    ) -> None:
        self._given = given  # StepQuote messages by (stage, step): converted when used
        self._lead = lead
        self._purchase_price = purchase_price
        self._peers = peers
        self._asked: dict[tuple[int, int], Quote] = {}

    def known(self, stage_index: int, step: StepPlan) -> Quote | None:
        """The step's quote when it needs no call: given with the purchase price, or zero."""
        given = self._given.get((stage_index, step.index))
        if given is not None:
            return Quote(from_proto(given.price), PriceAudit.from_proto(given.audit))
        return NO_PRICE if step.sale_pricing == "none" else None

    async def quote(self, stage_index: int, step: StepPlan, strict: bool = False) -> Quote | None:
        """The step's quote; None when its pricing service could not be asked (`strict`: the
        pricing call's error is raised instead)."""
        known = self.known(stage_index, step)
        if known is not None:
            return known
        key = (stage_index, step.index)
        found = self._asked.get(key)
        if found is None:
            found = await self._peers.quote(
                self._lead, stage_index, step.index, self._purchase_price, strict=strict
            )
            if found is not None:
                self._asked[key] = found
        return found
