"""`python -m gateway`: the HTTP front door and orchestrator, configured from the environment."""

from gateway.config import Settings
from gateway.server import create_server, open_deps
from leadflow.kit import run_main

if __name__ == "__main__":
    run_main("gateway", Settings, open_deps, create_server)
