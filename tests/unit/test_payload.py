"""Dot keys to nested objects: the one unflatten vendors' parameters and buyers' mappings share."""

import pytest

from leadflow.payload import flatten, unflatten


def test_dot_keys_nest() -> None:
    assert unflatten({"a.b": "1", "a.c": "2", "d": "3"}) == {"a": {"b": "1", "c": "2"}, "d": "3"}


def test_dot_keys_inside_nested_objects_nest_too() -> None:
    assert unflatten({"a": {"b.c": 1}, "a.d": 2}) == {"a": {"b": {"c": 1}, "d": 2}}


@pytest.mark.parametrize(
    "flat",
    [{"a": "1", "a.b": "2"}, {"a.b": "2", "a": "1"}, {"a.b": "1", "a.b.c": "2"}],
)
def test_a_key_that_is_both_a_value_and_an_object_is_refused(flat: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="both a value and an object"):
        unflatten(flat)


@pytest.mark.parametrize("name", ["a..b", ".a", "a.", ""])
def test_a_name_with_an_empty_part_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="bad field name"):
        unflatten({name: "1"})


def test_limits_apply_only_when_given() -> None:
    wide = {f"f{i}": "x" for i in range(5)}
    assert unflatten(wide) == wide
    with pytest.raises(ValueError, match="too many fields"):
        unflatten(wide, max_fields=4)
    with pytest.raises(ValueError, match="more than 2 parts"):
        unflatten({"a.b.c": "1"}, max_parts=2)


def test_unflatten_undoes_flatten() -> None:
    nested = {"contact": {"phone": "5125551234", "email": "a@b.example"}, "state": "CA"}
    assert unflatten(dict(flatten(nested))) == nested
