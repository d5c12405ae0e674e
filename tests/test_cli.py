"""CLI glue: option parsing into RunCfg (runner patched), one-line errors with exit 2, `python -m oodml`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import oodml.runner
from oodml.cli import app, main
from oodml.config import RunCfg


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[RunCfg]:
    seen: list[RunCfg] = []

    def fake_run_grid(cfg: RunCfg) -> int:
        seen.append(cfg)
        return 0

    monkeypatch.setattr(oodml.runner, "run_grid", fake_run_grid)
    return seen


def test_run_parses_options_into_runcfg(captured: list[RunCfg]) -> None:
    r = CliRunner().invoke(app, ["run", "--method", "adapted_proto", "--shifts", "1..2", "--k", "0,5",
                                 "--seeds", "3", "--method-param", "margin=0.1", "--workers", "2"])
    assert r.exit_code == 0, r.output
    (cfg,) = captured
    assert cfg.methods == ("adapted_proto",) and cfg.shifts == (1, 2) and cfg.ks == (0, 5)
    assert cfg.seeds == (3,) and cfg.workers == 2 and dict(cfg.method_params) == {"margin": 0.1}
    assert cfg.executor == "local" and cfg.regime == "head"


def test_run_config_file_then_cli_override(captured: list[RunCfg], tmp_path: Path) -> None:
    study = tmp_path / "s.yaml"
    study.write_text("method: margin,protonet\nshifts: all\nseeds: 0..4\n")
    r = CliRunner().invoke(app, ["run", "--config", str(study), "--seeds", "1"])
    assert r.exit_code == 0, r.output
    assert captured[0].methods == ("margin", "protonet") and captured[0].shifts is None
    assert captured[0].seeds == (1,)


@pytest.mark.parametrize("args", [
    ["--shifts", "8..1"], ["--shifts", "x"], ["--k", "-1"], ["--seeds", "a..b"], ["--regime", "half"],
])
def test_bad_lists_exit_2_one_line(captured: list[RunCfg], args: list[str]) -> None:
    r = CliRunner().invoke(app, ["run", "--method", "pretrained", *args])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert not captured


def test_usage_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["run", "--no-such-option"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--no-such-option" in err[0]


def test_python_dash_m_help() -> None:
    out = subprocess.run([sys.executable, "-m", "oodml", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("list", "embed", "make-splits", "import-splits", "run", "report"):
        assert cmd in out.stdout


def test_debug_env_shows_traceback(monkeypatch: pytest.MonkeyPatch, captured: Any) -> None:
    monkeypatch.setenv("OODML_DEBUG", "1")
    r = CliRunner().invoke(app, ["run", "--method", "pretrained", "--shifts", "x"])
    assert r.exit_code != 0 and r.exception is not None and type(r.exception).__name__ == "OodmlError"
