"""routing's calls to other services: sale price quotes (pricing), bids (delivery PingBuyer) and
buyer statistics (ledger GetBuyerStats). Each degrades to "no answer" rather than failing a lead:
a step without a quote ranks last, a buyer without a bid is left out of the auction, a buyer
without statistics counts as new."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc

from leadflow import kit
from leadflow.common.v1 import lead_pb2
from leadflow.delivery.v1 import delivery_service_pb2, delivery_service_pb2_grpc
from leadflow.ledger.v1 import ledger_service_pb2, ledger_service_pb2_grpc
from leadflow.pricing.v1 import pricing_service_pb2, pricing_service_pb2_grpc
from leadflow.wire import PriceAudit, from_proto, outcome_from_proto, to_proto
from routing_service.strategies import BuyerRecord

log = logging.getLogger(__name__)

QUOTE_DEADLINE_S = 5.0
STATS_DEADLINE_S = 2.0
STATS_TTL_S = 60.0
STATS_WINDOW = timedelta(days=7)
# The ping call outlives the buyer's own timeout by this much (the adapter answers at its
# timeout); the stage deadline cuts it shorter.
PING_SLACK_S = 0.5


@dataclass(frozen=True)
class Addresses:
    """Where routing's peers listen; None leaves that peer out (its answers are "none")."""

    pricing: str | None = None
    delivery: str | None = None
    ledger: str | None = None


@dataclass(frozen=True)
class Quote:
    price: Decimal
    audit: PriceAudit


@dataclass(frozen=True)
class Bid:
    """A buyer's answer to a ping: a bid (price set) or why there is none."""

    price: Decimal | None
    bid_id: str = ""
    reason: str = ""
    attempts: tuple[lead_pb2.DeliveryAttempt, ...] = ()


@dataclass
class _Stats:
    records: dict[str, BuyerRecord] = field(default_factory=dict)
    fetched: float = 0.0


class Peers:
    """One channel per peer, opened at start and closed at stop."""

    def __init__(self, addresses: Addresses, stats_ttl_s: float = STATS_TTL_S) -> None:
        self._stats_ttl_s = stats_ttl_s
        self._channels: list[grpc.aio.Channel] = []
        self._pricing = self._delivery = self._ledger = None
        if addresses.pricing:
            self._pricing = pricing_service_pb2_grpc.PricingServiceStub(
                self._open(addresses.pricing)
            )
        if addresses.delivery:
            self._delivery = delivery_service_pb2_grpc.DeliveryServiceStub(
                self._open(addresses.delivery)
            )
        if addresses.ledger:
            self._ledger = ledger_service_pb2_grpc.LedgerServiceStub(self._open(addresses.ledger))
        self._stats = _Stats()
        self._stats_lock = asyncio.Lock()

    def _open(self, address: str) -> grpc.aio.Channel:
        channel = kit.channel(address)
        self._channels.append(channel)
        return channel

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def quote(
        self,
        lead: lead_pb2.Lead,
        stage_index: int,
        step_index: int,
        purchase_price: Decimal,
        strict: bool = False,
    ) -> Quote | None:
        """A pricing service's sale quote for the step; None when it cannot be had (`strict`:
        the call's error is raised: the lead cannot be offered without its price)."""
        if self._pricing is None:
            if strict:
                raise LookupError("no pricing service to quote the sale price")
            return None
        request = pricing_service_pb2.QuoteSalePriceRequest(
            lead=lead,
            stage_index=stage_index,
            step_index=step_index,
            purchase_price=to_proto(purchase_price),
        )
        try:
            reply = await self._pricing.QuoteSalePrice(request, timeout=QUOTE_DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            log.warning("sale price quote for step %d: %s", step_index, exc.code().name)
            if strict:
                raise
            return None
        return Quote(from_proto(reply.price), PriceAudit.from_proto(reply.audit))

    async def deliver(
        self, request: delivery_service_pb2.DeliverLeadRequest, deadline_s: float
    ) -> delivery_service_pb2.DeliverLeadResponse:
        """One offer to one buyer. Never retried (the buyer may have the lead): a call that
        fails after it was sent is the caller's `unknown` offer. It waits for delivery to be
        ready (a restart delays the offer rather than failing it): gRPC only waits for a call
        that was never sent."""
        if self._delivery is None:
            raise LookupError("no delivery service to send the lead to")
        return await self._delivery.DeliverLead(request, timeout=deadline_s, wait_for_ready=True)

    async def ping(
        self,
        request_id: str,
        lead: lead_pb2.Lead,
        buyer_id: str,
        purchase_price: Decimal,
        timeout_s: float,
    ) -> Bid:
        if self._delivery is None:
            return Bid(None, reason="Pings are not available")
        request = delivery_service_pb2.PingBuyerRequest(
            request_id=request_id,
            lead=lead,
            buyer_id=buyer_id,
            purchase_price=to_proto(purchase_price),
        )
        try:
            reply = await self._delivery.PingBuyer(request, timeout=timeout_s + PING_SLACK_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return Bid(None, reason="No bid within the buyer's timeout")
            return Bid(None, reason=f"Ping unavailable: {exc.code().name}")
        attempts = tuple(reply.attempts)
        outcome = outcome_from_proto(reply.outcome)
        if outcome != "success":
            return Bid(None, reason=reply.reason or "No bid", attempts=attempts)
        if not reply.HasField("bid"):
            return Bid(None, reason="No bid", attempts=attempts)
        return Bid(from_proto(reply.bid), reply.bid_id, attempts=attempts)

    async def buyer_records(self, buyer_ids: Sequence[str]) -> dict[str, BuyerRecord]:
        """The last 7 days of every buyer, fetched at most once per `stats_ttl_s` (a minute by
        default) per replica: performance ranks on statistics up to that old. Empty on failure."""
        if self._ledger is None:
            return {}
        async with self._stats_lock:
            if time.monotonic() - self._stats.fetched > self._stats_ttl_s:
                self._stats = _Stats(await self._fetch_stats(), time.monotonic())
        return {b: r for b in buyer_ids if (r := self._stats.records.get(b)) is not None}

    async def _fetch_stats(self) -> dict[str, BuyerRecord]:
        assert self._ledger is not None
        end = datetime.now(UTC)
        request = ledger_service_pb2.GetBuyerStatsRequest()
        request.start_time.FromDatetime(end - STATS_WINDOW)
        request.end_time.FromDatetime(end)
        try:
            reply = await self._ledger.GetBuyerStats(request, timeout=STATS_DEADLINE_S)
        except grpc.aio.AioRpcError as exc:
            # UNIMPLEMENTED until the ledger has them: every buyer then counts as new.
            log.info("buyer statistics unavailable (%s): buyers rank as new", exc.code().name)
            return {}
        return {
            s.buyer_id: BuyerRecord(offered=s.offered, sold=s.sold, returned=s.returned)
            for s in reply.stats
        }
