"""`python -m pricing_service`: one pricing service, configured from the environment."""

from leadflow.kit import run_main
from pricing_service.server import main

if __name__ == "__main__":
    run_main(main, "pricing_service")
