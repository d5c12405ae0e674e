"""The Ray executor's overhead per cell against the local executor, on tiny synthetic features (docs/cluster.md).

Cheap cells (`pretrained` and `protonet` at 20 iterations, k = 0,2, on 24 classes x 10 images, D = 16) run in one
process with the local executor and with the Ray executor on a local Ray, at each `--workers`. Each executor first
runs a small grid to warm up (Ray's worker processes start and import; the local pool's start is paid by every run),
then a grid of `--small` and one of `--large` seeds x 2 methods x 3 levels; the cost of one more cell is the
difference of the two runs' times divided by the difference of their cell counts, so fixed costs per run (planning,
a pool's start, imports) cancel. The best of `--repeats` is kept. Ray's start is timed on its own. Printed: seconds
per cell for each executor, the Ray executor's ratio and difference per cell to the local one with the same
workers, the fixed cost per run, and the load average.

    OMP_NUM_THREADS=1 python benchmarks/ray_overhead.py [--small 2] [--large 8] [--workers 1,2] [--repeats 2]
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


def per_cell(base: dict[str, object], tmp: Path, tag: str, small: int, large: int, repeats: int) -> tuple[float, float]:
    """(seconds per added cell, fixed seconds per run) of the executor in `base`, best of `repeats`."""
    timed_run({**base, "seeds": "0", "results": str(tmp / f"{tag}-warm")})
    best: tuple[float, float] | None = None
    n_small, n_large = 6 * small, 6 * large
    for r in range(repeats):
        t_small = timed_run({**base, "seeds": f"0..{small - 1}", "results": str(tmp / f"{tag}-s{r}")})
        t_large = timed_run({**base, "seeds": f"0..{large - 1}", "results": str(tmp / f"{tag}-l{r}")})
        cell = (t_large - t_small) / (n_large - n_small)
        fixed = t_small - n_small * cell
        if best is None or cell < best[0]:
            best = (cell, fixed)
    assert best is not None
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=2, help="seeds of the small grid (6 cells per seed)")
    ap.add_argument("--large", type=int, default=8, help="seeds of the large grid")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="oodml-ray-bench-"))
    fs = make_blobs(n_classes=24, per_class=10, dim=16)
    feats = fs.save(tmp / "f.npz")
    splits = build_split(fs, levels=3, ks=(2,), episodes=3).save(tmp / "s.json")
    base: dict[str, object] = dict(features=str(feats), splits=str(splits), method="pretrained,protonet",
                                   shifts="1..3", k="0,2", method_params=["iterations=20"])
    t0 = time.perf_counter()
    ray_tmp = tempfile.mkdtemp(prefix="oodml-ray-", dir="/tmp")
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False, _temp_dir=ray_tmp)
    lines = [f"Ray start (ray.init, local Ray): {time.perf_counter() - t0:.1f} s; grids of {6 * args.small} and "
             f"{6 * args.large} cells, best of {args.repeats}"]
    try:
        for w in [int(x) for x in args.workers.split(",")]:
            local = per_cell({**base, "workers": w}, tmp, f"local{w}", args.small, args.large, args.repeats)
            rayed = per_cell({**base, "workers": w, "executor": "ray"}, tmp, f"ray{w}", args.small, args.large,
                             args.repeats)
            lines.append(f"workers {w}: local {local[0]:.3f} s/cell (+{local[1]:.1f} s per run), ray {rayed[0]:.3f} "
                         f"s/cell (+{rayed[1]:.1f} s per run): ratio {rayed[0] / local[0]:.2f}, "
                         f"{rayed[0] - local[0]:+.3f} s/cell")
    finally:
        ray.shutdown()
    lines.append(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")
    for line in lines:
        log(line)
        print(line)


if __name__ == "__main__":
    main()
