"""Every service has the same shape: create_server(settings, deps) -> kit.Running, the kit's one
main, metrics defined in metrics.py only, and nothing done at import time."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from leadflow import kit
from leadflow.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["gateway", "pricing_service", "routing_service", "delivery_service", "ledger_service"]
PACKAGES = ["leadflow", *SERVICES]
METRIC_TYPES = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}


@pytest.mark.parametrize("service", SERVICES)
def test_create_server_takes_settings_and_deps_and_returns_a_running_service(
    service: str,
) -> None:
    server = importlib.import_module(f"{service}.server")
    config = importlib.import_module(f"{service}.config")
    hints = typing.get_type_hints(server.create_server)
    assert list(hints) == ["settings", "deps", "return"]
    assert hints["settings"] is config.Settings
    assert issubclass(config.Settings, ServiceSettings)
    assert hints["deps"] is server.Deps and dataclasses.is_dataclass(server.Deps)
    assert issubclass(hints["return"], kit.Running)


@pytest.mark.parametrize("service", SERVICES)
def test_each_main_is_the_kits_run_main(service: str) -> None:
    tree = ast.parse((ROOT / service / "__main__.py").read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    [call] = calls
    assert ast.unparse(call) == (f"run_main('{service}', Settings, open_deps, create_server)")


def _metric_definitions(path: Path) -> list[str]:
    """Names of prometheus_client metric types this module imports (to define metrics)."""
    tree = ast.parse(path.read_text())
    return [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "prometheus_client"
        for alias in node.names
        if alias.name in METRIC_TYPES
    ]


def test_metrics_are_defined_in_metrics_modules_only() -> None:
    elsewhere = {
        str(path.relative_to(ROOT)): found
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.name != "metrics.py" and (found := _metric_definitions(path))
    }
    # The kit annotates its per-method metric children with the types it is given.
    assert elsewhere == {"leadflow/kit.py": ["Counter", "Histogram"]}


IMPORT_EVERYTHING = """
import importlib, os, pkgutil, socket, sys

ours = tuple(os.path.join(os.getcwd(), package) for package in sys.argv[1:])
read = []


# The file that asked, past the mapping machinery (os.getenv, Mapping.get).
def caller():
    frame = sys._getframe(2)
    while frame and (frame.f_code.co_filename.startswith("<") or frame.f_code.co_filename == os.__file__):
        frame = frame.f_back
    return frame.f_code.co_filename if frame else ""


# Libraries copy the whole environment at import (platform, ctypes.util): only our reads count.
class Watched(type(os.environ)):
    def __getitem__(self, key):
        if caller().startswith(ours):
            read.append(key if isinstance(key, str) else key.decode())
        return super().__getitem__(key)


os.environ = Watched(os.environ._data, os.environ.encodekey, os.environ.decodekey,
                     os.environ.encodevalue, os.environ.decodevalue)

def refuse(*args, **kwargs):
    raise AssertionError(f"a connection at import time: {args}")

socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.socket.bind = refuse
for package in sys.argv[1:]:
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        if ".migrations" not in info.name and not info.name.endswith("__main__"):
            importlib.import_module(info.name)
assert not read, sorted(set(read))
"""


def test_importing_every_module_reads_no_setting_and_opens_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING, *PACKAGES],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "LEADFLOW_GRPC_PORT": "1", "LEADFLOW_CONFIG": "x.yaml"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
