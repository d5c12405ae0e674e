"""The Ray executor on a simulated cluster (`ray.cluster_utils.Cluster`: a head without CPUs and two one-CPU worker
nodes, `left` and `right`, each with a custom resource of its name): cells go to the nodes that have what they ask
for, a fit made on one node is reused by `adapted_X` on the other, a node removed while a cell runs on it costs
nothing but a resubmission, and a Ray address where nothing answers is one `error:` line. docs/cluster.md.

The cluster is started once for the module (about 15 s here); the 36-cell acceptance run is marked slow.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from oodml.cli import app
from oodml.config import build_run_cfg
from oodml.errors import OodmlError
from oodml.runner import CellStore, run_grid
from oodml.runner.cell import store_fit_blob
from oodml.runner.executors import _check_feasible, _sent, cell_resources
from tests.conftest import REPO
from tests.runner.fakes import fake_methods, write_inputs
from tests.runner.test_processes import env, oodml_cmd, values

PLUGIN = "tests.runner.cluster_plugin"
FAKES = "tests.runner.fake_plugin"
FAST = ["iterations=20", "adapt_iterations=5"]
MiB = 2**20
#: the worker nodes: one CPU and a custom resource of its name each; `right` says it has a GPU (CPU torch can't use
#: it: Ray assigns it all the same)
NODES: dict[str, dict[str, Any]] = {"left": dict(num_cpus=1, resources={"left": 1}),
                                    "right": dict(num_cpus=1, num_gpus=1, resources={"right": 1})}


# --- without a cluster ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("given, want", [
    ("GPU=0.5", {"GPU": 0.5}), ("CPU=4,fast=1", {"CPU": 4.0, "fast": 1.0}), ({"GPU": 1}, {"GPU": 1.0}),
    (["CPU=2", "node.a-b=0"], {"CPU": 2.0, "node.a-b": 0.0}),
])
def test_ray_resources_are_read_from_cli_or_yaml(given: Any, want: dict[str, float]) -> None:
    cfg = build_run_cfg(dict(method="pretrained", executor="ray", ray_resources=given))
    assert dict(cfg.ray_resources) == want
    assert "ray_resources" not in cfg.to_dict()  # where a cell runs changes no number: not in its config


@pytest.mark.parametrize("given", ["GPU=-1", "GPU=x", "GPU=.inf", "=1", "a b=1", "GPU"])
def test_bad_ray_resources_are_one_error(given: str, files: tuple[Path, Path], tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["run", "--features", str(files[0]), "--splits", str(files[1]), "--method",
                                 "pretrained", "--executor", "ray", "--ray-resources", given,
                                 "--results", str(tmp_path / "r")])
    assert r.exit_code == 2 and r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "r").exists()


def test_ray_resources_need_the_ray_executor() -> None:
    with pytest.raises(OodmlError, match="--ray-resources is for --executor ray"):
        build_run_cfg(dict(method="pretrained", ray_resources="GPU=1"))


def test_resources_by_regime() -> None:
    assert cell_resources("head", "cuda", {}) == {"CPU": 1.0}
    assert cell_resources("full", "cuda", {}) == {"CPU": 1.0, "GPU": 1.0}
    assert cell_resources("full", "cpu", {}) == {"CPU": 1.0}
    assert cell_resources("full", "cuda", {"GPU": 0.5, "CPU": 4}) == {"CPU": 4.0, "GPU": 0.5}


def test_resources_no_node_has_are_refused_on_a_local_ray() -> None:
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0, "memory": 1e9, "node:1.2.3.4": 1.0}}]
    fake = SimpleNamespace(nodes=lambda: nodes)
    _check_feasible(fake, {"CPU": 1.0}, remote=False)
    with pytest.raises(OodmlError, match=r"no Ray node has .*GPU=1.*CPU=2"):
        _check_feasible(fake, {"CPU": 1.0, "GPU": 1.0}, remote=False)
    _check_feasible(fake, {"CPU": 1.0, "GPU": 1.0}, remote=True)  # a cluster may add such a node: a note only


def test_fits_travel_as_checked_bytes(tmp_path: Path) -> None:
    """A task gets the driver's cache entry as bytes and no cache path; what comes back is stored only when it
    passes the fit cache's weights-only read (a pickle that would run code is refused, nothing stored)."""
    import io
    import pickle

    import torch

    from oodml.runner.cell import CellTask

    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    assert store_fit_blob(buf.getvalue(), tmp_path / "fits" / "a.pt")
    cell = SimpleNamespace(fit_id="a")
    task = CellTask(cell=cell, level=None, overrides={}, fit_cache=str(tmp_path / "fits"))  # type: ignore[arg-type]
    sent = _sent(task)
    assert sent.fit_cache is None and sent.return_fit and sent.fit_blob == buf.getvalue()
    torch.save({"w": torch.zeros(2)}, tmp_path / "fits" / "a.pt")  # other weights than its record's sha256
    assert _sent(task).fit_blob is None  # refitted on the node, as the local executor would

    class Planted:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (tmp_path / "pwned",))

    assert not store_fit_blob(pickle.dumps({"w": Planted()}, protocol=2), tmp_path / "fits" / "b.pt")
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "fits" / "b.pt").exists()


