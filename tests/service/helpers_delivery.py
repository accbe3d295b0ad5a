"""A running delivery service and a DeliverLeadRequest, shared by delivery's test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import grpc

from delivery_service.config import Settings
from delivery_service.server import create_server
from leadflow.config import Config
from leadflow.delivery.v1 import delivery_service_pb2 as pb
from leadflow.delivery.v1 import delivery_service_pb2_grpc as pb_grpc
from leadflow.fields import parse_lead
from leadflow.kit import ServiceSettings, stop_server
from leadflow.wire import LeadData, to_proto


def delivery_settings() -> Settings:
    service = ServiceSettings(
        config_path="", data_dir="", database_url=None, host="127.0.0.1", port=0, metrics_port=None
    )
    return Settings(service=service)


@asynccontextmanager
async def running_delivery(config: Config) -> AsyncIterator[pb_grpc.DeliveryServiceStub]:
    """The real server on a free port (its own HTTP session) and a stub on a real channel."""
    server, port, health = await create_server(delivery_settings(), config)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield pb_grpc.DeliveryServiceStub(channel)
    finally:
        await stop_server(server, health, grace=1)


LEAD_FIELDS = {
    "first_name": "Ada",
    "phone_1": "(512) 555-1234",
    "state": "California",
    "postal_code": "78701",
}


def deliver_request(buyer_id: str, request_id: str = "", **fields: Any) -> pb.DeliverLeadRequest:
    lead = LeadData(
        id="lead-1",
        flow_id="auto",
        source_id="vendor",
        fields=parse_lead({**LEAD_FIELDS, **fields}),
        submit_time=datetime(2026, 3, 14, 15, 9, tzinfo=UTC),
    )
    return pb.DeliverLeadRequest(
        request_id=request_id,
        lead=lead.to_proto(),
        buyer_id=buyer_id,
        sale_price=to_proto(Decimal("12.50")),
        purchase_price=to_proto(Decimal("4.00")),
    )
