"""`python -m routing_service`: one routing service, configured from the environment."""

from leadflow.kit import run_main
from routing_service.config import Settings
from routing_service.server import create_server, open_deps

if __name__ == "__main__":
    run_main("routing_service", Settings, open_deps, create_server)
