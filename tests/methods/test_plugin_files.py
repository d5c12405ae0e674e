"""`--plugin` takes a `.py` file as well as a module; a config accepts `plugin:` as well as `plugins:`; an unknown
method names `--plugin` beside the closest names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from oodml import methods
from oodml.cli import app
from oodml.config import load_yaml_config
from oodml.errors import OodmlError
from oodml.methods.base import METHODS

PLUGIN = '''
from dataclasses import dataclass

from pytorch_metric_learning import losses, miners

from oodml.methods import register_dml_loss
from oodml.methods.losses import PmlObjective
from oodml.methods.params import TrainParams


@dataclass(frozen=True)
class Params(TrainParams):
    margin: float = 0.2


register_dml_loss("{name}", Params, lambda p, n: PmlObjective(losses.TripletMarginLoss(p.margin),
                                                          miner=miners.TripletMarginMiner(p.margin)),
                  description="triplet loss with a miner, from a plugin file")
'''


@pytest.fixture
def registry_restored() -> Iterator[None]:
    """Methods a test registers are removed afterwards."""
    entries, files = dict(METHODS._entries), dict(methods._plugin_files)  # noqa: SLF001
    yield
    METHODS._entries.clear()  # noqa: SLF001
    METHODS._entries.update(entries)  # noqa: SLF001
    methods._plugin_files.clear()  # noqa: SLF001
    methods._plugin_files.update(files)  # noqa: SLF001


def test_a_plugin_file_registers_its_methods_once(tmp_path: Path, registry_restored: None) -> None:
    path = tmp_path / "my methods.py"
    path.write_text(PLUGIN.format(name="mined_triplet"))
    r = CliRunner().invoke(app, ["list", "methods", "--plugin", str(path)])
    assert r.exit_code == 0, r.output
    names = [line.split("\t")[0] for line in r.output.splitlines()]
    assert "mined_triplet" in names and "adapted_mined_triplet" in names
    methods.load_plugins([str(path)])  # a second load of the same file is a no-op (no double registration)
    assert methods.resolve_methods("adapted_mined*") == ["adapted_mined_triplet"]


def test_plugin_file_errors_are_one_line(tmp_path: Path, registry_restored: None) -> None:
    with pytest.raises(OodmlError, match="plugin file .*missing.py' does not exist"):
        methods.load_plugins([str(tmp_path / "missing.py")])
    broken = tmp_path / "broken.py"
    broken.write_text("raise ValueError('boom')\n")
    with pytest.raises(OodmlError, match="failed to load: ValueError: boom"):
        methods.load_plugins([str(broken)])
    with pytest.raises(OodmlError, match=r"pass a \.py file path"):
        methods.load_plugins(["no_such_plugin_module"])


def test_unknown_method_suggests_close_names_and_plugin() -> None:
    with pytest.raises(OodmlError, match="did you mean margin.*--plugin my_methods.py"):
        methods.resolve_methods("margn")
    with pytest.raises(OodmlError, match="matches no method.*--plugin"):
        methods.resolve_methods("supcon*")


@pytest.mark.parametrize("key", ["plugins", "plugin"])
def test_config_accepts_the_flag_name(tmp_path: Path, key: str) -> None:
    cfg = tmp_path / "study.yaml"
    cfg.write_text(f"method: margin\n{key}: [my_methods.py]\n")
    assert load_yaml_config(cfg)["plugins"] == ["my_methods.py"]
    cfg.write_text("method: margin\nplugin: a.py\nplugins: b.py\n")
    with pytest.raises(OodmlError, match="both `plugin:` and `plugins:`"):
        load_yaml_config(cfg)


def test_a_config_plugin_file_runs_only_when_confirmed(tmp_path: Path, registry_restored: None) -> None:
    from oodml.config import build_run_cfg

    path = tmp_path / "mine.py"
    path.write_text(PLUGIN.format(name="cfg_triplet"))
    study = tmp_path / "study.yaml"
    study.write_text(f"method: cfg_triplet\nplugin: {path}\n")
    with pytest.raises(OodmlError, match=f"confirm with --plugin {path}"):
        build_run_cfg({"plugins": ()}, study)
    assert "cfg_triplet" not in METHODS.names()  # nothing was imported
    cfg = build_run_cfg({"plugins": (str(path),)}, study)
    assert cfg.plugins == (str(path),) and cfg.methods == ("cfg_triplet",)
