"""`python -m ledger_service`: one ledger service, configured from the environment."""

from leadflow.kit import run_main
from ledger_service.server import main

if __name__ == "__main__":
    run_main(main, "ledger_service")
