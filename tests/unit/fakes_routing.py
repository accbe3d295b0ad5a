"""In-memory stand-ins for routing's store, peers and report: the distribution's rules run
without a database or a server. Each records what it is asked in one shared `Trail`, so a test
can assert the order of reservations, offerings, deliveries and settlements."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

import grpc

from leadflow.common.v1 import lead_pb2
from leadflow.delivery.v1 import delivery_service_pb2
from leadflow.ledger.v1 import ledger_service_pb2
from leadflow.wire import to_proto
from routing_service.caps import Claim
from routing_service.peers import Quote
from routing_service.store import (
    LEAD_SCOPE,
    DuplicateClaim,
    FirstOffer,
    HeldStep,
    Refusal,
    SaleRecord,
    step_scope,
)

RecipientEvent = ledger_service_pb2.RecipientEvent
DeliverLeadResponse = delivery_service_pb2.DeliverLeadResponse
Window = tuple[str, datetime]  # a cap counter: (cap key, window start)

DECLINED = "Not interested"  # an unscripted buyer's answer
# What happened, in order: "reserve step:0:1", "offering b", "deliver b", "release step:0:1", ...
Trail = list[str]


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="test")


def sold(reference: str = "", price: Decimal | None = None) -> DeliverLeadResponse:
    answer = DeliverLeadResponse(outcome=lead_pb2.OUTCOME_SUCCESS, reference=reference)
    if price is not None:
        answer.price.CopyFrom(to_proto(price))
    return answer


def declined(reason: str = DECLINED) -> DeliverLeadResponse:
    return DeliverLeadResponse(outcome=lead_pb2.OUTCOME_FAILURE, reason=reason)


@dataclass
class SettledLead:
    """One `settle_lead` call as the store received it."""

    lead_id: str
    accepted: bool
    duplicate: DuplicateClaim | None
    sales: list[SaleRecord]
    unknown: list[str]
    final: list[Claim]


@dataclass
class FakeStore:
    """RoutingStore's contract in memory: per-window counters of used leads and micros, holds by
    (lead, scope), duplicate keys, round-robin cursors and sales. Holds never lapse here."""

    trail: Trail
    used: dict[Window, list[int]] = field(default_factory=dict)  # [leads, micros]
    holds: dict[tuple[str, str], list[Claim]] = field(default_factory=dict)
    duplicates: dict[tuple[str, str], str] = field(default_factory=dict)  # -> holding lead id
    cursors: dict[tuple[str, int], int] = field(default_factory=dict)
    sales: list[tuple[SaleRecord, datetime]] = field(default_factory=list)
    settled: list[SettledLead] = field(default_factory=list)
    # Scopes another replica fills between the read-only cap check and the reservation.
    filled_meanwhile: set[str] = field(default_factory=set)

    # --- what tests read ---------------------------------------------------------------------

    def counter(self, key: str) -> tuple[int, int, int]:
        """(used leads, used micros, held leads) of the cap `key`, over all its windows."""
        used = [v for (k, _), v in self.used.items() if k == key]
        held = sum(1 for claims in self.holds.values() for c in claims if c.rule.key == key)
        return sum(v[0] for v in used), sum(v[1] for v in used), held

    def held_scopes(self, lead_id: str) -> set[str]:
        return {scope for lead, scope in self.holds if lead == lead_id}

    # --- the RoutingStore methods Router calls -----------------------------------------------

    def _load(self, window: Window) -> tuple[int, int]:
        leads, micros = self.used.get(window, [0, 0])
        for claims in self.holds.values():
            for c in claims:
                if (c.rule.key, c.window) == window:
                    leads, micros = leads + 1, micros + c.micros
        return leads, micros

    def _fits(self, claim: Claim) -> bool:
        leads, micros = self._load((claim.rule.key, claim.window))
        max_leads, max_micros = claim.limit
        if max_leads is not None and leads + 1 > max_leads:
            return False
        return max_micros is None or micros + claim.micros <= max_micros

    def _hold(self, lead_id: str, scope: str, claims: Sequence[Claim]) -> Refusal | None:
        if (lead_id, scope) in self.holds:
            return None  # a retried request: already held
        for claim in claims:
            if not self._fits(claim):
                return Refusal("caps", claim.rule.reason, claim.rule)
        self.holds[(lead_id, scope)] = list(claims)
        return None

    def _drop(self, lead_id: str, scope: str, commit: bool, final: Sequence[Claim]) -> int:
        claims = self.holds.pop((lead_id, scope), [])
        if commit:
            amounts = {(c.rule.key, c.window): c.micros for c in final}
            for c in claims:
                counter = self.used.setdefault((c.rule.key, c.window), [0, 0])
                counter[0] += 1
                counter[1] += amounts.get((c.rule.key, c.window), c.micros)
        return len(claims)

    def _full(self, claims: Sequence[Claim]) -> set[Window]:
        return {(c.rule.key, c.window) for c in claims if not self._fits(c)}

    async def admit_and_probe(
        self,
        lead_id: str,
        duplicate: DuplicateClaim | None,
        claims: Sequence[Claim],
        ttl: timedelta,
        probe: Sequence[Claim] = (),
        first_offer: FirstOffer | None = None,
    ) -> tuple[Refusal | None, set[Window], HeldStep | None]:
        """The duplicate key, then the flow and source caps, all or nothing; for an admitted
        lead, also the `probe` windows (the first stage's step caps) that are full, and the
        reservation of the step `first_offer` picks."""
        self.trail.append("admit")
        if duplicate is not None:
            key = (duplicate.flow_id, duplicate.digest)
            if self.duplicates.get(key, lead_id) != lead_id:
                return Refusal("duplicates", duplicate.reason), set(), None
        refusal = self._hold(lead_id, LEAD_SCOPE, claims) if claims else None
        if refusal is not None:
            return refusal, set(), None
        if duplicate is not None:
            self.duplicates[(duplicate.flow_id, duplicate.digest)] = lead_id
        full = self._full(probe)
        picked = first_offer(full) if first_offer is not None else None
        if picked is None:
            return None, full, None
        scope, step_claims = picked
        self.trail.append(f"reserve {scope} with admission")
        if scope in self.filled_meanwhile and step_claims:
            rule = step_claims[0].rule
            return None, full, HeldStep(scope, Refusal("caps", rule.reason, rule))
        return None, full, HeldStep(scope, self._hold(lead_id, scope, step_claims))

    async def usage(self, claims: Sequence[Claim]) -> set[Window]:
        self.trail.append("usage")
        return self._full(claims)

    async def reserve(
        self, lead_id: str, scope: str, claims: Sequence[Claim], ttl: timedelta
    ) -> Refusal | None:
        self.trail.append(f"reserve {scope}")
        if scope in self.filled_meanwhile and claims:
            return Refusal("caps", claims[0].rule.reason, claims[0].rule)
        return self._hold(lead_id, scope, claims) if claims else None

    async def settle(
        self, lead_id: str, scope: str, commit: bool, final: Sequence[Claim] = ()
    ) -> int:
        self.trail.append(f"{'commit' if commit else 'release'} {scope}")
        return self._drop(lead_id, scope, commit, final)

    async def settle_lead(
        self,
        lead_id: str,
        accepted: bool,
        duplicate: DuplicateClaim | None,
        duplicate_until: datetime | None,
        sales: Sequence[SaleRecord],
        sold_time: datetime,
        unknown: Collection[str] = (),
        final: Sequence[Claim] = (),
    ) -> tuple[int, int]:
        self.trail.append("settle_lead")
        self.settled.append(
            SettledLead(lead_id, accepted, duplicate, list(sales), list(unknown), list(final))
        )
        if duplicate is not None and not (accepted and duplicate_until is not None):
            self.duplicates.pop((duplicate.flow_id, duplicate.digest), None)
        self.sales += [(sale, sold_time) for sale in sales]
        commit = {step_scope(sale.stage_index, sale.step_index) for sale in sales}
        if accepted:
            commit.add(LEAD_SCOPE)
        committed = released = 0
        for held_lead, scope in list(self.holds):
            if held_lead != lead_id or scope in unknown:
                continue  # an unknown offer's holds stay until it is resolved
            count = self._drop(lead_id, scope, scope in commit, final)
            if scope in commit:
                committed += count
            else:
                released += count
        return committed, released

    async def rotate(self, flow_id: str, stage_index: int, eligible: Sequence[int]) -> int:
        self.trail.append("rotate")
        ordered = sorted(set(eligible))
        last = self.cursors.get((flow_id, stage_index), -1)
        step = next((i for i in ordered if i > last), ordered[0])
        self.cursors[(flow_id, stage_index)] = step
        return step

    async def sales_on(self, flow_id: str, stage_index: int, day: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        for sale, _ in self.sales:
            if (sale.flow_id, sale.stage_index, sale.day) == (flow_id, stage_index, day):
                counts[sale.buyer_id] = counts.get(sale.buyer_id, 0) + 1
        return counts

    async def last_sales(self, flow_id: str, stage_index: int) -> dict[str, datetime]:
        last: dict[str, datetime] = {}
        for sale, when in self.sales:
            if (sale.flow_id, sale.stage_index) == (flow_id, stage_index):
                last[sale.buyer_id] = max(when, last.get(sale.buyer_id, when))
        return last


@dataclass
class FakePeers:
    """Delivery and pricing as the distribution calls them. `answers` scripts each buyer's
    answer: a DeliverLeadResponse, a status code the call fails with, or an exception it
    raises (unscripted buyers decline). `quotes` scripts a pricing service's quote by (stage,
    step) the same way: a Quote, a status code or an exception."""

    trail: Trail
    answers: dict[str, DeliverLeadResponse | grpc.StatusCode | BaseException] = field(
        default_factory=dict
    )
    quotes: dict[tuple[int, int], Quote | grpc.StatusCode | BaseException] = field(
        default_factory=dict
    )
    delivered: list[delivery_service_pb2.DeliverLeadRequest] = field(default_factory=list)
    asked: list[tuple[int, int]] = field(default_factory=list)

    async def deliver(
        self, request: delivery_service_pb2.DeliverLeadRequest, deadline_s: float
    ) -> DeliverLeadResponse:
        self.trail.append(f"deliver {request.buyer_id}")
        self.delivered.append(request)
        answer = self.answers.get(request.buyer_id, declined())
        if isinstance(answer, grpc.StatusCode):
            raise rpc_error(answer)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def quote(
        self,
        lead: lead_pb2.Lead,
        stage_index: int,
        step_index: int,
        purchase_price: Decimal,
        strict: bool = False,
    ) -> Quote | None:
        self.trail.append(f"quote {stage_index}:{step_index}")
        self.asked.append((stage_index, step_index))
        found = self.quotes.get((stage_index, step_index))
        if found is None:
            if strict:
                raise LookupError("no pricing service to quote the sale price")
            return None
        if isinstance(found, grpc.StatusCode):
            if strict:
                raise rpc_error(found)
            return None
        if isinstance(found, BaseException):
            raise found
        return found

    def buyers(self) -> list[str]:
        return [request.buyer_id for request in self.delivered]


class GatewayGone(Exception):
    """The recording report's caller went away before acknowledging an offering."""


@dataclass
class RecordingReport:
    """The distribution's `Report`, keeping copies of what it is told (events change after
    they are reported). With `gone`, every offering raises: the caller never acknowledged it."""

    trail: Trail
    gone: bool = False
    decided_events: list[RecipientEvent] = field(default_factory=list)
    offerings: list[RecipientEvent] = field(default_factory=list)

    def decided(self, event: RecipientEvent) -> None:
        self.trail.append(f"decided {event.buyer_id}")
        copy = RecipientEvent()
        copy.CopyFrom(event)
        self.decided_events.append(copy)

    async def offering(self, event: RecipientEvent) -> None:
        self.trail.append(f"offering {event.buyer_id}")
        copy = RecipientEvent()
        copy.CopyFrom(event)
        self.offerings.append(copy)
        if self.gone:
            raise GatewayGone(event.id)

    async def flush(self) -> None:
        self.trail.append("flush")
