"""`python -m delivery_service`: run the delivery service configured from the environment."""

import asyncio

from delivery_service.server import main

if __name__ == "__main__":
    asyncio.run(main())
