"""The Ray executor's overhead per cell against the local executor, on tiny synthetic features (docs/cluster.md).

The same grid of cheap cells (`pretrained` and `protonet` at 20 iterations, k = 0,2, on 24 classes x 10 images,
D = 16) runs in one process with the local executor and with the Ray executor on a local Ray, at each `--workers`.
Ray is started once beforehand and timed on its own; its first run pays for the worker processes' start and
imports ("cold"), a second run on the same Ray reuses them ("warm"). Printed: seconds per cell, and the Ray
runs' ratio and difference per cell to the local run of the same worker count, with the load average.

    OMP_NUM_THREADS=1 python benchmarks/ray_overhead.py [--seeds 6] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oodml.config import build_run_cfg  # noqa: E402
from oodml.progress import log  # noqa: E402
from oodml.runner import run_grid  # noqa: E402
from tests.conftest import make_blobs  # noqa: E402
from tests.runner.fakes import build_split  # noqa: E402


def timed_run(opts: dict[str, object]) -> float:
    """Seconds `run_grid` takes (its log lines go to stderr)."""
    t0 = time.perf_counter()
    assert run_grid(build_run_cfg(opts)) == 0
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=6, help="seeds per level (cells = 2 methods x 3 levels x seeds)")
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="oodml-ray-bench-"))
    fs = make_blobs(n_classes=24, per_class=10, dim=16)
    feats = fs.save(tmp / "f.npz")
    splits = build_split(fs, levels=3, ks=(2,), episodes=3).save(tmp / "s.json")
    n = 2 * 3 * args.seeds
    base: dict[str, object] = dict(features=str(feats), splits=str(splits), method="pretrained,protonet",
                                   shifts="1..3", k="0,2", seeds=f"0..{args.seeds - 1}",
                                   method_params=["iterations=20"])
    t0 = time.perf_counter()
    ray_tmp = tempfile.mkdtemp(prefix="oodml-ray-", dir="/tmp")
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False, _temp_dir=ray_tmp)
    start = time.perf_counter() - t0
    lines = [f"Ray start (ray.init, local): {start:.1f} s", f"{n} cells per run"]
    try:
        for w in [int(x) for x in args.workers.split(",")]:
            local = timed_run({**base, "workers": w, "results": str(tmp / f"local{w}")})
            cold = timed_run({**base, "workers": w, "executor": "ray", "results": str(tmp / f"cold{w}")})
            warm = timed_run({**base, "workers": w, "executor": "ray", "results": str(tmp / f"warm{w}")})
            lines.append(f"workers {w}: local {local / n:.3f} s/cell; ray cold {cold / n:.3f} s/cell (ratio "
                         f"{cold / local:.2f}, +{(cold - local) / n:.3f} s/cell); ray warm {warm / n:.3f} s/cell "
                         f"(ratio {warm / local:.2f}, +{(warm - local) / n:.3f} s/cell)")
    finally:
        ray.shutdown()
    lines.append(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")
    for line in lines:
        log(line)
        print(line)


if __name__ == "__main__":
    main()
