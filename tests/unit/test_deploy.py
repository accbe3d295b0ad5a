"""deploy/ read statically: dashboards, Prometheus rules, Kubernetes manifests, compose, image.

The tools' own checks (promtool, kubectl kustomize | kubernetes-validate, dclint) run in
`make validate-deploy`; these tests hold what those cannot know: that every file names the ports,
modules, metrics and datasource the code really has.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import dockerfile
import promql_parser
import pytest
import yaml

from leadflow.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SERVICES = {
    # name in deploy/ -> module
    "pricing": "pricing_service",
    "routing": "routing_service",
    "delivery": "delivery_service",
    "ledger": "ledger_service",
    "gateway": "gateway",
}
STATEFUL = {"routing", "delivery", "ledger", "gateway"}
SPEC_METRICS = {
    "grpc_server_handled_total",
    "grpc_server_handling_seconds",
    "grpc_client_handled_total",
    "grpc_client_handling_seconds",
    "leadflow_leads_total",
    "leadflow_lead_duration_seconds",
    "leadflow_purchase_cost_dollars_total",
    "leadflow_sale_revenue_dollars_total",
    "leadflow_return_credits_dollars_total",
    "leadflow_deliveries_total",
    "leadflow_delivery_duration_seconds",
    "leadflow_delivery_retries_total",
    "leadflow_pricing_fallbacks_total",
    "leadflow_cap_rejections_total",
    "leadflow_batch_pending_leads",
}
# Exported beyond SPEC 11, by the service named.
EXTRA_METRICS = {
    "leadflow_returns_dollars_total": "ledger_service",
    "leadflow_delivery_outcomes_unreported": "delivery_service",
}
DASHBOARD_VARIABLES = {"$flow": ".*", "$source": ".*", "$buyer": ".*", "$adapter": ".*"}


def _load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _k8s(kind: str) -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in _yaml_docs(path):
            if doc.get("kind") == kind:
                found[doc["metadata"]["name"]] = doc
    return found


def _ports(module: str) -> tuple[int, int]:
    fields = importlib.import_module(f"{module}.config").Settings.model_fields
    return fields["grpc_port"].default, fields["metrics_port"].default


def _dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text())
        for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
    }


def _panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expr) of every panel target."""
    return [
        (name, panel["title"], target["expr"])
        for name, board in _dashboards().items()
        for panel in board["panels"]
        for target in panel.get("targets", [])
    ]


def concrete(expr: str) -> str:
    """A dashboard query as Grafana sends it: variables and intervals filled in."""
    for name, value in DASHBOARD_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr.replace("$__rate_interval", "1m").replace("$__range", "1h")


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(concrete(expr)), visit)
    return names


def base_metric(name: str) -> str:
    return re.sub(r"_(bucket|count|sum)$", "", name)


# --- Grafana -----------------------------------------------------------------------------------


def test_dashboards_are_what_the_generator_writes() -> None:
    generate = _load_module(DEPLOY / "grafana" / "generate.py")
    for name, build in generate.BOARDS.items():
        written = (DEPLOY / "grafana" / "dashboards" / name).read_text()
        assert written == generate.render(build()), f"run deploy/grafana/generate.py ({name})"


def test_the_spec_names_both_dashboards() -> None:
    assert set(_dashboards()) == {"delivery.json", "margin.json"}


def test_every_dashboard_query_is_valid_promql() -> None:
    queries = _panel_queries()
    assert len(queries) > 30
    for board, title, expr in queries:
        try:
            promql_parser.parse(concrete(expr))
        except Exception as exc:  # the parser raises its own ValueError subclasses
            pytest.fail(f"{board} / {title}: {exc}\n{expr}")


