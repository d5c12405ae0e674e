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


#: cfg_hash of every study config shipped at e22bb68 (before RunCfg's fields became the one source of the keys and
#: defaults), computed there with `cfg_hash(build_run_cfg({}, path))`: valid configs must resolve exactly as before.
#: The ooDML studies' configs of that commit live on as `*_ownloss.yaml` (the same bodies; the plain names now run
#: ooDML's few-shot protocol, pinned in PROTOCOL_HASHES); the paper-scale oodml_{cars196,cub200,sop}.yaml changed to
#: that protocol too.
SHIPPED_HASHES = {
    "baselines/oodml_cub200_lite0_ownloss.yaml": "760b7d97bc84618a3f6842653f9f2ac8de9771b8",  # at 2082372
    "baselines/oodml_cub200_subset_ownloss.yaml": "50c86812e14c6169b8046a5e2a80d292cf701562",
    "baselines/oodml_omniglot_ownloss.yaml": "9f8dc89872db32a2d1d19b9cbae240e10ecc765a",
    "baselines/quickstart.yaml": "085cb513428604dfbd2ca7eadb01a8dcb08e33f7",
    "baselines/scott2018_mnist.yaml": "63fd34b1f0663af3bb94012805b790e5745fb56d",
    "baselines/scott2018_mnist_conv4.yaml": "3d0ada0c9103c4005808b2935a616239ccf14f01",
    "baselines/scott2018_mnist_plateau.yaml": "95c0945f55bd6e911963e6c630ae3edb6882fc5f",
    "baselines/scott2018_omniglot_20way.yaml": "b79f7b1135dddcd6850256ae1f523bc3575de326",
    "baselines/scott2018_omniglot_20way_conv4.yaml": "4c1597c0936677adad1d0fada4e85d31fe9a5693",
    "baselines/scott2018_omniglot_20way_plateau.yaml": "c30dc11833ea50518e2e57008b34acb51ba66ecf",
    "baselines/scott2018_omniglot_5way.yaml": "6582f19496ccd59b303a8759eaf26220c8737add",
    "baselines/scott2018_omniglot_5way_conv4.yaml": "9b48d89f63beec0b2303d3d102b55452317b1a7f",
    "baselines/scott2018_omniglot_5way_plateau.yaml": "5b7ef886f067a1188714ccee8669dcecfc16c304",
}


#: the configs that run ooDML's few-shot protocol (adapt_protocol: oodml), pinned when they switched to it;
#: oodml_cub200_subset.yaml re-pinned at d1a1e61, when it took ooDML's whole protocol (select: val, +ens; its
#: committed cells in results/oodml_cub200_subset_oodml are that config's), and oodml_omniglot_select.yaml when added
PROTOCOL_HASHES = {
    "baselines/oodml_cars196.yaml": "d8852bcf2cd5e91f3c617c19b9416b592c25aefa",
    "baselines/oodml_cub200.yaml": "fe9b166397c6bfb274e1aae70d75d72ae3abd18c",
    "baselines/oodml_cub200_decisive.yaml": "ad1e9f1e9cfe1e838a3f5ff740b46708fecc80c1",  # issue 29, when added
    "baselines/oodml_cub200_lite0.yaml": "020930fde0a5f1a4bba1f959b694e996f00838e6",
    "baselines/oodml_cub200_subset.yaml": "e5501a76955cbf6dd5f3b34d4408f0175e723c04",
    "baselines/oodml_omniglot.yaml": "8db39280a415620ff3c00aeecb2ca959c42d4fd7",
    "baselines/oodml_omniglot_select.yaml": "3317a37714ff7fe67b019c21def922b366212dc7",
    "baselines/oodml_sop.yaml": "d0cc2f783fa455b3551f9e00efdf7d4a5f02cef4",
}


@pytest.mark.parametrize("path", sorted(SHIPPED_HASHES | PROTOCOL_HASHES))
def test_shipped_configs_resolve_as_before(path: str) -> None:
    assert cfg_hash(build_run_cfg({}, path)) == (SHIPPED_HASHES | PROTOCOL_HASHES)[path]


def test_cli_overrides_resolve_as_before() -> None:
    # the same before/after check for a config built from command-line options only (computed at e22bb68)
    cfg = build_run_cfg({"method": "margin,protonet", "k": "0,2", "seeds": "0..4", "shifts": "1..3",
                          "regime": "full", "device": "cpu", "force": True,
                          "method_params": {"margin.lr": 0.01, "iterations": 5}, "plugins": (),
                          "dataset_options": ["rotations=true"], "backbone": "conv4"})
    assert cfg_hash(cfg) == "7cc330e16fa3894acbde024401f2e799115327fc"
    assert cfg_hash(build_run_cfg({"method": "margin"})) == "3a1ad6e29dedee37bfa743f0d308fb51b1137d92"


def test_yaml_keys_and_defaults_come_from_the_dataclass() -> None:
    import dataclasses

    from oodml.config import config_keys

    keys = config_keys()
    assert set(keys) == {f.name for f in dataclasses.fields(RunCfg)} - {"methods", "ks"} | {"method", "k"}
    cfg = build_run_cfg({"method": "pretrained"})
    for f in dataclasses.fields(RunCfg):  # every value not given is the field's own default, not a restated one
        if f.name != "methods":
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            assert getattr(cfg, f.name) == default, f.name


def test_cli_defaults_come_from_the_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    import oodml.features.extract
    import oodml.splits.generate
    from oodml.cli import app
    from oodml.features.backbones import DEFAULT_BACKBONE
    from oodml.splits.generate import LadderCfg

    seen: dict[str, object] = {}

    def fake_make(**kw: object) -> str:
        seen.update(kw)
        return "x"

    def fake_embed(**kw: object) -> str:
        seen.update(embed_backbone=kw["backbone"])
        return "y"

    monkeypatch.setenv("OODML_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(oodml.splits.generate, "make_splits_command", fake_make)
    monkeypatch.setattr(oodml.features.extract, "embed_dataset", fake_embed)
    assert CliRunner().invoke(app, ["make-splits", "mnist", "--out", str(tmp_path / "s.json")]).exit_code == 0
    assert CliRunner().invoke(app, ["embed", "mnist", "--out", str(tmp_path / "f.npz")]).exit_code == 0
    d = LadderCfg()
    assert seen["backbone"] == seen["embed_backbone"] == DEFAULT_BACKBONE
    assert (seen["levels"], seen["ks"], seen["episodes"], seen["seed"]) == (d.levels, d.ks, d.episodes, d.seed)
