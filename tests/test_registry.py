"""The one registry type behind methods, backbones, map sources, data sets and profiles."""

import pytest

from learning_to_look.errors import L2LError
from learning_to_look.registry import Registry


class Thing:
    def __init__(self, name):
        self.name = name


def test_register_get_names_and_help():
    reg = Registry("widget")
    a, b = reg.register(Thing("a")), reg.register(Thing("b"))
    assert reg.get("a") is a and reg["b"] is b and "a" in reg and "c" not in reg
    assert reg.names() == ["a", "b"] == list(reg) and len(reg) == 2
    assert reg.help() == "a | b" and reg.help("a") == "a | b  [default: a]"


def test_unknown_name_is_a_one_line_error_with_the_choices():
    reg = Registry("widget")
    reg.register(Thing("a"))
    with pytest.raises(L2LError, match=r"^unknown widget 'z'; choose one of: a$"):
        reg.get("z")


def test_duplicates_are_refused():
    reg = Registry("widget")
    reg.register(Thing("a"))
    with pytest.raises(ValueError, match="registered twice"):
        reg.register(Thing("a"))
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("a", object())
