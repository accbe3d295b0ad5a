"""`python -m ledger_service`: one ledger service, configured from the environment."""

from leadflow.kit import run_main
from ledger_service.config import Settings
from ledger_service.server import create_server, open_deps

if __name__ == "__main__":
    run_main("ledger_service", Settings, open_deps, create_server)
