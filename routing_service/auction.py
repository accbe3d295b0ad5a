"""The seller-side auction (SPEC 7.2): one round of parallel pings, closed by the stage deadline.

Steps whose buyer has `ping` are pinged (each within its own `timeout_ms` and the deadline);
the others bid their quoted sale price. A ping still out at the deadline is cancelled and its
buyer is left out. Bids under `min_bid` are dropped. The result is the bidders, highest first,
and the buyers left out with why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal

from leadflow.common.v1 import lead_pb2
from leadflow.money import format_money
from leadflow.wire import PriceAudit
from routing_service.peers import Bid, Peers, Quote
from routing_service.quotes import SaleQuotes
from routing_service.routing import LeftOut, Offer, StagePlan, StepPlan
from routing_service.strategies import by_bid

NO_BID_BY_DEADLINE = "No bid within the auction deadline"


async def run_auction(
    stage: StagePlan,
    eligible: Sequence[StepPlan],
    lead: lead_pb2.Lead,
    purchase_price: Decimal,
    peers: Peers,
    sale_quotes: SaleQuotes,
) -> tuple[list[Offer], list[LeftOut]]:
    deadline_s = stage.deadline_ms / 1000
    pings: dict[int, asyncio.Task[Bid]] = {}
    quotes: dict[int, asyncio.Task[Quote | None]] = {}
    for step in eligible:
        if step.has_ping:
            timeout = min(step.ping_timeout_ms / 1000, deadline_s)
            pings[step.index] = asyncio.create_task(
                peers.ping(
                    f"{lead.id}:ping:{stage.index}:{step.index}",
                    lead,
                    step.buyer_id,
                    purchase_price,
                    timeout,
                )
            )
        else:
            quotes[step.index] = asyncio.create_task(sale_quotes.quote(stage.index, step))
    if pings:
        _, late = await asyncio.wait(pings.values(), timeout=deadline_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    quoted = dict(zip(quotes, await asyncio.gather(*quotes.values()), strict=True))

    bids: dict[int, Decimal] = {}
    offers: dict[int, Offer] = {}
    left_out: list[LeftOut] = []
    for step in eligible:
        if step.index in pings:
            task = pings[step.index]
            if task.cancelled():
                left_out.append((step, NO_BID_BY_DEADLINE, ()))
                continue
            bid = task.result()
            if bid.price is None:
                left_out.append((step, bid.reason or "No bid", bid.attempts))
                continue
            bids[step.index] = bid.price
            note = f"bid id {bid.bid_id}" if bid.bid_id else ""
            audit = PriceAudit(layer="bid", amount=bid.price, note=note)
            offers[step.index] = Offer(step, bid.price, audit, bid.bid_id, bid.attempts)
        else:
            quote = quoted[step.index]
            if quote is None:
                left_out.append((step, "No bid: the sale price could not be quoted", ()))
                continue
            bids[step.index] = quote.price
            offers[step.index] = Offer(step, quote.price, quote.audit)
    ranked = by_bid(eligible, bids, stage.min_bid)
    for step in eligible:
        if step.index in bids and bids[step.index] < stage.min_bid:
            offer = offers[step.index]
            reason = f"Bid {format_money(bids[step.index])} under the minimum of "
            left_out.append((step, reason + format_money(stage.min_bid), offer.attempts))
    return [offers[step.index] for step in ranked], left_out
