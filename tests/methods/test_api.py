"""Method names, patterns, add-ons, hyperparameter overrides and registry metadata."""

from __future__ import annotations

import dataclasses
import json

import pytest

from oodml.errors import OodmlError
from oodml.methods import (METHODS, EmbeddingMethod, MethodContext, build_method, load_plugins, method_family,
                           method_params, resolve_methods, validate_overrides)
from oodml.methods.addons import SecTerm
from oodml.methods.base import FAMILIES
from oodml.methods.cohort import MutualCohort, MutualTerm

DML = ["contrastive", "triplet", "margin", "multisimilarity", "proxy_anchor", "arcface", "normsoftmax", "histogram"]


def test_every_method_of_the_issue_is_registered() -> None:
    expected = {"pretrained", "baseline", "weight_transfer", "protonet", "adapted_proto", *DML,
                *(f"adapted_{d}" for d in DML)}
    assert expected <= set(METHODS.names())
    assert METHODS.resolve("adapted_hist") == "adapted_histogram"
    assert not METHODS.info("baseline").zero_shot
    assert all(METHODS.info(n).zero_shot for n in expected - {"baseline"})


@pytest.mark.parametrize("name", METHODS.names())
def test_registry_metadata(name: str) -> None:
    info = METHODS.info(name)
    assert info.family in FAMILIES and info.description
    if info.params is not None:
        params = info.params()
        assert dataclasses.is_dataclass(params)
        with pytest.raises(dataclasses.FrozenInstanceError):
            params.lr = 1.0  # type: ignore[misc]
        params.validate()
    assert info.addons == info.trains  # every trained built-in method is an EmbeddingMethod
    assert name.startswith("adapted_") == (info.family == "adapted")
    assert info.uses_support == (info.family in ("adapted", "transfer", "baseline"))


def test_resolve_methods_patterns_aliases_addons() -> None:
    assert resolve_methods("margin, adapted_hist ,margin") == ["margin", "adapted_histogram"]
    assert resolve_methods(["adapted_hist+sec"]) == ["adapted_histogram+sec"]
    adapted = resolve_methods("adapted_*")
    assert len(adapted) == 9 and adapted == sorted(adapted)
    assert resolve_methods("adapted_*+sec") == [f"{n}+sec" for n in adapted]
    assert resolve_methods("proto*+dmml") == ["protonet+dmml"]
    assert resolve_methods("margin+sec+dmml") == ["margin+sec+dmml"]


@pytest.mark.parametrize("bad, words", [
    ("margn", ["margin"]),
    ("nothing_*", ["matches no method"]),
    ("margin+secc", ["+sec", "add-on"]),
    ("margin+sec+sec", ["repeats"]),
    ("pretrained+sec", ["takes no add-on"]),
    ("margin,,triplet", ["empty"]),
])
def test_resolve_methods_errors_say_how_to_fix(bad: str, words: list[str]) -> None:
    with pytest.raises(OodmlError) as e:
        resolve_methods(bad)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words)


def test_method_family() -> None:
    assert method_family("margin+dmml") == "dml"
    assert method_family("adapted_hist+sec") == "adapted"
    assert method_family("protonet") == "fewshot"
    assert method_family("weight_transfer") == "transfer"
    assert method_family("pretrained") == "reference"


def test_method_params_defaults_and_overrides() -> None:
    d = method_params("triplet")
    assert d["margin"] == 0.2 and d["lr"] == 1e-3 and d["embed_dim"] == 128 and d["adapt_scope"] == "last"
    assert method_params("pretrained") == {}
    ov = {"margin": 0.3, "triplet.margin": 0.5, "iterations": 7, "sec_eta": 0.25, "lr": 1}
    assert method_params("triplet", ov)["margin"] == 0.5  # method.name wins over name
    assert method_params("margin", ov)["margin"] == 0.3
    assert "margin" not in method_params("multisimilarity", ov)  # fields the method lacks are ignored
    assert "sec_eta" not in method_params("triplet", ov)
    sec = method_params("triplet+sec", ov)
    assert sec["sec_eta"] == 0.25 and sec["iterations"] == 7 and sec["lr"] == 1.0 and isinstance(sec["lr"], float)
    assert method_params("adapted_histogram", {"adapted_hist.n_bins": 10})["n_bins"] == 10
    assert method_params("margin+dmml", {"dmml_update_every": [1, 3]})["dmml_update_every"] == [1, 3]
    assert method_params("margin+dmml", {"margin+dmml.dmml_models": 4})["dmml_models"] == 4
    json.dumps(method_params("margin+sec+dmml"))  # JSON-able


@pytest.mark.parametrize("overrides, words", [
    ({"nonsense": 1}, ["no method has", "nonsense"]),
    ({"triplet.nonsense": 1}, ["triplet", "nonsense", "its fields"]),
    ({"margn.margin": 1}, ["unknown method", "margin"]),
    ({"iterations": 2.5}, ["iterations=2.5"]),
    ({"normalize": "yes"}, ["normalize"]),
    ({"head": "conv"}, ["head", "linear, mlp"]),
    ({"adapt_scope": "everything"}, ["adapt_scope", "last, all"]),
    ({"lr": 0}, ["lr must be > 0"]),
    ({"mining": "hardest"}, ["mining"]),
])
def test_bad_overrides_are_user_errors(overrides: dict, words: list[str]) -> None:
    with pytest.raises(OodmlError) as e:
        method_params("triplet", overrides)
    assert all(w in str(e.value) for w in words)


def test_dmml_params_validated() -> None:
    with pytest.raises(OodmlError, match="dmml_models"):
        method_params("margin+dmml", {"dmml_models": 1})
    with pytest.raises(OodmlError, match="dmml_update_every"):
        method_params("margin+dmml", {"dmml_update_every": [0]})


def test_validate_overrides_for_a_run() -> None:
    validate_overrides(["margin", "pretrained"], {"margin": 0.1})
    with pytest.raises(OodmlError, match="applies to none"):
        validate_overrides(["pretrained", "protonet"], {"margin": 0.1})


def test_build_method_applies_params_and_addons() -> None:
    m = build_method("adapted_hist+sec+dmml", MethodContext(in_dim=4), {"n_bins": 20, "sec_eta": 0.5})
    assert isinstance(m, EmbeddingMethod)
    assert m.info.name == "adapted_histogram" and m.spec == "adapted_histogram+sec+dmml"
    assert m.params.n_bins == 20  # type: ignore[attr-defined]
    sec, mutual = m.regularizers  # regularizers apply before cohorts
    assert isinstance(sec, SecTerm) and sec.eta == 0.5
    assert isinstance(mutual, MutualTerm) and isinstance(m.cohort, MutualCohort) and m.n_models == 3


def test_load_plugins_unknown_module() -> None:
    load_plugins()  # entry points: idempotent
    with pytest.raises(OodmlError, match="not found"):
        load_plugins(["no_such_oodml_plugin_module"])
