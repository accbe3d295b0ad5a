"""The suite's one id generator: sortable by creation, unguessable."""

import time

from leadflow.ids import new_id, new_lead_id


def test_ids_sort_in_creation_order() -> None:
    first = new_id()
    time.sleep(0.002)
    assert new_id() > first


def test_ids_differ_within_one_millisecond() -> None:
    assert len({new_id() for _ in range(1000)}) == 1000


def test_an_id_is_24_hex_digits_starting_with_the_millisecond() -> None:
    before = int(time.time() * 1000)
    made = new_lead_id()
    after = int(time.time() * 1000)
    assert len(made) == 24
    assert before <= int(made[:12], 16) <= after
    int(made[12:], 16)  # the random tail is hex too