def test_every_query_and_variable_uses_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    (source,) = provisioned["datasources"]
    expected = {"type": "prometheus", "uid": source["uid"]}
    for name, board in _dashboards().items():
        for variable in board["templating"]["list"]:
            assert variable["datasource"] == expected, (name, variable["name"])
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == expected, (name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"] == expected, (name, panel["title"])


def test_dashboards_provision_from_the_directory_compose_mounts() -> None:
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/leadflow.yml").read_text())
    (entry,) = provider["providers"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{entry['options']['path']}:ro" in mounts


def test_dashboards_query_only_metrics_the_services_export() -> None:
    known = SPEC_METRICS | set(EXTRA_METRICS)
    for board, title, expr in _panel_queries():
        for name in metric_names(expr):
            assert base_metric(name) in known, f"{board} / {title}: unknown metric {name}"


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    for name, board in _dashboards().items():
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), name
        cells: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, (name, panel["title"])
            area = {
                (x, y)
                for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not area & cells, f"{name}: {panel['title']} overlaps another panel"
            cells |= area


def test_delivery_dashboard_shows_what_the_issue_lists() -> None:
    text = " ".join(
        f"{title} {expr}" for board, title, expr in _panel_queries() if board == "delivery.json"
    )
    for needed in (
        "leadflow_deliveries_total",
        'outcome="success"',
        'outcome="error"',
        "histogram_quantile(0.5,",
        "histogram_quantile(0.95,",
        "histogram_quantile(0.99,",
        "sum by (buyer, adapter, le)",
        "leadflow_delivery_retries_total",
        "leadflow_batch_pending_leads",
    ):
        assert needed in text, needed


def test_margin_dashboard_breaks_money_down_by_flow_source_and_buyer() -> None:
    board = _dashboards()["margin.json"]
    titles = {panel["title"] for panel in board["panels"]}
    for needed in ("Revenue", "Purchase cost", "Margin", "Margin %", "Return credits"):
        assert needed in titles
    assert "Margin by flow" in titles
    variables = {variable["name"] for variable in board["templating"]["list"]}
    assert variables == {"flow", "source", "buyer"}
    text = " ".join(expr for b, _, expr in _panel_queries() if b == "margin.json")
    for grouping in ("sum by (flow)", "sum by (flow, source)", "sum by (buyer)"):
        assert grouping in text


def test_a_counter_over_the_range_is_exact_without_restarts() -> None:
    generate = _load_module(DEPLOY / "grafana" / "generate.py")
    expr = generate.over_range("x_total", "1h")
    promql_parser.parse(expr)
    # No extrapolation (increase) unless the series reset inside the window.
    assert expr.index("unless resets(x_total[1h]) > 0") < expr.index("or increase(x_total[1h])")


# --- Prometheus --------------------------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    rules = []
    for path in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += group["rules"]
    return rules


def test_alerts_cover_what_the_issue_names() -> None:
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    for needed in (
        "LeadflowDeliveryFailureRateHigh",
        "LeadflowLowMargin",
        "LeadflowPricingFallbacks",
        "LeadflowBatchBacklog",
        "LeadflowServiceDown",
    ):
        assert needed in alerts


def test_every_alert_has_a_test_that_fires_it_and_one_that_keeps_it_quiet() -> None:
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in sorted((DEPLOY / "prometheus" / "tests").glob("*.yml")):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert alerts - fires == set(), "alerts no test fires"
    assert alerts - quiet == set(), "alerts no test keeps quiet"


def test_every_alert_has_a_severity_and_a_summary() -> None:
    for rule in _rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]


def test_rules_query_only_metrics_the_services_export_or_record() -> None:
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    known = SPEC_METRICS | set(EXTRA_METRICS) | recorded | {"up"}
    for rule in _rules():
        for name in metric_names(rule["expr"]):
            assert base_metric(name) in known, f"{rule.get('alert') or rule['record']}: {name}"


def test_extra_metrics_are_defined_by_their_service() -> None:
    for name, module in EXTRA_METRICS.items():
        source = (ROOT / module / "metrics.py").read_text()
        assert f'"{name.removesuffix("_total")}' in source or f'"{name}"' in source, name


def test_prometheus_scrapes_each_service_metrics_port_with_its_service_label() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "leadflow"]
    targets = {entry["labels"]["service"]: entry["targets"] for entry in job["static_configs"]}
    assert set(targets) == set(SERVICES)
    for name, module in SERVICES.items():
        assert targets[name] == [f"{name}:{_ports(module)[1]}"]


