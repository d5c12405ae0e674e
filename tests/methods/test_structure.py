"""The methods room's shape: the training loop lives apart from the model, add-ons plug in through hooks, and no
class overrides a private (`_x`) method of a class it inherits from."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import oodml.methods

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
