"""`oodml run --runtime` (and the study-config key `runtime`): the runtime of features that `run` computes on demand."""

from __future__ import annotations

from pathlib import Path

import pytest

from oodml.config import RunCfg, build_run_cfg, cfg_hash
from oodml.errors import OodmlError
from oodml.features.io import FeatureSet
from oodml.io import cache_dir
from tests.runner.fakes import write_inputs


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_run_computes_missing_features_on_the_chosen_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             runtime: str) -> None:
    import oodml.features.extract as extract
    from oodml.cli import main

    monkeypatch.setenv("OODML_CACHE", str(tmp_path / "cache"))
    feats, split = write_inputs(tmp_path)  # the split's features: not in the (empty) cache
    split.write_text(split.read_text().replace('"backbone": "none"', '"backbone": "conv4"'))
    calls: list[dict[str, object]] = []

    def compute(dataset: str, backbone: str, data_root: object = None, **kw: object) -> FeatureSet:
        calls.append({"dataset": dataset, "backbone": backbone, **kw})
        fs = FeatureSet.load(feats)
        fs.meta["runtime"] = str(kw["runtime"])
        fs.save(cache_dir() / "features" / dataset / f"{backbone}-x.npz")  # what the real function caches
        return fs

    monkeypatch.setattr(extract, "load_or_compute_features", compute)
    config = tmp_path / "study.yaml"
    config.write_text(f"runtime: {'onnx' if runtime == 'torch' else 'torch'}\nk: 0\nseeds: 0\nshifts: 1\n")
    with pytest.raises(SystemExit) as done:  # the command line wins over the config
        main(["run", "--method", "pretrained", "--splits", str(split), "--results", str(tmp_path / "r"),
              "--config", str(config), "--runtime", runtime, "--workers", "1"])
    assert done.value.code == 0
    assert calls == [{"dataset": "synthetic", "backbone": "conv4", "options": {}, "runtime": runtime, "weights": None}]
    calls.clear()
    with pytest.raises(SystemExit):  # now cached under the split's feature hash: nothing computed
        main(["run", "--method", "pretrained", "--splits", str(split), "--results", str(tmp_path / "r"),
              "--config", str(config), "--workers", "1"])
    assert calls == []


def test_runtime_is_checked_and_leaves_cell_configs_as_they_were(tmp_path: Path) -> None:
    base = {"method": "pretrained", "results": str(tmp_path)}
    assert build_run_cfg(base).runtime == "auto"
    assert cfg_hash(build_run_cfg({**base, "runtime": "torch"})) == cfg_hash(build_run_cfg(base))
    assert "runtime" not in build_run_cfg({**base, "runtime": "onnx"}).to_dict()
    with pytest.raises(OodmlError, match="--runtime 'openvino' is not one of auto, onnx, torch"):
        RunCfg(methods=("pretrained",), runtime="openvino")
    config = tmp_path / "bad.yaml"
    config.write_text("method: pretrained\nruntime: tensorrt\n")
    with pytest.raises(OodmlError, match="runtime"):
        build_run_cfg({}, config)