def test_an_address_where_nothing_listens_is_one_error_line(files: tuple[Path, Path], tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address in ("127.0.0.1:1", f"127.0.0.1:{port}"):
        r = CliRunner().invoke(app, ["run", "--features", str(files[0]), "--splits", str(files[1]), "--method",
                                     "pretrained", "--k", "0", "--executor", "ray", "--address", address,
                                     "--results", str(tmp_path / "r")])
        assert r.exit_code == 2, r.output
        assert r.output.startswith("error: no Ray cluster answers at --address") and r.output.count("\n") == 1


def test_an_address_that_is_no_ray_head_times_out_and_honours_sigterm(files: tuple[Path, Path],
                                                                      tmp_path: Path) -> None:
    """Something listens but speaks no Ray: exit 2 with one `error:` line after OODML_RAY_CONNECT_TIMEOUT; and
    SIGTERM ends the wait at once."""
    pytest.importorskip("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        address = f"127.0.0.1:{s.getsockname()[1]}"
        cmd = oodml_cmd(*files, tmp_path / "r", "--method", "pretrained", "--k", "0", "--executor", "ray",
                        "--address", address)
        r = subprocess.run(cmd, env=env(OODML_RAY_CONNECT_TIMEOUT="3"), cwd=REPO, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2, r.stderr
        assert [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")] == [
            f"error: the Ray cluster at --address {address} did not answer within 3 s (is it a Ray head node? "
            "OODML_RAY_CONNECT_TIMEOUT sets the wait)"]
        proc = subprocess.Popen(cmd, env=env(OODML_RAY_CONNECT_TIMEOUT="120"), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        assert proc.stderr is not None
        for line in proc.stderr:  # the last line before the executor starts
            if line.startswith("run: results in"):
                break
        time.sleep(1.0)  # in ray.init now
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) != 0
        assert time.monotonic() - t0 < 100


# --- on a simulated cluster ----------------------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return write_inputs(tmp_path, n_classes=12, per_class=6, dim=8, levels=3, ks=(2,))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A head without CPUs and worker nodes `left` and `right` (1 CPU and a custom resource of that name each).
    Workers import the test plugin from this checkout and wait at the gate folder `gate`."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from tests.runner import cluster_plugin

    gate = tmp_path_factory.mktemp("gate")
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", cluster_plugin.GATE_ENV, "OMP_NUM_THREADS")}
    os.environ.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **{cluster_plugin.GATE_ENV: str(gate)})
    c = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, include_dashboard=False,
                                                          object_store_memory=80 * MiB))
    nodes = {name: c.add_node(**spec, object_store_memory=80 * MiB) for name, spec in NODES.items()}
    c.wait_for_nodes()
    cluster_plugin.register()
    try:
        yield SimpleNamespace(cluster=c, nodes=nodes, gate=gate)
    finally:
        cluster_plugin.unregister()
        c.shutdown()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _run(files: tuple[Path, Path], results: Path, **kw: Any) -> int:
    opts: dict[str, Any] = dict(features=str(files[0]), splits=str(files[1]), results=str(results),
                                plugins=(PLUGIN,))
    return run_grid(build_run_cfg({**opts, **kw}))


def _nodes(results: Path) -> dict[str, str]:
    """cell id -> the Ray node its file names."""
    return {c["cell_id"]: c["node"]["ray_node_id"] for c in CellStore(results).cells()}


def test_cells_go_where_their_resources_are_and_fits_cross_nodes(cluster: SimpleNamespace,
                                                                 files: tuple[Path, Path], tmp_path: Path) -> None:
    """protonet asks for `left` and runs there; adapted_proto asks for `right`, runs there, and reuses protonet's
    fits (returned by `left` to the driver's cache) instead of fitting again; the values equal a local run's."""
    grid: dict[str, Any] = dict(shifts="1..2", k="0,2", seeds="0", workers=2)
    left, right = cluster.nodes["left"].node_id, cluster.nodes["right"].node_id
    ray_dir = tmp_path / "ray"
    address = cluster.cluster.address
    grid["method_params"] = FAST
    assert _run(files, ray_dir, method="protonet", executor="ray", address=address, ray_resources="left=1",
                **grid) == 0
    assert set(_nodes(ray_dir).values()) == {left}
    assert len(list((ray_dir / "fits").glob("*.pt"))) == 2  # stored by the driver
    assert _run(files, ray_dir, method="adapted_proto", executor="ray", address=address, ray_resources="right=1",
                **grid) == 0
    cells = CellStore(ray_dir).cells()
    adapted = [c for c in cells if c["config"]["methods"] == ["adapted_proto"]]
    assert len(adapted) == 2 and {c["node"]["ray_node_id"] for c in adapted} == {right}
    assert all(c["fit_cached"] for c in adapted) and len(list((ray_dir / "fits").glob("*.pt"))) == 2
    assert all(c["node"]["hostname"] == socket.gethostname() and c["node"]["retries"] == 0 for c in cells)
    assert {r["device"] for c in cells for r in c["rows"]} == {"cpu"}  # no GPU asked, none used
    assert _run(files, tmp_path / "local", method="protonet,adapted_proto", workers=1,
                **{k: v for k, v in grid.items() if k != "workers"}) == 0
    assert values(ray_dir) == values(tmp_path / "local")


