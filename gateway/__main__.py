"""`python -m gateway`: the HTTP front door and orchestrator, configured from the environment."""

from gateway.server import main
from leadflow.kit import run_main

if __name__ == "__main__":
    run_main(main, "gateway")
