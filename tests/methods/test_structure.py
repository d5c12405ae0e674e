"""The methods room's shape: the training loop lives apart from the model, add-ons plug in through hooks, and no
class overrides a private (`_x`) method of a class it inherits from."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import oodml.methods
from oodml.features.io import FeatureSet
from oodml.methods import ADDONS, AddonInfo, EmbeddingMethod, Method, MethodContext, build_method, make_inputs
from oodml.methods.hooks import Outputs, Regularizer
from oodml.registry import Entry

METHODS_DIR = Path(oodml.methods.__file__).parent


def private_overrides(cls: type) -> list[str]:
    """`Class._name` for every private method `cls` defines that a base class already defines."""
    out = []
    for name, value in vars(cls).items():
        if not (name.startswith("_") and not name.startswith("__")) or not callable(value):
            continue
        owners = [base.__qualname__ for base in cls.__mro__[1:] if name in vars(base)]
        if owners:
            out.append(f"{cls.__module__}.{cls.__qualname__}.{name} overrides {owners[0]}.{name}")
    return out


def methods_classes() -> list[type]:
    """Every class defined in a module of `oodml.methods`."""
    classes = []
    for info in pkgutil.iter_modules([str(METHODS_DIR)]):
        module = importlib.import_module(f"oodml.methods.{info.name}")
        classes += [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
    return classes


def test_the_check_sees_a_private_override() -> None:
    class Base:
        def _hook(self) -> int:
            return 1

        def public(self) -> int:
            return 2

    class Child(Base):
        def _hook(self) -> int:
            return 3

        def public(self) -> int:
            return 4

    assert [s.rsplit(" ", 1)[-1] for s in private_overrides(Child)] == ["test_the_check_sees_a_private_override."
                                                                        "<locals>.Base._hook"]
    assert private_overrides(Base) == []


def test_no_class_in_methods_overrides_a_private_method() -> None:
    classes = methods_classes()
    assert any(c.__name__ == "ProtoMethod" for c in classes)  # the scan sees the method classes
    bad = [s for c in classes for s in private_overrides(c)]
    assert not bad, bad


def _function_lengths(path: Path) -> dict[str, int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name: (node.end_lineno or node.lineno) - node.lineno + 1 for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_methods_modules_and_functions_stay_small() -> None:
    for path in sorted(METHODS_DIR.glob("*.py")):
        assert len(path.read_text(encoding="utf-8").splitlines()) <= 450, path.name
        long = {n: size for n, size in _function_lengths(path).items() if size > 60}
        assert not long, (path.name, long)


def names_used(path: Path) -> set[str]:
    """Every identifier and attribute name the module's code uses."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return ({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
            | {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)})


def test_the_training_loop_and_model_name_no_addon() -> None:
    """Add-ons reach the loop through hooks (`oodml.methods.hooks`), never as branches on their names."""
    addons = set(oodml.methods.ADDONS.names())
    assert addons >= {"sec", "dmml", "ens"}
    assert "sec" in {w for n in names_used(METHODS_DIR / "addons.py") for w in n.lower().split("_")}
    for module in ("trainer", "embedding", "hooks"):
        words = {w for n in names_used(METHODS_DIR / f"{module}.py") for w in n.lower().split("_")}
        assert not words & addons, (module, words & addons)


@dataclass(frozen=True)
class PullParams:
    """Hyperparameters of the test add-on."""

    pull_weight: float = 5.0


class Pull(Regularizer):
    """Pulls raw embeddings to the origin; counts its calls."""

    def __init__(self, weight: float) -> None:
        self.weight, self.calls = weight, 0

    def term(self, m: int, outs: Sequence[Outputs]) -> torch.Tensor | None:
        self.calls += 1
        return self.weight * outs[m][0].pow(2).mean()


def test_a_registered_regularizer_addon_reaches_the_loop(monkeypatch: pytest.MonkeyPatch, blobs: FeatureSet) -> None:
    """A new add-on is one registry entry: the loop calls its term for every model at every iteration."""
    seen: list[Pull] = []

    def factory(method: Method, params: PullParams) -> Method:
        assert isinstance(method, EmbeddingMethod)
        seen.append(Pull(params.pull_weight))
        method.add_regularizer(seen[-1])
        return method

    monkeypatch.setitem(ADDONS._entries, "pull", Entry(AddonInfo("pull", "regularizer", PullParams, "test"), factory))
    tiny = {"iterations": 5, "batch_size": 12, "embed_dim": 4}
    x, y = make_inputs("head", features=blobs, rows=np.arange(len(blobs.labels))), blobs.labels
    ctx = MethodContext(in_dim=blobs.features.shape[1])
    plain = build_method("margin+dmml", ctx, tiny)
    pulled = build_method("margin+pull+dmml", ctx, {**tiny, "pull_weight": 50.0})
    plain.fit(x, y)
    pulled.fit(x, y)
    assert seen and seen[0].weight == 50.0 and seen[0].calls == 5 * 3  # 5 iterations x 3 cohort models
    assert not np.array_equal(plain.embed(x), pulled.embed(x))
