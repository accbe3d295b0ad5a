"""Each service's Settings: the variables it reads, their defaults and bounds, and a bad value
refused as one line naming its variable."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from delivery_service.config import Settings as DeliverySettings
from gateway.clients import Addresses as GatewayAddresses
from gateway.config import Settings as GatewaySettings
from gateway.http_server import HttpLimits
from leadflow.settings import ServiceSettings, SettingsError
from ledger_service.config import Settings as LedgerSettings
from pricing_service.config import Settings as PricingSettings
from routing_service.config import Settings as RoutingSettings
from routing_service.peers import Addresses as RoutingAddresses

SERVICES: list[tuple[type[ServiceSettings], int, int]] = [
    (PricingSettings, 50051, 50061),
    (RoutingSettings, 50052, 50062),
    (DeliverySettings, 50053, 50063),
    (LedgerSettings, 50054, 50064),
    (GatewaySettings, 50055, 50065),
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the machine running the tests has set must not leak into them."""
    for name in list(os.environ):
        if name.startswith("LEADFLOW_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(("settings", "port", "metrics_port"), SERVICES)
def test_each_service_has_its_own_default_ports(
    settings: type[ServiceSettings], port: int, metrics_port: int
) -> None:
    read = settings.from_env()
    assert (read.grpc_port, read.metrics_port) == (port, metrics_port)
    assert read.address == f"0.0.0.0:{port}"
    assert (read.config_path, read.data_dir, read.database_url) == ("leadflow.yaml", "data", None)


def test_the_common_variables_are_read_by_their_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADFLOW_CONFIG", "/etc/leadflow/suite.yaml")
    monkeypatch.setenv("LEADFLOW_DATA_DIR", "/var/lib/leadflow")
    monkeypatch.setenv("LEADFLOW_DATABASE_URL", "postgresql+asyncpg://app@db/leads")
    monkeypatch.setenv("LEADFLOW_HOST", "127.0.0.1")
    monkeypatch.setenv("LEADFLOW_GRPC_PORT", " 6000 ")
    monkeypatch.setenv("LEADFLOW_METRICS_PORT", "0")
    read = LedgerSettings.from_env()
    assert read.config_path == "/etc/leadflow/suite.yaml"
    assert read.data_dir == "/var/lib/leadflow"
    assert read.database_url == "postgresql+asyncpg://app@db/leads"
    assert (read.address, read.metrics_port) == ("127.0.0.1:6000", 0)


def test_a_blank_variable_means_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADFLOW_GRPC_PORT", "  ")
    monkeypatch.setenv("LEADFLOW_DATABASE_URL", "")
    monkeypatch.setenv("LEADFLOW_LEDGER_ADDR", "")
    read = DeliverySettings.from_env()
    assert (read.grpc_port, read.database_url, read.ledger_addr) == (50053, None, None)


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("LEADFLOW_GRPC_PORT", "fifty", "must be an integer from 0 to 65535, not 'fifty'"),
        ("LEADFLOW_METRICS_PORT", "65536", "must be an integer from 0 to 65535, not '65536'"),
        ("LEADFLOW_HTTP_PORT", "-1", "must be an integer from 0 to 65535, not '-1'"),
        ("LEADFLOW_HTTP_HEADER_TIMEOUT", "0", "must be a number from 0.001 to 3600, not '0'"),
        ("LEADFLOW_HTTP_BODY_TIMEOUT", "nan", "must be a number from 0.001 to 3600, not 'nan'"),
        (
            "LEADFLOW_DATABASE_URL",
            "mysql://user:secret@db/leads",
            "must be a sqlite+aiosqlite:// or postgresql+asyncpg:// URL",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        GatewaySettings.from_env()
    assert str(raised.value) == f"{variable} {problem}"
    assert "secret" not in str(raised.value)


def test_every_bad_value_is_named_on_the_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADFLOW_GRPC_PORT", "x")
    monkeypatch.setenv("LEADFLOW_LOG_FORMAT", "xml")
    with pytest.raises(SettingsError) as raised:
        PricingSettings.from_env()
    [line] = str(raised.value).splitlines()
    assert "LEADFLOW_GRPC_PORT must be" in line and "LEADFLOW_LOG_FORMAT must be" in line


def test_gateway_reads_its_front_door_and_the_four_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert GatewaySettings.from_env().http_limits == HttpLimits(10.0, 30.0)
    monkeypatch.setenv("LEADFLOW_HOST", "10.0.0.5")
    assert GatewaySettings.from_env().http_address == ("10.0.0.5", 8080)
    monkeypatch.setenv("LEADFLOW_HTTP_HOST", "0.0.0.0")
    monkeypatch.setenv("LEADFLOW_HTTP_PORT", "8443")
    monkeypatch.setenv("LEADFLOW_ROUTING_ADDR", "routing:50052")
    read = GatewaySettings.from_env()
    assert read.http_address == ("0.0.0.0", 8443)
    assert read.addresses == GatewayAddresses(
        "127.0.0.1:50051", "routing:50052", "127.0.0.1:50053", "127.0.0.1:50054"
    )


def test_routing_reads_its_peers_hold_and_statistics_lifetime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read = RoutingSettings.from_env()
    assert (read.peers, read.hold, read.routing_stats_seconds) == (
        RoutingAddresses(),
        timedelta(minutes=15),
        60.0,
    )
    monkeypatch.setenv("LEADFLOW_DELIVERY_ADDR", "delivery:50053")
    monkeypatch.setenv("LEADFLOW_ROUTING_HOLD_SECONDS", "90")
    read = RoutingSettings.from_env()
    assert (read.peers.delivery, read.peers.pricing, read.hold) == (
        "delivery:50053",
        None,
        timedelta(seconds=90),
    )
    monkeypatch.setenv("LEADFLOW_ROUTING_STATS_SECONDS", "86401")
    with pytest.raises(SettingsError, match=r"^LEADFLOW_ROUTING_STATS_SECONDS must be a number"):
        RoutingSettings.from_env()


def test_delivery_reads_its_scheduler_and_shutdown_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    read = DeliverySettings.from_env()
    assert (read.delivery_recent_results, read.shutdown_grace_seconds) == (10_000, 10.0)
    assert (read.runner.tick_seconds, read.runner.lease_seconds) == (1.0, 60.0)
    assert (read.runner.backoff.base_seconds, read.runner.backoff.max_seconds) == (30.0, 900.0)
    monkeypatch.setenv("LEADFLOW_DELIVERY_TICK_SECONDS", "0.5")
    monkeypatch.setenv("LEADFLOW_DELIVERY_MAX_RETRY_SECONDS", "60")
    read = DeliverySettings.from_env()
    assert (read.runner.tick_seconds, read.runner.backoff.max_seconds) == (0.5, 60.0)
    monkeypatch.setenv("LEADFLOW_DELIVERY_RECENT_RESULTS", "10000001")
    with pytest.raises(SettingsError, match=r"^LEADFLOW_DELIVERY_RECENT_RESULTS must be an int"):
        DeliverySettings.from_env()


def test_a_setting_passed_by_name_is_checked_too() -> None:
    assert LedgerSettings(host="127.0.0.1", grpc_port=0).address == "127.0.0.1:0"
    with pytest.raises(ValueError, match="grpc_prot"):
        LedgerSettings(grpc_prot=0)  # type: ignore[call-arg]
