"""`python -m pricing_service`: one pricing service, configured from the environment."""

from leadflow.kit import run_main
from pricing_service.config import Settings
from pricing_service.server import create_server, open_deps

if __name__ == "__main__":
    run_main("pricing_service", Settings, open_deps, create_server)
