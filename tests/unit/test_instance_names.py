"""The one instance-name rule (LXD's) and random names for unnamed creates."""

from __future__ import annotations

import itertools

import pytest

from services.instance import names, validate
from services.instance.drivers import base
from shared.errors import BadRequest


@pytest.mark.parametrize("name", ["a", "c1", "web-01", "A" * 63, "x-y-z", "Ab9"])
def test_valid_names(name: str) -> None:
    assert names.check_name(name) == name


@pytest.mark.parametrize("name", ["", None, 7, "1abc", "123", "-a", "a-", "a_b", "a.b",
                                  "a/b", "x" * 64, "é", "a b"])
def test_invalid_names_are_400(name: object) -> None:
    with pytest.raises(BadRequest) as err:
        names.check_name(name)
    assert err.value.code == 400 and "name" in err.value.message


def test_service_and_drivers_share_the_rule() -> None:
    """The API check and the drivers' spec directories use the very same function."""
    assert validate.check_name is names.check_name is base.check_name


def test_random_name_is_adjective_noun_and_valid() -> None:
    for _ in range(50):
        n = names.random_name(set())
        first, second = n.split("-")
        assert first.isalpha() and second.isalpha() and names.check_name(n) == n


def test_random_name_avoids_taken_and_invalid_ones() -> None:
    picks = iter(["taken-one", "9bad-name", "free-one"])
    assert names.random_name({"taken-one"}, lambda: next(picks)) == "free-one"


def test_random_name_gives_up_with_a_clear_error() -> None:
    always = itertools.repeat("taken-one")
    with pytest.raises(BadRequest, match="name"):
        names.random_name({"taken-one"}, lambda: next(always))
