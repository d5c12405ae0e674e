"""`plan_grid`: resolve the methods, load the inputs (`runner.inputs`), then plan the cells (`runner.plan`).

Methods are resolved first, so a misspelt name fails before any features are loaded or computed.
The other names here are aliases of their homes (`runner.plan`, `runner.inputs`, `splits.levels`).
"""

from __future__ import annotations

from oodml.config import RunCfg
from oodml.runner.inputs import DEFAULT_DATASET, FEATURE_FID_TOLERANCE, check_full_regime, load_inputs
from oodml.runner.plan import OPERATIONAL_FIELDS, Cell, Plan, build_plan, describe, resolve_device, resolve_methods
from oodml.splits.levels import ImageIndex, LevelData, resolve_level

__all__ = ["DEFAULT_DATASET", "FEATURE_FID_TOLERANCE", "OPERATIONAL_FIELDS", "Cell", "ImageIndex", "LevelData", "Plan",
           "describe", "plan_grid", "resolve_device", "resolve_level"]


def plan_grid(cfg: RunCfg) -> Plan:
    """Validate `cfg` and expand it into cells; raises OodmlError (exit 2) on bad input, writes nothing."""
    methods = resolve_methods(cfg)
    if cfg.executor == "ray":
        from oodml.compat import import_ray

        import_ray()
    inputs = load_inputs(cfg)
    plan = build_plan(cfg, methods, inputs.spec, inputs.splits_path, inputs.features, inputs.features_path,
                      resolve_device(cfg.device))
    if cfg.regime == "full":
        check_full_regime(cfg, inputs.spec, inputs.features)
    return plan
