from dataclasses import dataclass

import pytest

from oodml.errors import OodmlError
from oodml.registry import Registry


@dataclass(frozen=True)
class Info:
    name: str
    description: str = ""


def make() -> Registry[Info]:
    reg: Registry[Info] = Registry("widget")
    for n in ["adapted_proto", "adapted_margin", "margin", "proxy_anchor"]:
        reg.add(Info(n), lambda n=n: n)
    reg.alias("adapted_protonet", "adapted_proto")
    return reg


def test_exact_and_alias() -> None:
    reg = make()
    assert reg.get("margin").factory() == "margin"
    assert reg.resolve("adapted_protonet") == "adapted_proto"
    assert "adapted_protonet" in reg and "nosuch" not in reg


def test_duplicate_registration_is_an_error() -> None:
    reg = make()
    with pytest.raises(ValueError, match="twice"):
        reg.add(Info("margin"), lambda: None)
    with pytest.raises(ValueError, match="twice"):
        reg.alias("margin", "proxy_anchor")


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(OodmlError, match="did you mean adapted_proto"):
        make().resolve("adapted_prot")


def test_patterns_are_fnmatch_not_substring() -> None:
    reg = make()
    assert reg.list("adapted_*") == ["adapted_margin", "adapted_proto"]
    assert reg.list("margin") == ["margin"]  # not adapted_margin
    assert reg.match("margin,adapted_*,margin") == ["margin", "adapted_margin", "adapted_proto"]
    with pytest.raises(OodmlError, match="matches no widget"):
        reg.match("zz*")
    with pytest.raises(OodmlError, match="empty"):
        reg.match("margin,,proxy_anchor")
