"""The gRPC metrics every service exports (go-grpc-prometheus names), defined once; the kit
counts them on both sides of every call."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SERVER_STARTED = Counter(
    "grpc_server_started_total",
    "RPCs started on the server.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
SERVER_HANDLED = Counter(
    "grpc_server_handled_total",
    "RPCs completed on the server, by code.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
SERVER_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Server RPC latency.",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CLIENT_STARTED = Counter(
    "grpc_client_started_total",
    "RPCs started by clients.",
    ["grpc_type", "grpc_service", "grpc_method"],
)
CLIENT_HANDLED = Counter(
    "grpc_client_handled_total",
    "RPCs completed by clients, by code.",
    ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
)
CLIENT_SECONDS = Histogram(
    "grpc_client_handling_seconds",
    "Client RPC latency.",
    ["grpc_type", "grpc_service", "grpc_method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
