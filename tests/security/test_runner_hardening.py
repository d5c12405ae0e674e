"""Runner hardening (issue 16, items 1 and 11): the fit cache never unpickles code and recovers from bad entries;
a killed `--workers 2` run leaves no process behind; temp files of a kill do not outlive the next run; a cell file
of the wrong schema is recomputed; cell files are created with the umask's permissions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from oodml.config import build_run_cfg
from oodml.runner import CellStore, plan_grid, run_grid
from tests.conftest import REPO
from tests.runner.fakes import fake_methods, write_inputs

PLUGIN = "tests.runner.fake_plugin"


@pytest.fixture
def fakes() -> Iterator[None]:
    with fake_methods():
        yield


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return write_inputs(tmp_path, n_classes=12, per_class=6, dim=8, levels=2, ks=(2,))


def run(files: tuple[Path, Path], results: Path, **kw: Any) -> int:
    opts: dict[str, Any] = dict(method="fake_proj", features=str(files[0]), splits=str(files[1]), shifts="1",
                                k="0,2", seeds="0", results=str(results), workers=1)
    opts.update(kw)
    return run_grid(build_run_cfg(opts))


def values(results: Path) -> list[tuple[Any, ...]]:
    return sorted((r["cell_id"], r["method"], r["k_shot"], r["metric"], r["value"])
                  for c in CellStore(results).cells() for r in c["rows"])


class Exploit:
    """Unpickling this runs a shell command (what a planted fit-cache file would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def fit_path(files: tuple[Path, Path], results: Path) -> Path:
    cfg = build_run_cfg(dict(method="fake_proj", features=str(files[0]), splits=str(files[1]), shifts="1", k="0,2",
                             seeds="0", results=str(results)))
    return CellStore(results).fits_dir / f"{plan_grid(cfg).cells[0].fit_id}.pt"


@pytest.mark.parametrize("planted", ["exploit", "stale", "garbage"])
def test_fit_cache_never_runs_code_and_refits_bad_entries(fakes: None, files: tuple[Path, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str], planted: str) -> None:
    assert run(files, tmp_path / "clean") == 0
    results = tmp_path / "r"
    path = fit_path(files, results)
    path.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    if planted == "exploit":
        torch.save({"w": Exploit(marker)}, path)
    elif planted == "stale":  # a state of another version of the method: loads, but has none of its keys
        torch.save({"in_dim": 3, "nets": []}, path)
    else:
        path.write_bytes(b"not a torch file")
    for _ in range(2):  # the second run finds the entry the first one rewrote
        for cell in CellStore(results).cells_dir.glob("*.json"):
            cell.unlink()
        assert run(files, results) == 0
        assert not marker.exists()
        assert values(results) == values(tmp_path / "clean")
    assert [c["fit_cached"] for c in CellStore(results).cells()] == [True]
    err = capsys.readouterr().err
    assert err.count(f"note: fit cache {path}") == 1 and "fitting again" in err
    assert set(torch.load(path, weights_only=True)) == {"w"}  # overwritten by a good entry


def test_kill_9_of_a_pool_run_leaves_no_process(files: tuple[Path, Path], tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "oodml", "run", "--features", str(files[0]), "--splits", str(files[1]),
           "--results", str(tmp_path / "r"), "--method", "fake_slow", "--shifts", "1..2", "--k", "0",
           "--seeds", "0..3", "--workers", "2", "--plugin", PLUGIN]
    env = dict(os.environ, PYTHONPATH=str(REPO), FAKE_SLOW_S="30", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        family: set[int] = set()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # the forkserver and both workers are up
            family = descendants(proc.pid)
            if len(family) >= 3 and proc.poll() is None and workers_ready(family):
                break
            time.sleep(0.2)
        assert len(family) >= 3, family
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = family
    for _ in range(300):  # the kernel delivers the parent-death signals at once; allow for a loaded machine
        left = {p for p in left if alive(p)}
        if not left:
            break
        time.sleep(0.1)
    assert not left, [cmdline(p) for p in left]


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def workers_ready(pids: set[int]) -> bool:
    """At least two of `pids` are pool workers (forked from the forkserver, past the preload)."""
    return sum("forkserver" in cmdline(p) for p in pids) >= 3


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is dead, waiting for init to reap it


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_text().replace("\0", " ")[:120]
    except OSError:
        return "?"


def test_temp_files_of_a_kill_are_removed_by_the_next_run(fakes: None, files: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    results = tmp_path / "r"
    assert run(files, results) == 0
    cells, fits = CellStore(results).cells_dir, CellStore(results).fits_dir
    dead = 2**22 + 12345  # above the default pid_max: no live process has it
    leftovers = [cells / f".x.json.{dead}.0123abcd.tmp", cells / ".y.json.k3j4h5.tmp", fits / f".z.pt.{dead}.tmp"]
    live = cells / f".w.json.{os.getpid()}.89abcdef.tmp"  # a live writer's file in progress stays
    for p in [*leftovers, live]:
        p.write_text("partial")
    assert run(files, results) == 0  # everything finished: the run only cleans up
    assert not any(p.exists() for p in leftovers) and live.exists()
    live.unlink()
    (cells / f".v.json.{dead}.0123abcd.tmp").write_text("partial")
    assert run(files, results, force=True) == 0
    assert not list(cells.glob("*.tmp")) and not list(fits.glob("*.tmp"))


@pytest.mark.parametrize("content", ['{"status": "ok", "config": {"ks": [0, 2]}}',
                                     '{"status": "ok", "config": {"ks": [0, 2]}, "rows": [{"value": 1}]}', '[1, 2]'])
def test_a_cell_file_of_the_wrong_schema_is_recomputed(fakes: None, files: tuple[Path, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str], content: str) -> None:
    results = tmp_path / "r"
    assert run(files, results) == 0
    good = values(results)
    (path,) = CellStore(results).cells_dir.glob("*.json")
    data = path.read_text()
    path.write_text(content.replace("}", f', "cell_id": "{path.stem}"}}', 1) if content[0] == "{" else content)
    capsys.readouterr()
    assert run(files, results) == 0
    assert "skipped 0 finished, 1 remaining" in capsys.readouterr().err
    assert values(results) == good and path.read_text() != content and len(path.read_text()) > len(data) // 2


def test_cell_and_fit_files_follow_the_umask(fakes: None, files: tuple[Path, Path], tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        assert run(files, tmp_path / "r") == 0
    finally:
        os.umask(old)
    store = CellStore(tmp_path / "r")
    made = [*store.cells_dir.glob("*.json"), *store.fits_dir.glob("*.pt")]
    assert len(made) == 2 and {p.stat().st_mode & 0o777 for p in made} == {0o644}
