"""`python -m delivery_service`: run the delivery service configured from the environment."""

from delivery_service.config import Settings
from delivery_service.server import create_server, open_deps
from leadflow.kit import run_main

if __name__ == "__main__":
    run_main("delivery_service", Settings, open_deps, create_server)