def test_a_cell_computes_on_the_gpu_ray_assigned(cluster: SimpleNamespace, files: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    """`--ray-resources GPU=1` sends the cell to the node with a GPU, and the cell's device is `cuda` there (the
    row says so; `fake_proj` computes on the CPU whatever its device, so it also runs where torch has no CUDA)."""
    _restore_nodes(cluster)
    run = dict(method="fake_proj", shifts="1", k="0", seeds="0", executor="ray", address=cluster.cluster.address)
    with fake_methods():
        rc = _run(files, tmp_path / "gpu", ray_resources="GPU=1", plugins=(PLUGIN, FAKES), **run)
    (cell,) = CellStore(tmp_path / "gpu").cells()
    assert cell["node"]["ray_node_id"] == cluster.nodes["right"].node_id
    assert {r["device"] for r in cell["rows"]} == {"cuda"}
    assert rc == 0 and cell["status"] == "ok"


def _gated_run(cluster: SimpleNamespace, files: tuple[Path, Path], results: Path, grid: list[str],
               after_cells: int) -> tuple[subprocess.CompletedProcess[str], str]:
    """`oodml run --executor ray --address` of `grid`; once `after_cells` cells are stored, the next fake_gate fit
    waits at the gate, the test removes its node and opens the gate. Returns the run and the removed node's id."""
    gate: Path = cluster.gate
    for name in ("armed", "claimed", "waiting", "open"):
        (gate / name).unlink(missing_ok=True)
    cmd = oodml_cmd(*files, results, *grid, "--executor", "ray", "--address", cluster.cluster.address,
                    "--plugin", PLUGIN)
    proc = subprocess.Popen(cmd, env=env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while len(list((results / "cells").glob("*.json"))) < after_cells and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (gate / "armed").touch()
        while not (gate / "waiting").exists() and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        lost = (gate / "waiting").read_text()
        node = next(n for n in cluster.nodes.values() if n.node_id == lost)
        cluster.cluster.remove_node(node)
        (gate / "open").touch()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), lost


def _restore_nodes(cluster: SimpleNamespace) -> None:
    """Start a fresh node for any removed one (same name and resources)."""
    for name, node in list(cluster.nodes.items()):
        if node not in cluster.cluster.worker_nodes:
            cluster.nodes[name] = cluster.cluster.add_node(**NODES[name], object_store_memory=80 * MiB)
    cluster.cluster.wait_for_nodes()


def _check_node_loss(run: subprocess.CompletedProcess[str], lost: str, results: Path, local: Path, n: int) -> None:
    assert run.returncode == 0, run.stderr
    assert "lost its node or worker (" in run.stderr and "resubmitting (1 of at most 3)" in run.stderr
    cells = CellStore(results).cells()
    assert len(cells) == n and {c["status"] for c in cells} == {"ok"}
    assert all(c["node"]["ray_node_id"] for c in cells)  # every cell file names its node
    retried = [c for c in cells if c["node"]["retries"]]
    assert len(retried) == 1 and retried[0]["node"]["retries"] == 1 and retried[0]["node"]["ray_node_id"] != lost
    assert values(results) == values(local)


def test_a_cell_lost_with_its_node_is_resubmitted(cluster: SimpleNamespace, files: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    """A worker node removed while a cell waits on it: the cell runs again on the other node, the run exits 0 by
    itself, and the values equal a local run's."""
    _restore_nodes(cluster)
    grid = ["--method", "fake_gate,pretrained", "--shifts", "1..2", "--k", "0,2", "--seeds", "0", "--workers", "2"]
    run, lost = _gated_run(cluster, files, tmp_path / "ray", grid, after_cells=0)
    local = tmp_path / "local"
    assert _run(files, local, method="fake_gate,pretrained", shifts="1..2", k="0,2", seeds="0", workers=1) == 0
    _check_node_loss(run, lost, tmp_path / "ray", local, 4)


@pytest.mark.slow
def test_acceptance_36_cells_one_node_removed_after_the_first_stored_cell(cluster: SimpleNamespace,
                                                                          files: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    """Issue 32's acceptance: `oodml run --executor ray --address` of a 36-cell grid on the three-node cluster, one
    worker node removed after the first stored cell: exit 0 by itself, values equal a local run, every cell file
    names its node."""
    _restore_nodes(cluster)
    spec = dict(method="pretrained,fake_gate,protonet", shifts="1..3", k="0,2", seeds="0..3")
    grid = [a for k, v in spec.items() for a in (f"--{k}", v)] + ["--workers", "2", "--method-param", FAST[0]]
    run, lost = _gated_run(cluster, files, tmp_path / "ray", grid, after_cells=1)
    local = tmp_path / "local"
    assert _run(files, local, workers=1, method_params=FAST[:1], **spec) == 0
    _check_node_loss(run, lost, tmp_path / "ray", local, 36)
