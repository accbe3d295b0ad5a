"""A small buyer for the demo: accepts leads it can call (valid phone), rejects the rest.

Run by `make run` beside the suite: `python examples/demo_buyer.py --port 8090`.
"""

from __future__ import annotations

import argparse
import itertools

import uvloop
from aiohttp import web

_ids = itertools.count(1)


async def receive(request: web.Request) -> web.Response:
    lead = await request.json()
    phone = str(lead.get("phone", ""))
    if len(phone) != 10 or not phone.isdigit():
        return web.json_response({"status": "rejected", "message": "Phone number required"})
    return web.json_response({"status": "accepted", "id": f"acme-{next(_ids)}"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8090)
    # deploy/compose.yaml runs it in a container of its own, reached from the others: 0.0.0.0.
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/leads", receive)
    # uvloop, as the services: the bench runs this buyer on the same cores as the suite.
    web.run_app(app, host=args.host, port=args.port, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
