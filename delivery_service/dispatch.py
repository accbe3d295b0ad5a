"""How a lead goes to a buyer (over HTTP now, as a file or mail now, or into the batch queue),
and the retry cache that answers a repeated request with the first delivery's result."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

from delivery_service.batches import REALTIME, batch_spec
from leadflow.config import Buyer

NO_QUEUE = "the batch queue is not available (no storage)"


class Route(Enum):
    HTTP = "http"  # the buyer's endpoint, now (if its circuit breaker lets the call through)
    FILE_NOW = "file now"  # an SFTP file or a mail of this one lead, now
    QUEUE = "queue"  # the durable batch queue: sent with the next scheduled file
    NONE = "none"  # not deliverable: the plan's reason says why


@dataclass(frozen=True)
class Plan:
    route: Route
    reason: str = ""  # why not (Route.NONE only)


def plan(buyer: Buyer, *, has_adapter: bool, has_queue: bool) -> Plan:
    """The route of one delivery to `buyer`. File and mail buyers need the batch queue (its
    storage) even in real time; an HTTP buyer needs its adapter."""
    files = batch_spec(buyer)
    if files is not None:
        if not has_queue:
            return Plan(Route.NONE, NO_QUEUE)
        return Plan(Route.FILE_NOW if files.schedule == REALTIME else Route.QUEUE)
    if not has_adapter:
        return Plan(Route.NONE, f"buyer {buyer.id!r} has no delivery")
    return Plan(Route.HTTP)


RetryKey = tuple[str, str]
T = TypeVar("T")


def retry_key(buyer_id: str, request_id: str) -> RetryKey | None:
    """A request is retriable only with a request id, and only to the same buyer."""
    return (buyer_id, request_id) if request_id else None


class RecentResults(Generic[T]):
    """The latest deliveries by retry key, least recently asked forgotten first.

    The servicer keeps the delivery's task rather than its result: a retry that arrives while
    the first call is still talking to the buyer waits for that call instead of sending the
    lead again.
    """

    def __init__(self, size: int) -> None:
        self._size = max(1, size)
        self._items: OrderedDict[RetryKey, T] = OrderedDict()

    def get(self, key: RetryKey) -> T | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: RetryKey, item: T) -> None:
        self._items[key] = item
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
