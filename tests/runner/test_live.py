"""Progress view and executor plumbing that need no grid."""

from __future__ import annotations

import io
import sys

import pytest
from rich.console import Console

from oodml.compat import import_ray
from oodml.errors import OodmlError
from oodml.runner import EXECUTORS
from oodml.runner.live import GridProgress, format_eta


def test_format_eta() -> None:
    assert [format_eta(x) for x in (None, 0, 42.4, 185, 3725)] == ["?", "0s", "42s", "3m05s", "1h02m"]


def test_one_line_per_finished_cell_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    p = GridProgress(total=3, workers=2, live=False)
    p.started("a L1 seed 0")
    p.started("b L1 seed 0")
    assert len(p.running) == 2
    p.finished("a L1 seed 0", "ok", 1.25, " (a k=0 recall@1 0.500)")
    p.finished("b L1 seed 0", "error", 0.5, ": RuntimeError: x")
    p.close()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[1/3] a L1 seed 0: ok in 1.2s (a k=0 recall@1 0.500) (failed 0, ETA ")
    assert lines[1].startswith("[2/3] b L1 seed 0: error in 0.5s: RuntimeError: x (failed 1, ETA ")
    assert p.eta() is not None and not p.running
    assert "2 cell(s) done" in p.summary() and "1 failed" in p.summary()


def rendered(p: GridProgress) -> str:
    console = Console(file=io.StringIO(), width=200)
    console.print(p._render())
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_live_view_renders_counts() -> None:
    p = GridProgress(total=2, workers=1, live=True)
    try:
        p.started("m L1 seed 0")
        text = rendered(p)
        assert "0/2 done" in text and "1 running" in text and "running: m L1 seed 0" in text
        p.finished("m L1 seed 0", "ok", 0.1)
        text = rendered(p)
        assert "1/2 done" in text and "0 running" in text and "ETA" in text
    finally:
        p.close()


def test_missing_ray_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(OodmlError, match=r"pip install 'oodml\[ray\]'"):
        import_ray()


def test_executors_registry() -> None:
    assert EXECUTORS.names() == ["local", "ray"]


def stage_lines(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], every: str | None) -> list[str]:
    """The stderr lines of a 4-step stage off a terminal whose clock advances 10 s a step."""
    from oodml import progress as pg

    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(pg.time, "perf_counter", lambda: float(next(clock)))
    monkeypatch.setattr(pg, "is_terminal", lambda: False)
    if every is None:
        monkeypatch.delenv(pg.EVERY_ENV, raising=False)
    else:
        monkeypatch.setenv(pg.EVERY_ENV, every)
    with pg.progress("fit margin", 4) as p:
        for _ in range(4):
            p.update()
    return capsys.readouterr().err.strip().splitlines()


def test_a_long_stage_off_a_terminal_reports_progress_only_when_asked(monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    quiet = stage_lines(monkeypatch, capsys, None)
    assert [x.split(":")[1].split(",")[0].strip() for x in quiet] == ["started (4 it)", "done"]  # SPEC §1
    lines = stage_lines(monkeypatch, capsys, "15")
    # clock: start 0, steps at 10 / 20 / 30 / 40: a line at 20 (20 s since 0) and at 40 (20 s since 20)
    assert lines[1] == "fit margin: 2/4 it (50%), 0.10 it/s, ETA 20s"
    assert lines[2] == "fit margin: 4/4 it (100%), 0.10 it/s, ETA 0s"
    assert len(lines) == 4 and lines[-1].startswith("fit margin: done, 4 it")
    bad = stage_lines(monkeypatch, capsys, "soon")
    assert bad[0].startswith("note: OODML_PROGRESS_EVERY='soon' is not a positive number") and len(bad) == 3
