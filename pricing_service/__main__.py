"""`python -m pricing_service`: one pricing service, configured from the environment."""

import uvloop

from pricing_service.server import main

if __name__ == "__main__":
    uvloop.run(main())
