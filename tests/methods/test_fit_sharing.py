"""`fits_as`: `adapted_X` fits the very model `X` fits, so the fit cache keeps one entry for both; every built-in
pair is checked bit for bit, and anything the fit reads keeps the identities apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from oodml.config import build_run_cfg
from oodml.methods import METHODS, MethodContext, build_method, fit_identity, make_inputs, method_params
from oodml.runner import plan_grid
from oodml.runner.cell import CellTask, execute
from tests.conftest import make_blobs
from tests.methods.test_contract import TINY, _same_state
from tests.runner.fakes import build_split

pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")

PAIRS = sorted((info.name, info.fits_as) for info in (METHODS.info(n) for n in METHODS.names()) if info.fits_as)


def test_every_adapted_method_names_its_twin() -> None:
    from oodml.methods.dml import DML_LOSSES

    builtin = {f"adapted_{loss.name}" for loss in DML_LOSSES} | {"adapted_proto"}
    assert builtin <= {a for a, _ in PAIRS}
    assert ("adapted_proto", "protonet") in PAIRS and ("adapted_histogram", "histogram") in PAIRS


@pytest.mark.parametrize("adapted, twin", PAIRS + [("adapted_margin+sec", "margin+sec"),
                                                   ("adapted_multisimilarity+dmml", "multisimilarity+dmml")])
def test_the_twins_fit_the_same_model(adapted: str, twin: str) -> None:
    fs = make_blobs(n_classes=8, per_class=6, dim=8, seed=5, spread=1.0)
    src = np.flatnonzero(fs.labels < 6)
    states = []
    for spec in (adapted, twin):
        m = build_method(spec, MethodContext(seed=7, in_dim=8), TINY)
        m.fit(make_inputs("head", features=fs, rows=src), fs.labels[src])
        states.append(m.state_dict())
    assert _same_state(*states), f"{adapted} no longer fits the model {twin} fits: drop its fits_as or fix the fit"
    assert identity(adapted, TINY) == identity(twin, TINY)


def identity(spec: str, overrides: dict) -> dict:
    return fit_identity(spec, method_params(spec, overrides))


def test_what_the_fit_reads_keeps_identities_apart() -> None:
    base = identity("adapted_margin", {})
    assert identity("margin", {"adapt_lr": 0.5, "adapt_iterations": 3}) == base  # adaptation only
    assert identity("adapted_margin", {"lr": 0.5}) != base
    assert identity("margin+sec", {}) != identity("margin", {})
    assert identity("triplet", {}) != identity("margin", {})
    assert identity("weight_transfer", {})["method"] == "weight_transfer"


def test_a_cell_reuses_its_twins_fit(tmp_path: Path) -> None:
    fs = make_blobs(n_classes=12, per_class=10, dim=6, seed=3, spread=2.0)
    f = fs.save(tmp_path / "feats.npz")
    from oodml.features.io import FeatureSet

    s = build_split(FeatureSet.load(f), levels=1, ks=(2,), episodes=2).save(tmp_path / "splits.json")
    cfg = build_run_cfg(dict(method="margin,adapted_margin", features=str(f), splits=str(s), shifts="1", k="0,2",
                             seeds="0", results=str(tmp_path / "r"), workers=1, method_params=["iterations=5"]))
    plan = plan_grid(cfg)
    plain, adapted = plan.cells
    assert plain.cell_id != adapted.cell_id and plain.fit_id == adapted.fit_id
    assert plain.fit_id.startswith("margin_L1_s0_")
    fits = tmp_path / "fits"
    out = [execute(CellTask(cell=c, level=plan.levels[1], overrides=dict(cfg.method_params), fit_cache=str(fits)),
                   plan.features) for c in plan.cells]
    assert [r.status for r in out] == ["ok", "ok"], [r.error for r in out]
    assert [r.fit_cached for r in out] == [False, True] and len(list(fits.glob("*.pt"))) == 1
    # the shared fit gives the adapted method's zero-shot rows exactly as its own fit would
    fresh = execute(CellTask(cell=adapted, level=plan.levels[1], overrides=dict(cfg.method_params)), plan.features)
    assert fresh.metrics == out[1].metrics and not fresh.fit_cached


def test_a_method_param_of_x_reaches_adapted_x() -> None:
    from oodml.methods import method_params

    over = {"margin.lr": 0.005}
    assert method_params("adapted_margin", over)["lr"] == 0.005 == method_params("margin", over)["lr"]
    assert method_params("adapted_margin", {**over, "adapted_margin.lr": 0.002})["lr"] == 0.002
    assert method_params("adapted_margin+sec", {"margin+sec.lr": 0.004})["lr"] == 0.004
    assert method_params("adapted_margin", {"multisimilarity.lr": 0.004})["lr"] != 0.004
