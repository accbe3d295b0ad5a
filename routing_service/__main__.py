"""`python -m routing_service`: one routing service, configured from the environment."""

import uvloop

from routing_service.server import main

if __name__ == "__main__":
    uvloop.run(main())
