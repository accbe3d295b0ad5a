"""Stage strategies (SPEC 7.1): the order in which eligible steps are offered a lead. Pure.

Every function takes the eligible steps and whatever state its strategy reads (last sales,
the rotation cursor, sales counts, prices, buyer statistics) and returns them in offer order.
Ties always fall back to `priority`, then configuration order, so an order is deterministic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol, TypeVar


class Ranked(Protocol):
    @property
    def index(self) -> int: ...
    @property
    def buyer_id(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def weight(self) -> Decimal: ...


S = TypeVar("S", bound=Ranked)


def by_priority(steps: Sequence[S], last_sold: Mapping[str, datetime] | None = None) -> list[S]:
    """Ascending priority; among equal priorities the buyer sold longest ago (never sold:
    first), then configuration order."""
    if not last_sold:
        return sorted(steps, key=lambda s: (s.priority, s.index))
    never = datetime.min
    return sorted(
        steps,
        key=lambda s: (
            s.priority,
            last_sold[s.buyer_id].replace(tzinfo=None) if s.buyer_id in last_sold else never,
            s.index,
        ),
    )


def has_priority_ties(steps: Sequence[Ranked]) -> bool:
    priorities = [s.priority for s in steps]
    return len(set(priorities)) != len(priorities)


def rotation(steps: Sequence[S], after: int | None) -> list[S]:
    """Strict round robin: the first eligible step after the cursor (configuration order,
    wrapping), then the others in rotation order."""
    ordered = sorted(steps, key=lambda s: s.index)
    if after is None:
        return ordered
    split = next((i for i, s in enumerate(ordered) if s.index > after), 0)
    return ordered[split:] + ordered[:split]


def next_in_rotation(indexes: Sequence[int], after: int | None) -> int:
    """The step index a round robin offers first, given the last one it offered first."""
    ordered = sorted(indexes)
    if after is None:
        return ordered[0]
    return next((i for i in ordered if i > after), ordered[0])


def shares(steps: Sequence[Ranked]) -> dict[int, float]:
    """Each step's target share of the stage's sales: weight/Σweights (computed once)."""
    total = sum((s.weight for s in steps), Decimal(0))
    return {s.index: float(s.weight / total) for s in steps}


def by_deficit(
    steps: Sequence[S], share: Mapping[int, float], sales: Mapping[str, int], total_sales: int
) -> list[S]:
    """Weighted: the buyer furthest below its share weight/Σweights of the stage's sales first.

    The deficit is the sales a buyer is owed if the next lead is a sale: share x (sales so
    far + 1) - its sales. A larger share breaks a tie, then priority and position. Floats: the
    order only needs the comparison, and they are the same on every replica.
    """
    upcoming = total_sales + 1
    return sorted(
        steps,
        key=lambda s: (
            sales.get(s.buyer_id, 0) - share[s.index] * upcoming,
            -share[s.index],
            s.priority,
            s.index,
        ),
    )


def by_price(steps: Sequence[S], prices: Mapping[int, Decimal]) -> list[S]:
    """Highest price first (steps without one last), then priority and position."""
    return sorted(steps, key=lambda s: (-prices.get(s.index, Decimal(-1)), s.priority, s.index))


@dataclass(frozen=True)
class BuyerRecord:
    """What a buyer did with the leads offered to it over the last days."""

    offered: int
    sold: int
    returned: int

    @property
    def factor(self) -> Decimal:
        """acceptance rate x (1 - return rate)."""
        if self.offered <= 0:
            return Decimal(0)
        acceptance = Decimal(self.sold) / Decimal(self.offered)
        returns = Decimal(self.returned) / Decimal(self.sold) if self.sold else Decimal(0)
        return acceptance * (1 - min(Decimal(1), returns))


def expected_revenue(
    steps: Sequence[Ranked], prices: Mapping[int, Decimal], records: Mapping[str, BuyerRecord]
) -> dict[int, Decimal]:
    """Sale price x acceptance x (1 - returns) per step; a buyer with no offers in the window
    gets the average of the buyers that have some (all new: the price alone ranks them)."""
    known: dict[int, Decimal] = {}
    for step in steps:
        record = records.get(step.buyer_id)
        if record is not None and record.offered > 0:
            known[step.index] = prices.get(step.index, Decimal(0)) * record.factor
    if not known:
        return {s.index: prices.get(s.index, Decimal(0)) for s in steps}
    average = sum(known.values(), Decimal(0)) / len(known)
    return {s.index: known.get(s.index, average) for s in steps}


def by_bid(steps: Sequence[S], bids: Mapping[int, Decimal], min_bid: Decimal) -> list[S]:
    """Auction: bids at or above `min_bid`, highest first; steps without a bid are left out."""
    bidding = [s for s in steps if s.index in bids and bids[s.index] >= min_bid]
    return by_price(bidding, bids)
