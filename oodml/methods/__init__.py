"""Every benchmark method in one registry (`METHODS`), add-ons, hyperparameters and plugins.

Importing this package registers the built-in methods; `load_plugins` adds methods from other packages (entry-point
group `oodml.methods`, or the module names and `.py` files given with `--plugin`; docs/plugins.md).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, cast

from oodml.errors import OodmlError
from oodml.methods import dml, proto, transfer  # noqa: F401  (registers the built-in methods)
from oodml.methods.addons import ADDONS, AddonInfo, apply_addons, canonical_spec, parse_spec
from oodml.methods.base import (METHODS, FeatureInputs, Inputs, Method, MethodContext, MethodInfo)
from oodml.methods.dml import register_dml_loss
from oodml.methods.nets import ImageInputs, make_inputs
from oodml.methods.params import build_params, field_names, to_jsonable
from oodml.methods.embedding import EmbeddingMethod

__all__ = [
    "ADDONS", "AddonInfo", "EmbeddingMethod", "FeatureInputs", "ImageInputs", "Inputs", "METHODS", "Method",
    "MethodContext", "MethodInfo", "build_method", "canonical_spec", "fit_identity", "load_plugins", "make_inputs",
    "method_family",
    "applicable_params", "method_params", "parse_spec", "register_dml_loss", "resolve_methods", "resolve_params",
    "validate_overrides",
]

ENTRY_POINT_GROUP = "oodml.methods"
_entry_points_loaded = False


def load_plugins(plugins: Sequence[str] = ()) -> None:
    """Import methods from other packages: every `oodml.methods` entry point (once), then the named modules.

    Raises OodmlError when a plugin can't be imported.
    """
    global _entry_points_loaded
    if not _entry_points_loaded:
        _entry_points_loaded = True
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            try:
                ep.load()
            except Exception as e:  # a broken plugin is a user problem, reported in one line
                raise OodmlError(f"method plugin {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: "
                                 f"{e}; fix or uninstall that package") from None
    for name in plugins:
        if is_plugin_file(name):
            _import_file(Path(name))
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            raise OodmlError(f"plugin module {name!r} not found ({e}); pass a .py file path (--plugin "
                             "path/to/my_methods.py) or a module that is installed or on PYTHONPATH") from None


def is_plugin_file(name: str) -> bool:
    """Whether a `--plugin` value names a Python file (ends in `.py`) rather than a module."""
    return name.endswith(".py")


#: resolved path of each plugin file imported in this process -> its module name
_plugin_files: dict[str, str] = {}


def _import_file(path: Path) -> None:
    """Import the file `path` once per process, as module `oodml_plugin_<stem>_<path hash>` (so two files with one
    name never collide); its errors are reported in one line."""
    if not path.is_file():
        raise OodmlError(f"plugin file {str(path)!r} does not exist; pass the path of a .py file that registers "
                         "methods (docs/plugins.md)")
    key = str(path.resolve())
    if key in _plugin_files:
        return
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    module = f"oodml_plugin_{stem}_{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    spec = importlib.util.spec_from_file_location(module, path)
    if spec is None or spec.loader is None:
        raise OodmlError(f"plugin file {str(path)!r} cannot be imported as Python")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # the plugin's own error, reported in one line
        del sys.modules[module]
        raise OodmlError(f"plugin file {str(path)!r} failed to load: {type(e).__name__}: {e}") from None
    _plugin_files[key] = module


#: appended to an unknown method's error
PLUGIN_HINT = "a method of your own: --plugin my_methods.py (docs/plugins.md)"


def resolve_methods(patterns: str | Sequence[str]) -> list[str]:
    """Expand names, aliases and fnmatch patterns (each optionally with `+sec`/`+dmml`) into canonical specs.

    `'adapted_*+sec'` gives every adapted method that takes add-ons, with `+sec`. Order is kept, repeats dropped.
    Raises OodmlError (with the closest names) for unknown names and patterns that match nothing.
    """
    load_plugins()
    items = patterns.split(",") if isinstance(patterns, str) else list(patterns)
    out: list[str] = []
    for raw in items:
        item = raw.strip()
        if not item:
            raise OodmlError(f"empty method name in {patterns!r}; separate names with single commas")
        base, _, rest = item.partition("+")
        suffix = f"+{rest}" if rest else ""
        if any(c in base for c in "*?["):
            names = cast("list[str]", _with_hint(METHODS.match, [base]))
            if suffix:
                names = [n for n in names if METHODS.info(n).addons]
                if not names:
                    raise OodmlError(f"pattern {base!r} matches no method that takes add-ons ({item!r})")
            specs = [canonical_spec(n + suffix) for n in names]
        else:
            specs = [_with_hint(canonical_spec, item)]
        out += [s for s in specs if s not in out]
    return out


def _with_hint(fn: Any, arg: Any) -> Any:
    """`fn(arg)`, an unknown method's error extended with PLUGIN_HINT."""
    try:
        return fn(arg)
    except OodmlError as e:
        if not str(e).startswith(("unknown method", "pattern")) or PLUGIN_HINT in str(e):
            raise
        raise OodmlError(f"{e}; {PLUGIN_HINT}") from None


def method_family(spec: str) -> str:
    """The family of a method spec (add-ons don't change it)."""
    return METHODS.info(parse_spec(spec)[0]).family


def _spec_fields(spec: str) -> set[str]:
    """Hyperparameter names of a method spec (its method's and its add-ons')."""
    name, addons = parse_spec(spec)
    return field_names(METHODS.info(name).params).union(*(field_names(ADDONS.info(a).params) for a in addons))


def _all_fields() -> set[str]:
    names: set[str] = set()
    for n in METHODS.names():
        names |= field_names(METHODS.info(n).params)
    for a in ADDONS.names():
        names |= field_names(ADDONS.info(a).params)
    return names


