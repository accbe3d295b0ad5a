"""`python -m delivery_service`: run the delivery service configured from the environment."""

import uvloop

from delivery_service.server import main

if __name__ == "__main__":
    uvloop.run(main())
