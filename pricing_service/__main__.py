"""`python -m pricing_service`: one pricing service, configured from the environment."""

import asyncio

from pricing_service.server import main

if __name__ == "__main__":
    asyncio.run(main())