# --- Kubernetes --------------------------------------------------------------------------------


def test_each_service_has_a_deployment_service_and_service_account() -> None:
    for kind in ("Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"):
        assert set(SERVICES) <= set(_k8s(kind)), kind


def test_each_deployment_runs_its_service_with_grpc_probes_on_its_port() -> None:
    for name, deployment in _k8s("Deployment").items():
        grpc_port, metrics_port = _ports(SERVICES[name])
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert container["args"] == [SERVICES[name]]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert ports["grpc"] == grpc_port and ports["metrics"] == metrics_port
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == grpc_port, (name, probe)
        env = {item["name"]: item for item in container["env"]}
        assert env["LEADFLOW_GRPC_PORT"]["value"] == str(grpc_port)
        assert env["LEADFLOW_METRICS_PORT"]["value"] == str(metrics_port)
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
        assert pod["spec"]["serviceAccountName"] == name


def test_pods_run_as_non_root_on_a_read_only_root_filesystem_with_resources() -> None:
    pods = [d["spec"]["template"]["spec"] for d in _k8s("Deployment").values()]
    pods += [job["spec"]["template"]["spec"] for job in _k8s("Job").values()]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            for side in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][side])


def test_stateful_services_read_the_database_url_from_a_secret() -> None:
    for name, deployment in _k8s("Deployment").items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {item["name"]: item for item in container["env"]}
        if name in STATEFUL:
            ref = env["LEADFLOW_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "leadflow-database", "key": "url"}
        else:
            assert "LEADFLOW_DATABASE_URL" not in env


def test_callers_reach_each_service_at_its_kubernetes_name_and_port() -> None:
    for deployment in _k8s("Deployment").values():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        for item in container["env"]:
            match = re.fullmatch(r"LEADFLOW_([A-Z]+)_ADDR", item["name"])
            if match:
                target = match.group(1).lower()
                assert item["value"] == f"{target}:{_ports(SERVICES[target])[0]}"


def test_the_migration_job_runs_leadflow_migrate_against_the_secret_database() -> None:
    (job,) = _k8s("Job").values()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["leadflow", "migrate"]
    assert container["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "leadflow-database"


def test_only_the_migration_job_holds_the_schema_owners_database_url() -> None:
    # SPEC 10: the owner migrates; the services' role cannot change or unprotect ledger rows.
    def secrets(spec: dict[str, Any]) -> dict[str, str]:
        (container,) = spec["template"]["spec"]["containers"]
        return {
            item["name"]: item["valueFrom"]["secretKeyRef"]["name"]
            for item in container["env"]
            if "secretKeyRef" in item.get("valueFrom", {})
        }

    (job,) = _k8s("Job").values()
    assert secrets(job["spec"])["LEADFLOW_MIGRATE_DATABASE_URL"] == "leadflow-database-owner"
    assert secrets(job["spec"])["LEADFLOW_DATABASE_URL"] == "leadflow-database"
    for name, deployment in _k8s("Deployment").items():
        assert "leadflow-database-owner" not in secrets(deployment["spec"]).values(), name


def test_compose_services_connect_as_another_role_than_the_migration() -> None:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    migrate = services["migrate"]["environment"]
    owner = migrate["LEADFLOW_MIGRATE_DATABASE_URL"].split("://")[1].split(":")[0]
    app = migrate["LEADFLOW_DATABASE_URL"].split("://")[1].split(":")[0]
    assert owner != app
    for name in SERVICES:
        url = services[name]["environment"]["LEADFLOW_DATABASE_URL"]
        assert url == migrate["LEADFLOW_DATABASE_URL"], name


def test_gateway_and_delivery_scale_horizontally() -> None:
    autoscalers = _k8s("HorizontalPodAutoscaler")
    assert set(autoscalers) == {"gateway", "delivery"}
    for name, hpa in autoscalers.items():
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert hpa["spec"]["minReplicas"] >= 2
        assert "replicas" not in _k8s("Deployment")[name]["spec"]


def test_the_kubernetes_configuration_is_a_valid_leadflow_configuration() -> None:
    env = {
        "LEADFLOW_ADMIN_KEY": "admin",
        "QUALITY_LEADS_KEY": "source",
        "ACME_DELIVERY_URL": "https://buyer.example/leads",
    }
    config = load_config(DEPLOY / "k8s" / "leadflow.yaml", env)
    assert config.flows


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    manifests = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {
        "kustomization.yaml",
        "leadflow.yaml",
    }
    assert set(kustomization["resources"]) == manifests


# --- Compose and the image ---------------------------------------------------------------------


def test_compose_runs_postgres_the_five_services_prometheus_and_grafana() -> None:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    assert {"postgres", "prometheus", "grafana", "migrate", *SERVICES} <= set(services)
    for name, module in SERVICES.items():
        service = services[name]
        assert service["command"] == [module]
        grpc_port, _ = _ports(module)
        assert service["healthcheck"]["test"][-1] == f"127.0.0.1:{grpc_port}"
        assert service["read_only"] is True and service["user"] != "0"
        if name != "gateway":
            assert services["gateway"]["environment"][f"LEADFLOW_{name.upper()}_ADDR"] == (
                f"{name}:{grpc_port}"
            )
    assert services["migrate"]["command"] == ["leadflow", "migrate"]


def _dockerfile() -> list[dockerfile.Command]:
    """deploy/Dockerfile through BuildKit's own parser (a syntax error fails here)."""
    return list(dockerfile.parse_file(str(DEPLOY / "Dockerfile")))


def _final_stage(commands: list[dockerfile.Command]) -> list[dockerfile.Command]:
    starts = [i for i, command in enumerate(commands) if command.cmd == "FROM"]
    return commands[starts[-1] :]


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    final = _final_stage(_dockerfile())
    (user,) = [command for command in final if command.cmd == "USER"]
    uid = user.value[0].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    (entrypoint,) = [command for command in final if command.cmd == "ENTRYPOINT"]
    assert entrypoint.json and entrypoint.value == ("docker-entrypoint",)
    (stop,) = [command for command in final if command.cmd == "STOPSIGNAL"]
    assert stop.value == ("SIGTERM",)


def test_the_image_copies_only_what_exists_and_the_context_sends() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copies = [
        command
        for command in _dockerfile()
        if command.cmd == "COPY" and not any(flag.startswith("--from") for flag in command.flags)
    ]
    assert copies
    for command in copies:
        for source in command.value[:-1]:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") in allowed, f"{source} is not in the build context"


def test_the_image_exposes_every_service_port() -> None:
    (expose,) = [command for command in _dockerfile() if command.cmd == "EXPOSE"]
    exposed: set[int] = set()
    for item in expose.value:
        low, _, high = item.partition("-")
        exposed |= set(range(int(low), int(high or low) + 1))
    for module in SERVICES.values():
        assert set(_ports(module)) <= exposed, module


def test_the_entrypoint_runs_exactly_the_five_services_and_the_cli() -> None:
    script = (DEPLOY / "docker-entrypoint.sh").read_text()
    (pattern,) = re.findall(r"^\s*([a-z_| ]+)\)\n\s*exec python -m", script, re.MULTILINE)
    assert {part.strip() for part in pattern.split("|")} == set(SERVICES.values())
    for module in SERVICES.values():
        assert (ROOT / module / "__main__.py").exists()
    assert "exec leadflow" in script
