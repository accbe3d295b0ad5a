"""`python -m ledger_service`: one ledger service, configured from the environment."""

import uvloop

from ledger_service.server import main

if __name__ == "__main__":
    uvloop.run(main())
