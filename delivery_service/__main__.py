"""`python -m delivery_service`: run the delivery service configured from the environment."""

from delivery_service.server import main
from leadflow.kit import run_main

if __name__ == "__main__":
    run_main(main, "delivery_service")
