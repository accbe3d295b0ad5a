"""`python -m gateway`: the HTTP front door and orchestrator, configured from the environment."""

import uvloop

from gateway.server import main

if __name__ == "__main__":
    uvloop.run(main())
