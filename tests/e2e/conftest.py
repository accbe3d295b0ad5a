"""e2e fixtures: a buyer that accepts everything but New York."""

from collections.abc import Iterator

import pytest

from tests.e2e.harness import BuyerServer, default_buyer


@pytest.fixture(scope="module")
def buyer() -> Iterator[BuyerServer]:
    yield from default_buyer()
