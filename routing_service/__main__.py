"""`python -m routing_service`: one routing service, configured from the environment."""

from leadflow.kit import run_main
from routing_service.server import main

if __name__ == "__main__":
    run_main(main, "routing_service")