def _targets(key: str) -> str:
    """The method part of a `method.name` override key, validated."""
    target = key.rsplit(".", 1)[0]
    if "+" in target:
        return canonical_spec(target)
    return METHODS.resolve(target)


def resolve_params(spec: str, overrides: Mapping[str, Any] = {}) -> tuple[Any, dict[str, Any]]:
    """(method params dataclass or None, {add-on: params}) for `spec` with overrides applied and validated.

    Overrides: `name=value` applies to every method having the field `name` (an error if no method or add-on has
    it); `method.name=value` applies to that method (name, alias or full spec) and to the methods that fit as it
    (`adapted_X` for `X.name=value`), and wins over `name=value`; `adapted_X.name=value` wins over `X.name=value`.
    """
    name, addons = parse_spec(spec)
    canonical = "+".join((name, *addons))
    classes: dict[str, type] = {}
    info = METHODS.info(name)
    if info.params is not None:
        classes[""] = info.params
    for a in addons:
        classes[a] = ADDONS.info(a).params
    known = set().union(*(field_names(c) for c in classes.values())) if classes else set()
    bare: dict[str, Any] = {}
    inherited: dict[str, Any] = {}  # `X.name=value` reaches `adapted_X` (it fits as X); its own `adapted_X.name` wins
    specific: dict[str, Any] = {}
    fits = tuple(f for f in (info.fits_as, "+".join((info.fits_as, *addons)) if info.fits_as else None) if f)
    for key, value in overrides.items():
        if "." in key:
            target, field = _targets(key), key.rsplit(".", 1)[1]
            if target not in (name, canonical, *fits):
                continue
            if field not in known:
                if target in fits:
                    continue  # a field of X that adapted_X lacks
                fields = ", ".join(sorted(known)) or "none"
                raise OodmlError(f"method {canonical!r} has no hyperparameter {field!r} (--method-param {key}); "
                                 f"its fields: {fields}")
            (inherited if target in fits else specific)[field] = value
        elif key in known:
            bare[key] = value
        elif key not in _all_fields():
            raise OodmlError(f"no method has a hyperparameter {key!r} (--method-param {key}=...); "
                             f"`oodml list methods` shows the methods, their fields are in docs/plugins.md")
    values = {**bare, **inherited, **specific}
    built = {k: build_params(c, {f: v for f, v in values.items() if f in field_names(c)}, what=canonical)
             for k, c in classes.items()}
    return built.pop("", None), built


def method_params(spec: str, overrides: Mapping[str, Any] = {}) -> dict[str, Any]:
    """The resolved, JSON-able hyperparameters of `spec` (method fields, then add-on fields)."""
    params, addons = resolve_params(spec, overrides)
    out = to_jsonable(params)
    for p in addons.values():
        out.update(to_jsonable(p))
    return out


#: hyperparameters named so are read only when adapting to a support, never by the source fit
ADAPT_PREFIX = "adapt_"


def fit_identity(spec: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """What the source fit of `spec` depends on besides the data and the seed: the method it fits as (`fits_as`:
    `adapted_X` fits as `X`) with its add-ons, and every hyperparameter of `params` (its resolved ones,
    `method_params(spec, overrides)`) but the `adapt_*` ones, which only adaptation reads. Two specs with equal
    identities fit the same model, so the fit cache keeps one entry for both.
    """
    name, addons = parse_spec(spec)
    info = METHODS.info(name)
    return {"method": "+".join((info.fits_as or name, *addons)),
            "params": {k: v for k, v in params.items() if not k.startswith(ADAPT_PREFIX)}}


def applicable_params(specs: Sequence[str], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides that apply to at least one of `specs` (bare names by field, `method.name` by method).

    A study config's `method_params` are written for the config's methods; when the command line picks a subset of
    methods (`--config study.yaml --method baseline`), the config's values for the other methods are dropped rather
    than rejected. Unknown names are kept, so that `validate_overrides` still reports them.
    """
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if "." in key:
            target = _targets(key)
            keep = any(target in (parse_spec(s)[0], canonical_spec(s), *_fits_names(s)) for s in specs)
        else:
            keep = key not in _all_fields() or any(key in _spec_fields(s) for s in specs)
        if keep:
            out[key] = value
    return out


def _fits_names(spec: str) -> tuple[str, ...]:
    """The method a spec fits as, alone and with the spec's add-ons (empty when it fits as itself)."""
    name, addons = parse_spec(spec)
    fits = METHODS.info(name).fits_as
    return (fits, "+".join((fits, *addons))) if fits else ()


def validate_overrides(specs: Sequence[str], overrides: Mapping[str, Any]) -> None:
    """Check overrides against a whole run: every `name=value` must apply to at least one of `specs`."""
    for s in specs:
        resolve_params(s, overrides)
    for key in overrides:
        if "." in key:
            continue
        if not any(key in _spec_fields(s) for s in specs):
            raise OodmlError(f"--method-param {key}=... applies to none of the methods {', '.join(specs)}")


def build_method(spec: str, ctx: MethodContext, overrides: Mapping[str, Any] = {}) -> Method:
    """Build the method `spec` (name, alias or `name+addon...`) with resolved hyperparameters.

    Args:
        spec: method spec.
        ctx: regime, feature dim, backbone, device and seed.
        overrides: `--method-param` values (see `resolve_params`).
    """
    name, addons = parse_spec(spec)
    params, addon_params = resolve_params(spec, overrides)
    entry = METHODS.get(name)
    method = entry.factory(entry.info, ctx, params)
    return apply_addons(method, {a: addon_params[a] for a in addons}, "+".join((name, *addons)))

