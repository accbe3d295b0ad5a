"""The smallest valid configuration, for unit tests to build on."""

BASE = """
account: {name: Test}
sources:
  - {id: vendor, name: Vendor, api_key: k}
buyers:
  - id: acme
    name: Acme
    delivery: {type: http, url: "http://127.0.0.1:9/leads"}
flows:
  - id: auto
    name: Auto
    sources: [{source: vendor}]
    stages:
      - name: main
        steps: [{buyer: acme}]
"""
