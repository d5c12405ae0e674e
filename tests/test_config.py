from pathlib import Path

import pytest

from oodml.config import RunCfg, build_run_cfg, cfg_hash, parse_param_overrides
from oodml.errors import OodmlError


def test_cli_overrides_yaml(tmp_path: Path) -> None:
    cfg_file = tmp_path / "study.yaml"
    cfg_file.write_text("method: [margin, protonet]\nshifts: 1..4\nk: [0, 2]\nseeds: 0..1\nresults: out\n")
    cfg = build_run_cfg({"shifts": "2", "method": None, "method_params": {}}, cfg_file)
    assert cfg.methods == ("margin", "protonet")
    assert cfg.shifts == (2,)
    assert cfg.ks == (0, 2) and cfg.seeds == (0, 1) and cfg.results == "out"


def test_defaults_and_validation() -> None:
    cfg = build_run_cfg({"method": "pretrained"})
    assert cfg.shifts is None and cfg.ks == (0, 2, 5, 10) and cfg.seeds == (0, 1, 2)
    with pytest.raises(OodmlError, match="no method"):
        build_run_cfg({})
    with pytest.raises(OodmlError, match="regime"):
        build_run_cfg({"method": "a", "regime": "half"})
    with pytest.raises(OodmlError, match="--k"):
        build_run_cfg({"method": "a", "k": "-1"})


def test_yaml_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("methd: margin\n")
    with pytest.raises(OodmlError, match="unknown keys"):
        build_run_cfg({}, bad)
    with pytest.raises(OodmlError, match="does not exist"):
        build_run_cfg({}, tmp_path / "nope.yaml")


def test_hash_and_row_are_stable() -> None:
    a = RunCfg(methods=("margin",), method_params={"margin": 0.2})
    b = RunCfg(methods=("margin",), method_params={"margin": 0.2})
    assert cfg_hash(a) == cfg_hash(b) != cfg_hash(RunCfg(methods=("margin",)))
    row = a.to_row()
    assert row["methods"] == "margin" and row["method_params.margin"] == 0.2


def test_param_overrides_parse_yaml_scalars() -> None:
    assert parse_param_overrides(["margin=0.2", "triplet.lr=1e-4", "mlp=true"]) == {
        "margin": 0.2, "triplet.lr": 1e-4, "mlp": True}
    with pytest.raises(OodmlError):
        parse_param_overrides(["margin"])


def test_dataset_options_from_yaml_or_cli(tmp_path: Path) -> None:
    cfg_file = tmp_path / "study.yaml"
    cfg_file.write_text("method: pretrained\ndataset_options:\n  rotations: true\n")
    assert build_run_cfg({}, cfg_file).dataset_options == {"rotations": True}
    assert build_run_cfg({"method": "pretrained"}).dataset_options == {}
    cli = build_run_cfg({"dataset_options": ["rotations=false"]}, cfg_file)
    assert cli.dataset_options == {"rotations": False}
    assert cli.to_row()["dataset_options.rotations"] is False
    with pytest.raises(OodmlError, match="--dataset-option 'rotations' is not NAME=VALUE"):
        build_run_cfg({"method": "pretrained", "dataset_options": ["rotations"]})


def test_backbone_option_reaches_the_config(tmp_path: Path) -> None:
    cfg_file = tmp_path / "study.yaml"
    cfg_file.write_text("method: protonet\nregime: full\nbackbone: conv4\n")
    assert build_run_cfg({}, cfg_file).backbone == "conv4"
    assert build_run_cfg({"method": "protonet"}).backbone is None


def test_cli_method_params_and_dataset_options_merge_into_the_config(tmp_path: Path) -> None:
    # `oodml run --config study.yaml --method-param adapt_lr=...` changes that value only: the config's other
    # hyperparameters stay (they were silently dropped before)
    cfg_file = tmp_path / "s.yaml"
    cfg_file.write_text("method: adapted_proto\nmethod_params:\n  head: mlp\n  adapt_lr: 0.001\n"
                        "dataset_options:\n  rotations: true\n")
    cfg = build_run_cfg({"method_params": {"adapt_lr": 1e-4, "adapted_proto.iterations": 5},
                         "dataset_options": ["other=1"]}, cfg_file)
    assert cfg.method_params == {"head": "mlp", "adapt_lr": 1e-4, "adapted_proto.iterations": 5}
    assert cfg.dataset_options == {"rotations": True, "other": 1}
    assert build_run_cfg({"method_params": {}}, cfg_file).method_params == {"head": "mlp", "adapt_lr": 0.001}


def test_cli_method_subset_drops_config_params_of_other_methods(tmp_path: Path) -> None:
    # `oodml run --config scott.yaml --method baseline` (one cell of a study): the config's `ways` is a protonet /
    # adapted-method field, written for the config's methods; it is dropped, not an error. A typo stays an error, and
    # so does a command-line value that applies to none of the chosen methods.
    from oodml.methods import validate_overrides

    cfg_file = tmp_path / "s.yaml"
    cfg_file.write_text("method: [baseline, protonet]\nmethod_params:\n  ways: 5\n  iterations: 7\n"
                        "  protonet.lr: 0.01\n")
    cfg = build_run_cfg({"method": "baseline", "method_params": {}}, cfg_file)
    assert cfg.methods == ("baseline",)
    assert cfg.method_params == {"iterations": 7}
    validate_overrides(["baseline"], cfg.method_params)
    assert build_run_cfg({}, cfg_file).method_params == {"ways": 5, "iterations": 7, "protonet.lr": 0.01}
    cli = build_run_cfg({"method": "baseline", "method_params": {"ways": 3}}, cfg_file)
    with pytest.raises(OodmlError, match="applies to none"):
        validate_overrides(["baseline"], cli.method_params)
    cfg_file.write_text("method: baseline\nmethod_params:\n  wyas: 5\n")
    with pytest.raises(OodmlError, match="no method has a hyperparameter 'wyas'"):
        validate_overrides(["baseline"], build_run_cfg({"method": "baseline"}, cfg_file).method_params)
