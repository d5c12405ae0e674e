"""Issue 16 items 3 (YAML bombs), 5 (wrong-typed config values) and 10 (run options that were ignored or hung):
each is one `error:` line naming the key or option, exit code 2, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

import oodml.runner
from oodml.config import RunCfg, build_run_cfg
from oodml.errors import OodmlError
from tests.security.helpers import one_error


@pytest.fixture
def no_grid(monkeypatch: pytest.MonkeyPatch) -> list[RunCfg]:
    """A run that got past validation would reach run_grid: record it instead of running anything."""
    seen: list[RunCfg] = []
    monkeypatch.setattr(oodml.runner, "run_grid", lambda cfg: seen.append(cfg) or 0)
    return seen


@pytest.mark.parametrize(("yaml_text", "key"), [
    ("method_params: 5", "method_params"),
    ("method_params: [5]", "method_params"),
    ("dataset_options: 5", "dataset_options"),
    ("workers: abc", "workers"),
    ("workers: 1.5", "workers"),
    ("splits: [a]", "splits"),
    ("results: ~", "results"),
    ("results: [a, b]", "results"),
    ("results: ''", "results"),
    ("force: 'yes please'", "force"),
    ("seeds: {a: 1}", "seeds"),
    ("dataset: ../../../../tmp/x", "dataset"),
    ("method: [margin, 5]", "method"),
    ("max_cells: 1.0e9", "max_cells"),
])
def test_wrong_typed_config_value_names_its_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                no_grid: list[RunCfg], yaml_text: str, key: str) -> None:
    study = tmp_path / "s.yaml"
    study.write_text(f"method: margin\n{yaml_text}\n")
    line = one_error(capsys, ["run", "--config", str(study)])
    assert f"'{key}'" in line
    assert not no_grid and not (tmp_path / "None").exists()


def test_method_params_as_one_string_is_one_override(tmp_path: Path) -> None:
    # `method_params: "lr=0.1"` was a ValueError traceback; a string is read like one --method-param item
    study = tmp_path / "s.yaml"
    study.write_text("method: margin\nmethod_params: lr=0.1\n")
    assert build_run_cfg({}, study).method_params == {"lr": 0.1}


def test_empty_results_option_is_refused(capsys: pytest.CaptureFixture[str], no_grid: list[RunCfg]) -> None:
    # `--results ""` used to write into the current folder (the repository)
    assert "--results" in one_error(capsys, ["run", "--method", "margin", "--results", ""])
    assert not no_grid


def _alias_bomb(n: int = 9) -> str:
    """9 anchors under `method_params`, each a list of 9 aliases of the one before: `method: *i` is 9^9 =
    387,420,489 names once expanded (the issue's case: MemoryError)."""
    lines = ["method_params:", "  a: &a [" + ",".join(["x"] * n) + "]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"  {name}: &{name} [" + ",".join([f"*{prev}"] * n) + "]")
    return "\n".join(lines) + "\nmethod: *i\n"


@pytest.mark.parametrize("bomb", [_alias_bomb(), "method: margin\nmethod_params: " + "[" * 5000 + "]" * 5000 + "\n"])
def test_yaml_bombs_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_grid: list[RunCfg],
                                bomb: str) -> None:
    study = tmp_path / "bomb.yaml"
    study.write_text(bomb)
    with pytest.raises(OodmlError, match="expands to more than|nests deeper|cannot be read"):
        build_run_cfg({}, study)
    assert "bomb.yaml" in one_error(capsys, ["run", "--config", str(study)])
    assert not no_grid


def test_huge_seed_range_says_how_many_and_is_refused(capsys: pytest.CaptureFixture[str],
                                                       no_grid: list[RunCfg]) -> None:
    line = one_error(capsys, ["run", "--method", "margin", "--seeds", "0..100000000"])
    assert "100,000,001" in line and "--max-cells" in line
    line = one_error(capsys, ["run", "--method", "margin,protonet", "--shifts", "1..8", "--seeds", "0..999"])
    assert "16,000" in line and "--max-cells 16000" in line
    assert not no_grid


def test_max_cells_confirms_a_big_grid(no_grid: list[RunCfg]) -> None:
    cfg = build_run_cfg({"method": "margin", "shifts": "1..2", "seeds": "0..5999", "max_cells": 12_000})
    assert len(cfg.seeds) == 6000 and cfg.max_cells == 12_000
    # an operational limit: it never enters the config hash or a result row
    assert "max_cells" not in cfg.to_dict() and cfg.to_dict() == build_run_cfg(
        {"method": "margin", "shifts": "1..2", "seeds": "0..5999", "max_cells": 99_999}).to_dict()


def test_planned_grid_over_the_cap_is_refused_before_any_cell(tmp_path: Path) -> None:
    from oodml.runner import run_grid
    from tests.runner.fakes import fake_methods, write_inputs

    feats, splits = write_inputs(tmp_path, levels=3)
    cfg = build_run_cfg(dict(method="fake_proj", features=str(feats), splits=str(splits), k="0", seeds="0..3",
                             results=str(tmp_path / "r"), workers=1, max_cells=10))
    with fake_methods(), pytest.raises(OodmlError, match="12 cells, more than --max-cells 10"):
        run_grid(cfg)  # 3 levels ('all') x 4 seeds: only known once the split file is read
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_usage_error(capsys: pytest.CaptureFixture[str], no_grid: list[RunCfg]) -> None:
    assert "--device cuda" in one_error(capsys, ["run", "--method", "margin", "--device", "cuda"])
    assert "--device cuda:1" in one_error(capsys, ["run", "--method", "margin", "--device", "cuda:1"])
    assert "not auto, cpu" in one_error(capsys, ["run", "--method", "margin", "--device", "gpu"])
    assert not no_grid


def test_address_needs_the_ray_executor(capsys: pytest.CaptureFixture[str], no_grid: list[RunCfg]) -> None:
    line = one_error(capsys, ["run", "--method", "margin", "--address", "10.0.0.1:6379"])
    assert "--executor ray" in line
    assert build_run_cfg({"method": "margin", "address": "h:1", "executor": "ray"}).address == "h:1"


def test_method_param_for_a_method_not_run(capsys: pytest.CaptureFixture[str], no_grid: list[RunCfg],
                                           tmp_path: Path) -> None:
    line = one_error(capsys, ["run", "--method", "margin", "--method-param", "protonet.lr=0.1"])
    assert "'protonet'" in line and "does not run" in line
    # the same value for a method that runs is fine; a config's values for methods a --method subset drops are too
    assert build_run_cfg({"method": "protonet", "method_params": {"protonet.lr": 0.1}}).method_params
    study = tmp_path / "s.yaml"
    study.write_text("method: [margin, protonet]\nmethod_params:\n  protonet.lr: 0.1\n")
    assert build_run_cfg({"method": "margin", "method_params": {}}, study).method_params == {}


def test_unknown_executor_lists_the_registered_ones(tmp_path: Path) -> None:
    from oodml.runner import run_grid

    with pytest.raises(OodmlError, match="unknown executor 'rya' \\(did you mean ray"):
        run_grid(build_run_cfg({"method": "margin", "executor": "rya", "results": str(tmp_path / "r")}))
    assert not (tmp_path / "r").exists()


def test_wrong_hyperparameter_type_message(capsys: pytest.CaptureFixture[str]) -> None:
    from oodml.methods import resolve_params

    with pytest.raises(OodmlError, match=r"lr='abc' is not a valid number \(--method-param lr=VALUE\)$"):
        resolve_params("margin", {"lr": "abc"})
    with pytest.raises(OodmlError, match="iterations=1.5 is not a valid integer"):
        resolve_params("margin", {"iterations": 1.5})


def test_dataset_option_types_follow_the_loader(tmp_path: Path) -> None:
    from oodml.data import load_dataset

    with pytest.raises(OodmlError, match="rotations='no' must be a bool"):
        load_dataset("omniglot_small", tmp_path, rotations="no")
