"""`python -m gateway`: the HTTP front door and orchestrator, configured from the environment."""

import asyncio

from gateway.server import main

if __name__ == "__main__":
    asyncio.run(main())
