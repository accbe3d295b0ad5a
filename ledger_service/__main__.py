"""`python -m ledger_service`: one ledger service, configured from the environment."""

import asyncio

from ledger_service.server import main

if __name__ == "__main__":
    asyncio.run(main())
